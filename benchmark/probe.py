"""Fit a head on cached frozen features and score it: the unit of work of every downstream sweep.

Why no DataLoader: features are already an in-memory tensor, so a mini-batch is one index into it
(the point of caching features instead of re-encoding images every step). Features are fed to
the head exactly as given (cast to float32); L2-normalising or standardising them is the
caller's choice. ``device=None`` picks CUDA when available.

Training: AdamW, cosine learning-rate decay stepped per mini-batch, mini-batches drawn from a
seeded ``torch.Generator``; the head's initialisation is seeded too (inside ``fork_rng``, so the
caller's global RNG is untouched). Same seed on the CPU gives bit-identical numbers. The last
incomplete batch is dropped only if it holds a single sample (BatchNorm needs two). A NaN or
infinite loss stops the fit with ``TrainingDiverged``.

Evaluation per test set: top-1 accuracy, macro-F1 (over the classes present in labels or
predictions, as ``sklearn.metrics.f1_score(average="macro")``), SVE/LSVR of the head's output z
and of the raw input features (``benchmark.spectrum``, rows L2-normalised, columns centred).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmark.errors import ConfigError, TrainingDiverged, UnknownNameError
from benchmark.heads import HEAD_METHODS, NMTUNE_PRESETS, NMTunePreset, create_head
from benchmark.spectrum import spectrum_summary

_COMMON = {"epochs": 30, "batch_size": 64}
#: Paper defaults: LP as in the paper text; MLP / NMTune as in the reference README.
DEFAULTS: dict[str, dict[str, Any]] = {
    "lp": {**_COMMON, "lr": 0.1, "weight_decay": 0.0},
    "mlp": {**_COMMON, "lr": 1e-3, "weight_decay": 1e-4, "ratio": 4, "depth": 1},
    "nmtune": {
        **_COMMON,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "ratio": 4,
        "depth": 1,
        "preset": "reference",
        "lam": None,
        "w_mse": None,
        "w_cov": None,
        "w_svd": None,
        "svd_topk": None,
    },
}
HPARAM_NAMES: tuple[str, ...] = (
    "epochs", "lr", "weight_decay", "batch_size", "ratio", "depth",
    "lam", "preset", "w_mse", "w_cov", "w_svd", "svd_topk",
)  # fmt: skip

_EVAL_CHUNK = 8192


def _as_int(name: str, val: Any, minimum: int) -> int:
    if isinstance(val, bool) or not isinstance(val, (int, np.integer, float)) or val != int(val):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {val!r}")
    if int(val) < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {val!r}")
    return int(val)


def _as_float(name: str, val: Any, *, positive: bool) -> float:
    if isinstance(val, bool) or not isinstance(val, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {val!r}")
    v = float(val)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {val!r}")
    return v


def resolve_hparams(method: str, **hparams: Any) -> dict[str, Any]:
    """Defaults of ``method`` merged with ``hparams``, validated; NMTune weights filled in.

    Names outside :data:`HPARAM_NAMES` raise ``ConfigError`` listing the allowed ones; a known
    name that does not apply to ``method`` (e.g. ``lam`` for ``lp``) must be None or absent.
    For ``nmtune`` the result holds the effective ``lam``/``w_*``/``svd_topk`` (preset values,
    overridden by any non-None given value).
    """
    if method not in DEFAULTS:
        raise UnknownNameError("head method", method, HEAD_METHODS)
    allowed = DEFAULTS[method]
    unknown = sorted(set(hparams) - set(HPARAM_NAMES))
    if unknown:
        raise ConfigError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for method {method!r}; "
            f"allowed: {', '.join(allowed)}"
        )
    wrong = sorted(k for k, v in hparams.items() if k not in allowed and v is not None)
    if wrong:
        applies = {k: [m for m in DEFAULTS if k in DEFAULTS[m]] for k in wrong}
        detail = "; ".join(f"{k} applies to {', '.join(ms)}" for k, ms in applies.items())
        raise ConfigError(
            f"hyper-parameter(s) {', '.join(wrong)} do not apply to method {method!r} ({detail}); "
            f"allowed for {method!r}: {', '.join(allowed)}"
        )
    hp = dict(allowed)
    hp.update({k: v for k, v in hparams.items() if k in allowed and v is not None})
    hp["epochs"] = _as_int("epochs", hp["epochs"], 1)
    hp["batch_size"] = _as_int("batch_size", hp["batch_size"], 2)
    hp["lr"] = _as_float("lr", hp["lr"], positive=True)
    hp["weight_decay"] = _as_float("weight_decay", hp["weight_decay"], positive=False)
    if "ratio" in hp:
        hp["ratio"] = _as_float("ratio", hp["ratio"], positive=True)
        hp["depth"] = _as_int("depth", hp["depth"], 1)
    if method == "nmtune":
        if hp["preset"] not in NMTUNE_PRESETS:
            raise UnknownNameError("NMTune preset", str(hp["preset"]), NMTUNE_PRESETS)
        topk = hp["svd_topk"]
        preset = NMTunePreset.resolve(
            hp["preset"],
            lam=hp["lam"],
            w_mse=hp["w_mse"],
            w_cov=hp["w_cov"],
            w_svd=hp["w_svd"],
            svd_topk=None if topk is None else _as_int("svd_topk", topk, 1),
        )
        hp.update({k: v for k, v in preset.as_dict().items() if k != "name"})
    return hp


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _features(x: Any, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if not np.issubdtype(arr.dtype, np.number):
            raise ConfigError(f"{name} must be numeric features, got dtype {arr.dtype}")
        t = torch.tensor(arr)  # copies: read-only arrays (Ray object store) are fine
    if t.ndim != 2 or t.shape[0] == 0:
        raise ConfigError(f"{name} must be a non-empty 2-D tensor (samples x dims), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ConfigError(f"{name} must be floating point features, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.float32)


def _labels(y: Any, name: str, n: int, device: torch.device) -> torch.Tensor:
    t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.array(y))
    if t.ndim != 1 or t.shape[0] != n:
        raise ConfigError(f"{name} must be a 1-D label vector of length {n}, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.int64)
    if int(t.min()) < 0:
        raise ConfigError(f"{name} holds a negative label {int(t.min())}; labels are class indices >= 0")
    return t


def _eval_sets(test_x: Any, test_y: Any) -> dict[str, tuple[Any, Any]]:
    if isinstance(test_x, Mapping) != isinstance(test_y, Mapping):
        raise ConfigError("test_x and test_y must both be tensors or both be dicts keyed by set name")
    if not isinstance(test_x, Mapping):
        return {"test": (test_x, test_y)}
    if set(test_x) != set(test_y):
        raise ConfigError(f"test_x sets {sorted(test_x)} differ from test_y sets {sorted(test_y)}")
    if not test_x:
        raise ConfigError("no test sets given; pass a tensor or a non-empty dict of tensors")
    return {str(k): (test_x[k], test_y[k]) for k in test_x}


@dataclass
class PreparedData:
    """Validated tensors on the fit device, shared by several fits (see :func:`fit_many`)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    class_subsets: dict[str, torch.Tensor]
    device: torch.device
    raw_spectra: dict[str, dict[str, float]]


def prepare_data(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    device: str | torch.device | None = None,
    class_subsets: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
) -> PreparedData:
    """Check shapes and labels once and move everything to the fit device."""
    dev = _device(device)
    tx = _features(train_x, "train_x", dev)
    ty = _labels(train_y, "train_y", tx.shape[0], dev)
    if tx.shape[0] < 2:
        raise ConfigError("train_x has a single sample; a head needs at least 2 to train")
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, (x, y) in _eval_sets(test_x, test_y).items():
        ex = _features(x, f"test_x[{name!r}]", dev)
        if ex.shape[1] != tx.shape[1]:
            raise ConfigError(
                f"test set {name!r} has {ex.shape[1]} feature dims but train_x has {tx.shape[1]}; "
                "use features from the same backbone"
            )
        sets[name] = (ex, _labels(y, f"test_y[{name!r}]", ex.shape[0], dev))
    k = int(ty.max()) + 1
    if num_classes is not None:
        k_given = _as_int("num_classes", num_classes, 2)
        if k_given < k:
            raise ConfigError(f"train_y has label {k - 1} but num_classes={k_given}; raise num_classes")
        k = k_given
    for name, (_, y) in sets.items():
        if int(y.max()) >= k:
            raise ConfigError(
                f"test set {name!r} has label {int(y.max())} but the head has {k} classes "
                f"(from train_y); pass num_classes={int(y.max()) + 1} or more"
            )
    subsets: dict[str, torch.Tensor] = {}
    for name, idx in (class_subsets or {}).items():
        if name not in sets:
            raise ConfigError(f"class_subsets names set {name!r}; test sets are {', '.join(sets)}")
        if isinstance(idx, torch.Tensor):
            idx = idx.detach().cpu().numpy()
        ids = torch.as_tensor(np.asarray(idx, dtype=np.int64)).to(dev)
        if ids.ndim != 1 or ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= k:
            raise ConfigError(f"class_subsets[{name!r}] must be a non-empty list of class indices in [0, {k - 1}]")
        if torch.unique(ids).numel() != ids.numel():
            raise ConfigError(f"class_subsets[{name!r}] repeats a class index")
        if not bool(torch.isin(sets[name][1], ids).all()):
            raise ConfigError(f"test set {name!r} has labels outside its class subset; add them to class_subsets[{name!r}]")
        subsets[name] = ids
    return PreparedData(tx, ty, sets, k, subsets, dev, {})


@dataclass
class TrainedHead:
    """A fitted head and how it was trained."""

    head: nn.Module
    method: str
    hparams: dict[str, Any]
    train_loss: float
    epochs_run: int


def _diverged(method: str, epoch: int, step: int, hp: dict[str, Any], x: torch.Tensor) -> TrainingDiverged:
    hint = (
        "train_x contains NaN or inf: clean the features"
        if not bool(torch.isfinite(x).all())
        else "lower lr or the NMTune weights"
    )
    return TrainingDiverged(
        f"{method} head diverged: non-finite loss at epoch {epoch}, step {step} "
        f"with hparams {hp}; {hint}"
    )


def training_setup(method: str, hp: dict[str, Any], dim: int, num_classes: int, n: int, seed: int,
                   device: Any = None) -> tuple[Any, NMTunePreset | None, torch.optim.Optimizer, Any,
                                                torch.Generator, int, int]:
    """The seeded head, loss preset, AdamW + cosine schedule, batch generator, batch size and
    steps per epoch of one fit. Shared with the re-encoding baseline in ``benchmarks/`` so the
    speed comparison trains exactly the same head."""
    bs = min(hp["batch_size"], n)
    steps = n // bs + (1 if n % bs > 1 else 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        arch = {k: hp[k] for k in ("ratio", "depth") if k in hp}
        head = create_head(method, dim, num_classes, **arch)
        if device is not None:
            head = head.to(device)
    preset = NMTunePreset.resolve(
        hp["preset"], lam=hp["lam"], w_mse=hp["w_mse"], w_cov=hp["w_cov"], w_svd=hp["w_svd"],
        svd_topk=hp["svd_topk"],
    ) if method == "nmtune" else None  # fmt: skip
    opt = torch.optim.AdamW(head.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp["epochs"] * steps)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    return head, preset, opt, sched, gen, bs, steps


def train_head(data: PreparedData, method: str, *, seed: int = 0, **hparams: Any) -> TrainedHead:
    """Train ``method``'s head on ``data.train_x`` (see module docstring for the recipe)."""
    hp = resolve_hparams(method, **hparams)
    seed = _as_int("seed", seed, 0)
    x, y = data.train_x, data.train_y
    n, dim = x.shape
    head, preset, opt, sched, gen, bs, steps = training_setup(method, hp, dim, data.num_classes, n, seed,
                                                             data.device)
    epoch_loss = float("nan")
    for epoch in range(hp["epochs"]):
        perm = torch.randperm(n, generator=gen).to(data.device)
        total = torch.zeros((), dtype=torch.float64, device=data.device)
        for step in range(steps):
            idx = perm[step * bs : (step + 1) * bs]
            xb, yb = x[idx], y[idx]
            try:
                logits, z = head(xb)
                if preset is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    loss, _ = preset.loss(logits, yb, z, xb)
            except torch.linalg.LinAlgError as err:  # SVD of a non-finite batch
                raise _diverged(method, epoch, step, hp, x) from err
            if not bool(torch.isfinite(loss)):
                raise _diverged(method, epoch, step, hp, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        epoch_loss = float(total) / steps
    # The last update can overflow the weights although every loss so far was finite.
    if not all(bool(torch.isfinite(p).all()) for p in head.parameters()):
        raise _diverged(method, hp["epochs"] - 1, steps - 1, hp, x)
    head.eval()
    return TrainedHead(head, method, hp, epoch_loss, hp["epochs"])


def macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Unweighted mean of per-class F1 over classes present in ``y_true`` or ``y_pred``.

    Same value as ``sklearn.metrics.f1_score(y_true, y_pred, average="macro")``:
    per class ``2 TP / (2 TP + FP + FN)``.
    """
    y_true, y_pred = y_true.long().flatten(), y_pred.long().flatten()
    k = int(torch.maximum(y_true.max(), y_pred.max())) + 1
    tp = torch.bincount(y_true[y_true == y_pred], minlength=k).double()
    n_true = torch.bincount(y_true, minlength=k).double()
    n_pred = torch.bincount(y_pred, minlength=k).double()
    present = (n_true + n_pred) > 0
    f1 = 2 * tp[present] / (n_true[present] + n_pred[present])
    return float(f1.mean())


def _spectrum(x: torch.Tensor) -> dict[str, float]:
    # A collapsed representation (all rows equal) has no spectrum: record NaN, do not fail the fit.
    try:
        return spectrum_summary(x, normalize=True, center="columns")
    except ConfigError:
        return {"sve": float("nan"), "lsvr": float("nan")}


def evaluate_head(trained: TrainedHead, data: PreparedData) -> dict[str, dict[str, float]]:
    """Per test set: accuracy, macro_f1, sve, lsvr (of z), sve_raw, lsvr_raw (of inputs), n."""
    out: dict[str, dict[str, float]] = {}
    head = trained.head.eval()
    for name, (x, y) in data.eval_sets.items():
        subset = data.class_subsets.get(name)
        preds, zs = [], []
        with torch.no_grad():
            for i in range(0, x.shape[0], _EVAL_CHUNK):
                logits, z = head(x[i : i + _EVAL_CHUNK])
                if subset is not None:
                    pred = subset[logits[:, subset].argmax(dim=1)]
                else:
                    pred = logits.argmax(dim=1)
                preds.append(pred)
                zs.append(z)
        pred = torch.cat(preds)
        z = torch.cat(zs)
        if name not in data.raw_spectra:
            data.raw_spectra[name] = _spectrum(x)
        zs_ = _spectrum(z) if trained.method != "lp" else data.raw_spectra[name]
        raw = data.raw_spectra[name]
        out[name] = {
            "accuracy": float((pred == y).double().mean()),
            "macro_f1": macro_f1(y, pred),
            "sve": zs_["sve"],
            "lsvr": zs_["lsvr"],
            "sve_raw": raw["sve"],
            "lsvr_raw": raw["lsvr"],
            "n": int(y.shape[0]),
        }
    return out


def _fit(data: PreparedData, method: str, seed: int, hparams: dict[str, Any]) -> dict[str, Any]:
    trained = train_head(data, method, seed=seed, **hparams)
    return {
        "method": method,
        "hparams": trained.hparams,
        "train_loss": trained.train_loss,
        "epochs_run": trained.epochs_run,
        "eval": evaluate_head(trained, data),
    }


def fit_and_evaluate(
    method: str,
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    class_subsets: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    **hparams: Any,
) -> dict[str, Any]:
    """Train ``method`` (lp | mlp | nmtune) on the training features and score every test set.

    ``test_x``/``test_y``: tensors (the set is named "test") or dicts keyed by set name.
    ``class_subsets``: ``{set_name: class indices}``; on that set only those logits compete
    (ImageNet-A/R style). ``num_classes``: head width, by default ``max(train_y) + 1``.
    ``hparams``: see :data:`DEFAULTS` and :data:`HPARAM_NAMES`.

    Returns ``{"method", "hparams" (resolved), "train_loss" (mean over the last epoch),
    "epochs_run", "eval": {set: {"accuracy", "macro_f1", "sve", "lsvr", "sve_raw", "lsvr_raw",
    "n"}}}``; ``sve``/``lsvr`` are of the head output z (z = f for LP), LSVR on a linear scale,
    NaN if z collapsed to a point.
    """
    if method not in DEFAULTS:
        raise UnknownNameError("head method", method, HEAD_METHODS)
    resolve_hparams(method, **hparams)  # fail on bad names before moving data
    data = prepare_data(
        train_x, train_y, test_x, test_y, device=device, class_subsets=class_subsets, num_classes=num_classes
    )
    return _fit(data, method, seed, hparams)


def fit_many(
    configs: Sequence[Mapping[str, Any]],
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    **common: Any,
) -> list[dict[str, Any]]:
    """Run several fits on the same features, e.g. a whole grid inside one sweep trial.

    Each config holds ``method``, optionally ``seed`` and hyper-parameters; ``common`` holds
    shared keywords (``device``, ``class_subsets``, ``num_classes``, default ``seed`` or
    hyper-parameters), overridden by each config. The data is validated and moved once and the
    raw-feature spectra are computed once. A failing fit becomes ``{"error", "traceback",
    "method", "config"}`` in its place instead of aborting the batch; a data error common to all
    fits still raises.
    """
    data_keys = ("device", "class_subsets", "num_classes")
    data = prepare_data(train_x, train_y, test_x, test_y, **{k: common[k] for k in data_keys if k in common})
    shared = {k: v for k, v in common.items() if k not in data_keys}
    records: list[dict[str, Any]] = []
    for cfg in configs:
        merged = {**shared, **dict(cfg)}
        method = merged.pop("method", None)
        seed = merged.pop("seed", 0)
        try:
            if method is None:
                raise ConfigError(f"fit config {dict(cfg)} has no 'method'; use one of {', '.join(HEAD_METHODS)}")
            records.append(_fit(data, str(method), seed, merged))
        except Exception as err:  # noqa: BLE001 - one bad fit must not sink the batch
            records.append(
                {
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                    "method": method,
                    "config": dict(cfg),
                }
            )
    return records
