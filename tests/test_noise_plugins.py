"""Noise kinds and pre-training objectives are registries: the built-ins give the same bits as
before they were (pinned digests, computed on the tree before issue 24), and a kind from an
outside package is one registered function that a suite, a job and the corpus all accept."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmark.errors import ConfigError
from benchmark.noise import (
    CIFAR10_ASYMMETRIC_MAP,
    ENTRY_POINT_GROUP,
    flip_labels,
    get_noise_kind,
    noise_kinds,
    swap_captions,
)
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
        assert _digest(r.noisy_labels, r.flipped, r.transition, np.float64(r.realised_ratio)) == pinned, kind
    caps = [f"a photo of {t}" for t in rng.integers(0, 9, 500)]
    s = swap_captions(caps, 0.4, seed=3)
    assert _digest(np.array(s.captions), s.mismatched, np.float64(s.realised_ratio)) == "94c8b9d53679e5b9"


SUP = PretrainJob(
    objective="supervised",
    corpus="fashion-mnist",
    arch="test_resnet",
    noise_kind="symmetric",
    noise_ratio=0.2,
    train_subset=1000,
)
PINNED_SETS = [
    (SUP, "28eeb5f72db8c34f", 0.2),
    (replace(SUP, noise_kind="instance", noise_ratio=0.4, train_subset=600, seed=2), "f017d664003d6538", 0.4),
    (
        replace(SUP, noise_kind="asymmetric", class_map={1: 2, 3: 4}, noise_ratio=0.4, train_subset=600, seed=2),
        "e7df4b8210623bd8",
        0.3984375,
    ),
    (
        PretrainJob(
            objective="clip",
            corpus="fashion-mnist",
            arch="nml-tiny-clip",
            noise_kind="swap",
            noise_ratio=0.3,
            train_subset=1000,
        ),
        "06284fa6938b0162",
        0.3,
    ),
]


@pytest.mark.parametrize("job,pinned,realised", PINNED_SETS, ids=["symmetric", "instance", "asymmetric", "swap"])
def test_training_sets_are_those_of_before(job: PretrainJob, pinned: str, realised: float) -> None:
    """The corpus' label table and noise record (every array of ``noise.npz``), bit for bit."""
    ts = build_training_set(job)
    rec = [ts.record[k] for k in sorted(ts.record)]
    assert _digest(*rec, ts.labels.targets, ts.labels.clean, ts.labels.noisy) == pinned
    assert ts.summary["realised_ratio"] == realised and ts.summary["key"] == job.key


# -- a noise kind from an outside package ----------------------------------------------------------
PLUGIN_SRC = Path(__file__).resolve().parent / "plugins" / "nmlbench_extra_plugin" / "src"


@pytest.fixture
def opposite(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The ``opposite`` kind of tests/plugins/nmlbench_extra_plugin, found as an installed
    package would be: through an ``nmlbench.noise`` entry point (the real loader, fed one
    ``EntryPoint`` naming the plugin's module)."""
    from importlib.metadata import EntryPoint

    from benchmark.noise import refresh_plugins, registry, unregister_noise_kind

    monkeypatch.syspath_prepend(str(PLUGIN_SRC))
    ep = EntryPoint("opposite", "nmlbench_extra_plugin.noise_kinds", ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == ENTRY_POINT_GROUP else [])
    refresh_plugins()
    yield "opposite"
    unregister_noise_kind("opposite")
    sys.modules.pop("nmlbench_extra_plugin.noise_kinds", None)
    monkeypatch.undo()
    refresh_plugins()


def test_a_plugin_kind_is_one_registered_function(opposite: str) -> None:
    kind = get_noise_kind(opposite)
    assert kind.objectives == ("supervised",) and kind.data == "labels"
    assert opposite in noise_kinds("supervised") and opposite not in noise_kinds("clip")
    y = np.random.default_rng(0).integers(0, 10, 1000)
    r = flip_labels(y, 10, 0.2, kind=opposite, seed=1)
    np.testing.assert_array_equal(r.noisy_labels[r.flipped], (y[r.flipped] + 5) % 10)
    for c in range(10):  # exact per-class counts, as the built-ins
        assert r.flipped[y == c].sum() == int(np.floor(0.2 * (y == c).sum() + 0.5))
    with pytest.raises(ConfigError, match="class_map only applies to kind='asymmetric', not 'opposite'"):
        flip_labels(y, 10, 0.2, kind=opposite, class_map={1: 2})


def test_a_plugin_kind_runs_from_a_suite_to_the_noise_record(opposite: str, tmp_path: Path) -> None:
    """The suite schema, the plan, the job rules and the corpus all take the plugin's kind."""
    from benchmark.config import validate_suite
    from benchmark.plan import pretrain_jobs
    from benchmark.pretrain import check_job, noise_problem, write_noise_record

    block = {
        "objective": "supervised",
        "corpus": "fashion-mnist",
        "arch": "test_resnet",
        "train_subset": 500,
        "noise": {"kind": opposite, "ratios": [0.3]},
    }
    suite = validate_suite({"name": "t", "pretrain": [block], "downstream": {"id": ["mnist-5k"]}}, check_names=False)
    (job,) = pretrain_jobs(suite)
    assert job.noise_kind == opposite
    check_job(job)
    assert "does not apply to objective 'clip'" in (noise_problem("clip", opposite, None) or "")
    ts = build_training_set(job)
    flipped = ts.labels.noisy
    np.testing.assert_array_equal(ts.labels.targets[flipped], (ts.labels.clean[flipped] + 5) % 10)
    assert ts.summary["kind"] == opposite and ts.summary["realised_ratio"] == pytest.approx(0.3, abs=0.01)
    write_noise_record(ts, tmp_path)
    with np.load(tmp_path / "noise.npz") as z:
        assert str(z["kind"]) == opposite and z["flipped"].sum() == flipped.sum()


def test_unknown_kinds_and_objectives_list_the_registered_ones(opposite: str) -> None:
    from benchmark.config import validate_suite
    from benchmark.errors import UnknownNameError
    from benchmark.pretrain.objectives import get_objective, objective_names

    with pytest.raises(UnknownNameError, match="known noise kinds: .*opposite"):
        get_noise_kind("nope")
    block = {"objective": "supervised", "corpus": "fashion-mnist", "arch": "a", "noise": {"kind": "nope"}}
    with pytest.raises(ConfigError, match="noise.kind = 'nope': must be one of .*opposite"):
        validate_suite({"name": "t", "pretrain": [block], "downstream": {"id": ["mnist-5k"]}}, check_names=False)
    assert objective_names() == ("supervised", "clip")
    with pytest.raises(UnknownNameError, match="known objectives: clip, supervised"):
        get_objective("mae")


def test_objectives_own_their_sums_and_metrics() -> None:
    """Each objective declares its per-epoch sums and turns them into its metrics; the recipe's
    ``epoch_metrics`` is the objective's."""
    from benchmark.pretrain.objectives import get_objective

    sup, clip = get_objective("supervised"), get_objective("clip")
    assert (sup.family, clip.family) == ("timm", "open_clip")
    assert sup.default_noise_kind == "symmetric" and clip.default_noise_kind == "swap"
    m = sup.epoch_metrics([10.0, 5.0, 4.0, 3.0, 2.0, 1.0, 1.0, 3.0, 3.0])
    assert m == {
        "loss": 2.0,
        "train_accuracy": 0.8,
        "clean_accuracy": 0.6,
        "unflipped_accuracy": 1.0,
        "noisy_fit": 0.5,
        "true_fit": 0.5,
    }
    c = clip.epoch_metrics([8.0, 4.0, 2.0, 4.0, 1.0, 0.0, 0.0])
    assert c == {"loss": 2.0, "train_accuracy": 0.5, "matched_rank": 0.25}
