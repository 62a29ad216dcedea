"""Features and labels checked once and moved to the fit device, for every head fit on a pair.

Why separate from training: a sweep fits dozens of heads on the same features, so shapes,
labels, class subsets and the device move are validated and done once (``prepare_data``), and
every fit reads the same tensors. Features are used exactly as given (cast to float32);
L2-normalising them is the caller's choice. ``device=None`` picks CUDA when available.

The evaluation set named ``selection_set`` (``"val"``: the validation rows carved from the
downstream training data) is the one a fit may read to choose something inside itself: the
linear probe's L2 strength, the epoch of a gradient-trained head. The test sets never are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmark.errors import ConfigError
from benchmark.heads.registry import as_int


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
    """Validated tensors on the fit device, shared by every fit on one (backbone, task) pair.

    ``raw_spectra`` caches SVE/LSVR of the frozen features per evaluation set: they do not
    depend on the head, so a sweep computes them once per pair, not once per fit.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    num_classes: int
    class_subsets: dict[str, torch.Tensor]
    device: torch.device
    raw_spectra: dict[str, dict[str, float]]
    selection: str | None = None  # the evaluation set fits select on (None: no validation set)

    def selection_set(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(features, labels) of the validation set, or None when the data has none."""
        return None if self.selection is None else self.eval_sets[self.selection]


def prepare_data(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    device: str | torch.device | None = None,
    class_subsets: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    selection_set: str | None = "val",
) -> PreparedData:
    """Check shapes and labels once and move everything to the fit device.

    ``selection_set`` names the evaluation set used for selection inside a fit (when present).
    """
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
        k_given = as_int("num_classes", num_classes, 2)
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
            raise ConfigError(
                f"test set {name!r} has labels outside its class subset; add them to class_subsets[{name!r}]"
            )
        subsets[name] = ids
    return PreparedData(tx, ty, sets, k, subsets, dev, {}, selection_set if selection_set in sets else None)


def prepare_payload(payload: Any, selection_set: str = "val") -> PreparedData:
    """A pair's cached features (a ``FeaturePayload``: ``train``, ``val``, ``tests`` as (x, y)
    arrays, ``class_subsets``, ``num_classes``) as ``PreparedData``: the validation set
    ``selection_set`` (what fits select on), then the test sets. Duck-typed, so the probe reads
    payloads without importing the stage that extracts them."""
    sets = {selection_set: payload.val, **payload.tests}
    return prepare_data(
        torch.from_numpy(np.array(payload.train[0], dtype=np.float32)),
        torch.from_numpy(np.array(payload.train[1], dtype=np.int64)),
        {k: torch.from_numpy(np.array(v[0], dtype=np.float32)) for k, v in sets.items()},
        {k: torch.from_numpy(np.array(v[1], dtype=np.int64)) for k, v in sets.items()},
        class_subsets=payload.class_subsets or None,
        num_classes=payload.num_classes,
        selection_set=selection_set,
    )
