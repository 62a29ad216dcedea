"""Feature cache: computed once per key, served from disk after, repaired when corrupt.

The acceptance test of the issue: features of two backbones on an embedded-like split, a linear
probe on them, and a second cache that answers from disk with zero backbone forwards.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmark.backbones import create_backbone
from benchmark.data.base import ArraySplit
from benchmark.features import FeatureCache, Features, extract_features, feature_key
from benchmark.probe import fit_and_evaluate

torch.set_num_threads(1)
CLASSES = ["top-left", "top-right", "bottom-left", "bottom-right"]


def _split(n: int, split: str, seed: int) -> ArraySplit:
    """28x28 grey images like the embedded sets: a bright blob in the quadrant of the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 2 + 14 * (k // 2) + rng.integers(0, 3), 2 + 14 * (k % 2) + rng.integers(0, 3)
        images[i, r : r + 9, c : c + 9] = rng.integers(180, 256)
    return ArraySplit("quadrants", split, CLASSES, images, labels)


@pytest.fixture(scope="module")
def data() -> tuple[ArraySplit, ArraySplit]:
    return _split(160, "train", 0), _split(80, "test", 1)


@pytest.fixture(scope="module")
def resnet() -> Any:
    return create_backbone({"family": "timm", "arch": "test_resnet", "seed": 0})


class CountingBackbone:
    """Wraps a backbone and counts ``encode`` calls (same identity, so same cache keys)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner.encode(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _probe(train: Features, test: Features) -> float:
    """Linear probe (paper defaults) on features standardised with the training statistics:
    random-init features are badly scaled, and scaling is the caller's choice in probe.py."""
    mean, std = train.x.mean(0), train.x.std(0) + 1e-6
    res = fit_and_evaluate("lp", (train.x - mean) / std, train.y, (test.x - mean) / std, test.y, seed=0)
    return float(res["eval"]["test"]["accuracy"])


def test_two_backbones_probe_then_second_cache_does_no_forward(
    tmp_path: Path, data: tuple[ArraySplit, ArraySplit], resnet: Any
) -> None:
    train, test = data
    backbones = [
        CountingBackbone(resnet),
        CountingBackbone(create_backbone({"family": "open_clip", "arch": "nml-tiny-clip"})),
    ]
    cache = FeatureCache(tmp_path, batch_size=64, progress=False)
    first = {}
    for bb in backbones:
        tr, te = cache.get_many(bb, [train, test])
        assert tr.x.shape == (160, bb.feature_dim) and tr.x.dtype == torch.float32
        assert te.y.dtype == torch.int64 and torch.equal(te.y, torch.from_numpy(test.labels))
        assert bb.calls == 3 + 2  # ceil(160 / 64) + ceil(80 / 64) batches
        acc = _probe(tr, te)
        # Frozen random features still separate the quadrants: 80/80 and 79/80 measured; the bound
        # allows 8 misses, far more than float32 round-off in the features can flip.
        assert acc >= 0.9, (bb.name, acc)
        first[bb.identity] = (tr, te)
    assert (cache.hits, cache.misses, cache.forward_batches) == (0, 4, 10)
    assert len(list(tmp_path.glob("*/*.npz"))) == 4 and not list(tmp_path.glob("*/.*tmp"))

    again = FeatureCache(tmp_path, progress=False)
    for bb in backbones:
        bb.calls = 0
        tr, te = again.get_many(bb, {"train": train, "test": test}).values()
        assert bb.calls == 0
        assert torch.equal(tr.x, first[bb.identity][0].x) and torch.equal(te.y, first[bb.identity][1].y)
        assert tr.meta["identity"] == bb.identity and tr.meta["shape"] == [160, bb.feature_dim]
    assert (again.hits, again.misses, again.forward_batches) == (4, 0, 0)


def test_key_depends_on_identity_split_and_transform(data: tuple[ArraySplit, ArraySplit], resnet: Any) -> None:
    train, test = data
    other_seed = create_backbone({"family": "timm", "arch": "test_resnet", "seed": 1})
    other_size = create_backbone({"family": "timm", "arch": "test_resnet", "image_size": 40})
    keys = {
        feature_key(resnet, train),
        feature_key(resnet, test),
        feature_key(other_seed, train),
        feature_key(other_size, train),
        feature_key(resnet, train.subset(range(10))),
    }
    assert len(keys) == 5
    assert feature_key(resnet, train) == feature_key(
        create_backbone({"family": "timm", "arch": "test_resnet", "seed": 0}), _split(160, "train", 0)
    )


def _corrupt_truncate(npz: Path, js: Path) -> None:
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])


def _corrupt_flip(npz: Path, js: Path) -> None:
    raw = bytearray(npz.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0xFF
    npz.write_bytes(bytes(raw))


def _corrupt_checksum(npz: Path, js: Path) -> None:
    with np.load(npz) as z:
        x, y = z["x"].copy(), z["y"]
    x[0, 0] += 1.0  # a valid file with different numbers: only the checksum can tell
    np.savez(npz, x=x, y=y)


def _corrupt_shape(npz: Path, js: Path) -> None:
    meta = json.loads(js.read_text())
    meta["shape"] = [meta["shape"][0], meta["shape"][1] + 1]
    js.write_text(json.dumps(meta))


def _drop_metadata(npz: Path, js: Path) -> None:
    js.unlink()


@pytest.mark.parametrize(
    "damage", [_corrupt_truncate, _corrupt_flip, _corrupt_checksum, _corrupt_shape, _drop_metadata]
)
def test_corrupt_entry_warns_and_recomputes_identical(tmp_path: Path, damage: Any, resnet: Any) -> None:
    split = _split(40, "train", 2)
    cache = FeatureCache(tmp_path, progress=False)
    good = cache.get(resnet, split)
    npz, js = cache.paths(good.key)
    damage(npz, js)
    with pytest.warns(UserWarning, match=npz.name):
        again = cache.get(resnet, split)
    assert (cache.hits, cache.misses) == (0, 2)
    assert torch.equal(again.x, good.x) and torch.equal(again.y, good.y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: the next read is a clean hit
        assert torch.equal(cache.get(resnet, split).x, good.x)
    assert cache.hits == 1


def test_extract_features_alone_matches_cache_and_direct_encode(tmp_path: Path, resnet: Any) -> None:
    split = _split(10, "test", 3)
    alone = extract_features(resnet, split, batch_size=4, device="cpu")
    assert alone.meta["forward_batches"] == 3 and alone.key == feature_key(resnet, split)
    direct = resnet.encode(torch.stack([resnet.transform(split[i][0]) for i in range(10)]))
    # Batches of 4 vs one of 10 may block the convolutions' sums differently: float32 round-off,
    # tens of ulps of these O(0.2) features (equal here); 1e-5 relative to the largest is ~80 ulps.
    assert torch.allclose(alone.x, direct, rtol=0, atol=1e-5 * float(direct.abs().max()))
    before = datetime.now(timezone.utc).replace(microsecond=0)
    cached = FeatureCache(tmp_path, batch_size=4, progress=False).get(resnet, split)
    after = datetime.now(timezone.utc)
    assert torch.equal(cached.x, alone.x)
    meta = json.loads(FeatureCache(tmp_path).paths(cached.key)[1].read_text())
    assert meta["fingerprint"] == split.fingerprint and meta["dtype"] == "float32"
    assert (meta["identity"], meta["key"], meta["shape"]) == (resnet.identity, cached.key, [10, resnet.feature_dim])
    # The checksum is of the stored arrays, features then labels, as written.
    digest = hashlib.sha256(alone.x.numpy().tobytes() + split.labels.astype(np.int64).tobytes()).hexdigest()
    assert meta["sha256"] == digest
    assert before <= datetime.fromisoformat(meta["created"]) <= after


def test_a_refill_under_the_same_key_gives_the_same_bits(tmp_path: Path, resnet: Any) -> None:
    """Extraction runs in ``deterministic_section`` (``extraction.extract_backbone``): fixed threads
    and deterministic algorithms, so two caches filled for one key hold equal bits (exact, not
    close); the worker's own settings come back after, for the tasks it runs next."""
    from benchmark.determinism import deterministic_section, epoch_seed

    split = _split(10, "test", 3)
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with deterministic_section(2):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 2
        a = FeatureCache(tmp_path / "a", batch_size=4, progress=False).get(resnet, split)
        b = FeatureCache(tmp_path / "b", batch_size=4, progress=False).get(resnet, split)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
    assert a.key == b.key and torch.equal(a.x, b.x)
    # The per-epoch seed of pre-training: a function of (seed, epoch, rank) alone.
    assert epoch_seed(0, 3, 1) == epoch_seed(0, 3, 1) < 2**63
    assert len({epoch_seed(s, e, r) for s in range(2) for e in range(3) for r in range(2)}) == 12
