"""Scoring a trained head on every evaluation set with every registered metric.

The metrics are those of ``benchmark.metrics`` (built-ins: accuracy, macro-F1, SVE / LSVR of the
head's output z, ``sve_raw`` / ``lsvr_raw`` of the frozen input features; plus any registered
by a plugin). Per set the head runs once in chunks; each metric gets the labels, the
predictions and the features it declared (z or the frozen f), and the logits if it asked. A set
with a class subset (ImageNet-A/-R) lets only those logits compete. When a head passes its
input through as z (the linear probe), z's spectrum is the input's and is not computed twice;
the frozen features' spectrum is computed once per set and kept in ``data.raw_spectra``.
"""

from __future__ import annotations

import torch

from benchmark.metrics import feature_spectrum, macro_f1, metrics, score_set
from benchmark.probe.data import PreparedData
from benchmark.probe.train import TrainedHead

_EVAL_CHUNK = 8192

__all__ = ["evaluate_head", "feature_spectrum", "macro_f1"]


def evaluate_head(trained: TrainedHead, data: PreparedData) -> dict[str, dict[str, float]]:
    """Per evaluation set: each registered metric by name (accuracy, macro_f1, sve, lsvr, sve_raw,
    lsvr_raw, ...), then ``n``."""
    out: dict[str, dict[str, float]] = {}
    head = trained.head.eval()
    registered = metrics()
    keep_logits = any(m.logits for m in registered)
    for name, (x, y) in data.eval_sets.items():
        subset = data.class_subsets.get(name)
        preds, zs, all_logits, passthrough = [], [], [], True
        with torch.no_grad():
            for i in range(0, x.shape[0], _EVAL_CHUNK):
                chunk = x[i : i + _EVAL_CHUNK]
                logits, z = head(chunk)
                passthrough = passthrough and z is chunk
                pred = subset[logits[:, subset].argmax(dim=1)] if subset is not None else logits.argmax(dim=1)
                preds.append(pred)
                zs.append(z)
                if keep_logits:
                    all_logits.append(logits)
        pred = torch.cat(preds)
        logits_all = torch.cat(all_logits) if keep_logits else None
        if name not in data.raw_spectra:
            data.raw_spectra[name] = feature_spectrum(x)
        raw = data.raw_spectra[name]
        z_all = x if passthrough else torch.cat(zs)
        out[name] = score_set(
            registered,
            y,
            pred,
            f=x,
            z=z_all,
            logits=logits_all,
            f_spectrum=raw,
            z_spectrum=raw if passthrough else None,
        )
    return out
