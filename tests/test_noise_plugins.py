"""Noise kinds and pre-training objectives are registries: the built-ins give the same bits as
before they were (pinned digests, computed on the tree before issue 24), and a kind from an
outside package is one registered function that a suite, a job and the corpus all accept."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from benchmark.noise import CIFAR10_ASYMMETRIC_MAP, flip_labels, swap_captions
from benchmark.pretrain import PretrainJob, build_training_set


def _digest(*arrays: Any) -> str:
    d = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        d.update(str(a.dtype).encode())
        d.update(a.tobytes())
    return d.hexdigest()[:16]


PINNED_FLIPS = {
    "symmetric": "785302ba5d194edb",
    "pairflip": "93f93ec14cd0c027",
    "asymmetric": "c745e872d984090b",
    "instance": "8ecf48493ddcf476",
}


def test_builtin_kinds_give_the_bits_of_before() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 2000)
    f = rng.standard_normal((2000, 12))
    options = {"asymmetric": {"class_map": CIFAR10_ASYMMETRIC_MAP}, "instance": {"features": f}}
    for kind, pinned in PINNED_FLIPS.items():
        r = flip_labels(y, 10, 0.3, kind=kind, seed=7, **options.get(kind, {}))
        assert _digest(r.noisy_labels, r.flipped, r.transition,
                       np.float64(r.realised_ratio)) == pinned, kind
    caps = [f"a photo of {t}" for t in rng.integers(0, 9, 500)]
    s = swap_captions(caps, 0.4, seed=3)
    assert _digest(np.array(s.captions), s.mismatched,
                   np.float64(s.realised_ratio)) == "94c8b9d53679e5b9"


SUP = PretrainJob(objective="supervised", corpus="fashion-mnist", arch="test_resnet",
                  noise_kind="symmetric", noise_ratio=0.2, train_subset=1000)
PINNED_SETS = [
    (SUP, "28eeb5f72db8c34f", 0.2),
    (replace(SUP, noise_kind="instance", noise_ratio=0.4, train_subset=600, seed=2),
     "f017d664003d6538", 0.4),
    (replace(SUP, noise_kind="asymmetric", class_map={1: 2, 3: 4}, noise_ratio=0.4,
             train_subset=600, seed=2), "e7df4b8210623bd8", 0.3984375),
    (PretrainJob(objective="clip", corpus="fashion-mnist", arch="nml-tiny-clip",
                 noise_kind="swap", noise_ratio=0.3, train_subset=1000), "06284fa6938b0162", 0.3),
]


@pytest.mark.parametrize("job,pinned,realised", PINNED_SETS,
                         ids=["symmetric", "instance", "asymmetric", "swap"])
def test_training_sets_are_those_of_before(job: PretrainJob, pinned: str, realised: float) -> None:
    """The corpus' label table and noise record (every array of ``noise.npz``), bit for bit."""
    ts = build_training_set(job)
    rec = [ts.record[k] for k in sorted(ts.record)]
    assert _digest(*rec, ts.labels.targets, ts.labels.clean, ts.labels.noisy) == pinned
    assert ts.summary["realised_ratio"] == realised and ts.summary["key"] == job.key
