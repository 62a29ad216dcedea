"""Scoring a trained head on every evaluation set: accuracy, macro-F1, SVE and LSVR.

Per set: top-1 accuracy; macro-F1 from ``sklearn.metrics.f1_score(average="macro")`` (classes
present in labels or predictions); SVE/LSVR (``benchmark.spectrum``: rows L2-normalised, columns
centred) of the head's output z and of the frozen input features. A set with a class subset
(ImageNet-A/-R) lets only those logits compete. When a head passes its input through as z
(the linear probe), z's spectrum is the input's and is not computed twice.
"""

from __future__ import annotations

import torch
from sklearn.metrics import f1_score

from benchmark.errors import ConfigError
from benchmark.probe.data import PreparedData
from benchmark.probe.train import TrainedHead
from benchmark.spectrum import spectrum_summary

_EVAL_CHUNK = 8192


def macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    return float(f1_score(y_true.cpu().numpy(), y_pred.cpu().numpy(), average="macro", zero_division=0.0))


def feature_spectrum(x: torch.Tensor) -> dict[str, float]:
    """SVE and LSVR of features; a collapsed representation (all rows equal) gives NaN, not an error."""
    try:
        return spectrum_summary(x, normalize=True, center="columns")
    except ConfigError:
        return {"sve": float("nan"), "lsvr": float("nan")}


def evaluate_head(trained: TrainedHead, data: PreparedData) -> dict[str, dict[str, float]]:
    """Per evaluation set: accuracy, macro_f1, sve, lsvr (of z), sve_raw, lsvr_raw (of inputs), n."""
    out: dict[str, dict[str, float]] = {}
    head = trained.head.eval()
    for name, (x, y) in data.eval_sets.items():
        subset = data.class_subsets.get(name)
        preds, zs, passthrough = [], [], True
        with torch.no_grad():
            for i in range(0, x.shape[0], _EVAL_CHUNK):
                chunk = x[i : i + _EVAL_CHUNK]
                logits, z = head(chunk)
                passthrough = passthrough and z is chunk
                pred = subset[logits[:, subset].argmax(dim=1)] if subset is not None else logits.argmax(dim=1)
                preds.append(pred)
                zs.append(z)
        pred = torch.cat(preds)
        if name not in data.raw_spectra:
            data.raw_spectra[name] = feature_spectrum(x)
        raw = data.raw_spectra[name]
        head_spec = raw if passthrough else feature_spectrum(torch.cat(zs))
        out[name] = {
            "accuracy": float((pred == y).double().mean()),
            "macro_f1": macro_f1(y, pred),
            "sve": head_spec["sve"],
            "lsvr": head_spec["lsvr"],
            "sve_raw": raw["sve"],
            "lsvr_raw": raw["lsvr"],
            "n": int(y.shape[0]),
        }
    return out
