"""Noisy pre-training with Ray Train: outputs, noise records, reuse, concurrency, fault recovery.

Each Ray Train fit costs ~20 s of fixed start-up on a 2-core machine, so the slow tests share
one module fixture that starts four jobs at once on ``init_ray(num_cpus=2)``: a supervised job, a
CLIP job and a job with an unknown architecture through ``run_pretrain_jobs``, and beside them
(in a thread) a supervised job whose worker is SIGKILLed after epoch 1. Workers take half a CPU
each so all three trainers fit together; every fit is a real multi-process Ray Train run.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.captions import CAPTION_TEMPLATES, class_captions
from benchmark.errors import ConfigError
from benchmark.pretrain import (
    PRETRAIN_MEAN,
    PRETRAIN_STD,
    PretrainJob,
    build_training_set,
    epoch_shard,
    fault_kill_epoch,
    job_dir,
    preprocess,
    run_pretrain,
    run_pretrain_jobs,
    subset_indices,
)

N = 1000  # training images per job
SUP = PretrainJob(objective="supervised", corpus="fashion-mnist", arch="test_resnet",
                  noise_kind="symmetric", noise_ratio=0.2, seed=0, epochs=3, batch_size=64,
                  lr=2e-3, image_size=32, train_subset=N)
CLIP = PretrainJob(objective="clip", corpus="fashion-mnist", arch="nml-tiny-clip",
                   noise_kind="swap", noise_ratio=0.3, seed=0, epochs=2, batch_size=100,
                   lr=1e-3, image_size=32, train_subset=N)
FAULT = replace(SUP, seed=1)  # another key, so it trains on its own
BROKEN = replace(SUP, arch="no_such_arch_xyz")
RUN_KW = {"cpus_per_worker": 0.5, "progress": False, "max_failures": 2}


# -- fast tests: no Ray ----------------------------------------------------------------------

def test_class_captions_are_seeded_and_name_the_class() -> None:
    labels = np.arange(200) % 4
    classes = ["t_shirt", "bag", "coat", "sandal"]
    a = class_captions(labels, classes, seed=3)
    assert a == class_captions(labels, classes, seed=3)
    assert a != class_captions(labels, classes, seed=4)
    names = [c.replace("_", " ") for c in classes]
    templates = [next(t for t in CAPTION_TEMPLATES if t.format(c=names[y]) == c)
                 for c, y in zip(a, labels)]
    assert len(set(templates)) == len(CAPTION_TEMPLATES)  # every template drawn, none fixed
    with pytest.raises(ConfigError, match="do(es)? not fit"):
        class_captions([0, 5], ["a", "b"])


def test_fault_injection_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("NMLBENCH_FAULT_KILL_AFTER_EPOCH", raising=False)
    assert fault_kill_epoch(None) is None
    monkeypatch.setenv("NMLBENCH_FAULT_KILL_AFTER_EPOCH", "1")
    assert fault_kill_epoch(None) == 1 and fault_kill_epoch(2) == 2  # the argument wins
    monkeypatch.setenv("NMLBENCH_FAULT_KILL_AFTER_EPOCH", "one")
    with pytest.raises(ConfigError, match="not an epoch number"):
        fault_kill_epoch(None)


def test_subset_is_seeded_sorted_and_distinct() -> None:
    a = subset_indices(60_000, 1000, seed=0)
    assert len(a) == 1000 and len(np.unique(a)) == 1000 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, subset_indices(60_000, 1000, seed=0))
    assert not np.array_equal(a, subset_indices(60_000, 1000, seed=1))
    assert np.array_equal(subset_indices(50, None, seed=0), np.arange(50))


def test_device_preprocessing_matches_the_feature_transform() -> None:
    """Training sees the same pixels the nmlbench backbone feeds the model later."""
    from benchmark.backbones import make_transform

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    ours = preprocess(torch.from_numpy(grey[:, None]), 32, PRETRAIN_MEAN, PRETRAIN_STD)
    tf = make_transform(32, PRETRAIN_MEAN, PRETRAIN_STD)
    ref = torch.stack([tf(Image.fromarray(g).convert("RGB")) for g in grey])
    assert ours.shape == ref.shape == (4, 3, 32, 32)
    # uint8 rounding of the resized image: at most one grey level (2/255 after normalising).
    assert (ours - ref).abs().max().item() <= 2 / 255 + 1e-6


def test_clip_training_set_swaps_exactly_the_requested_pairs() -> None:
    from benchmark.backbones import create_open_clip_model

    _, tok = create_open_clip_model("nml-tiny-clip", seed=0)
    ts = build_training_set(replace(CLIP, train_subset=200), tok)
    assert ts.images.shape == (200, 1, 28, 28) and ts.images.dtype == np.uint8
    assert ts.targets.shape[0] == 200 and ts.targets.ndim == 2
    assert int(ts.record["mismatched"].sum()) == 60 == ts.summary["num_mismatched"]
    assert ts.realised_ratio == pytest.approx(0.3)


def test_epoch_shards_are_equal_disjoint_and_cover_the_corpus() -> None:
    n, world = 1001, 2  # one image is dropped so that every rank takes the same steps
    shards = [epoch_shard(n, world, rank, seed=0, epoch=3) for rank in range(world)]
    assert [len(s) for s in shards] == [500, 500]
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(1000))
    assert not torch.equal(shards[0], epoch_shard(n, world, 0, seed=0, epoch=4))  # reshuffled
    assert torch.equal(epoch_shard(n, 1, 0, seed=0, epoch=3).sort().values, torch.arange(n))


# -- slow tests: real Ray Train fits, shared ------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from benchmark.ray_session import init_ray

    started = init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("pretrain")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:
        fault = pool.submit(run_pretrain, FAULT, work, fault_kill_after_epoch=1, **RUN_KW)
        results = run_pretrain_jobs([SUP, CLIP, BROKEN], work, max_concurrent=2, **RUN_KW)
        fault_result = fault.result()
    return {"work": work, "sup": results[0], "clip": results[1], "broken": results[2],
            "fault": fault_result, "seconds": time.perf_counter() - t0}


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_supervised_job_learns_and_writes_its_outputs(trained) -> None:
    from benchmark.data import get_dataset
    from benchmark.noise import flip_labels

    r = trained["sup"]
    assert r.ok and not r.reused, r.error
    out = job_dir(SUP, trained["work"])
    assert r.checkpoint_path == out / "model.pt" and r.checkpoint_path.is_file()
    assert r.noise_path == out / "noise.npz" and (out / "noise.json").is_file()
    m = r.metrics
    assert [e["epoch"] for e in m] == [0, 1, 2]
    assert m[-1]["loss"] < 0.8 * m[0]["loss"]
    assert m[-1]["clean_accuracy"] > 0.45  # chance is 0.10
    # 20 % of the labels are wrong: the model agrees more with the truth than with them.
    assert m[-1]["clean_accuracy"] > m[-1]["train_accuracy"]
    assert all(e["images_per_s"] > 0 and e["seconds"] > 0 for e in m)

    # The saved noise is exactly what benchmark.noise gives for this subset and seed.
    clean = get_dataset("fashion-mnist").split("train").labels[subset_indices(60_000, N, 0)]
    expect = flip_labels(clean, 10, 0.2, kind="symmetric", seed=0)
    rec = _npz(r.noise_path)
    assert np.array_equal(rec["noisy_labels"], expect.noisy_labels)
    assert np.array_equal(rec["flipped"], expect.flipped)
    assert np.array_equal(rec["clean_labels"], clean)
    assert float(rec["realised_ratio"]) == expect.realised_ratio == r.realised_ratio
    done = json.loads((out / "done.json").read_text())
    assert done["realised_ratio"] == expect.realised_ratio and done["key"] == SUP.key
    assert [e["epoch"] for e in done["metrics"]] == [0, 1, 2]


@pytest.mark.slow
def test_checkpoint_loads_as_nmlbench_backbone(trained) -> None:
    from benchmark.backbones import create_backbone
    from benchmark.data import get_dataset

    bb = create_backbone({"family": "nmlbench", "checkpoint": str(trained["sup"].checkpoint_path)})
    assert bb.image_size == 32 and bb.mean == PRETRAIN_MEAN
    split = get_dataset("fashion-mnist").split("test")
    x = torch.stack([bb.transform(split[i][0]) for i in range(16)])
    f = bb.encode(x)
    assert f.shape == (16, bb.feature_dim) and torch.isfinite(f).all()
    assert f.std(0).mean() > 0  # not a constant map


@pytest.mark.slow
def test_rerun_reuses_without_starting_a_trainer(trained, monkeypatch) -> None:
    import ray.train.torch

    def boom(*a, **k):
        raise AssertionError("a finished job must not start Ray Train")

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", boom)
    t0 = time.perf_counter()
    r = run_pretrain(SUP, trained["work"], **RUN_KW)
    assert time.perf_counter() - t0 < 0.5
    assert r.reused and r.metrics == trained["sup"].metrics
    both = run_pretrain_jobs([SUP, SUP], trained["work"], **RUN_KW)
    assert [b.reused for b in both] == [True, True]


@pytest.mark.slow
def test_clip_job_saves_exact_caption_mismatches(trained) -> None:
    from benchmark.backbones import create_backbone

    r = trained["clip"]
    assert r.ok, r.error
    rec = _npz(r.noise_path)
    assert int(rec["mismatched"].sum()) == round(0.3 * N)
    assert float(rec["realised_ratio"]) == pytest.approx(0.3) == r.realised_ratio
    changed = rec["captions"] != rec["clean_captions"]
    assert np.array_equal(changed, rec["mismatched"])
    info = json.loads(r.noise_path.with_suffix(".json").read_text())
    assert info["num_mismatched"] == round(0.3 * N)
    assert [e["epoch"] for e in r.metrics] == [0, 1]
    # Symmetric InfoNCE over a batch of B pairs starts at chance, log(B); at 30 % swaps a tiny
    # CLIP needs a few hundred steps to leave it, so 20 steps only show a sane, finite loss.
    assert all(abs(e["loss"] - math.log(CLIP.batch_size)) < 0.3 for e in r.metrics)
    bb = create_backbone({"family": "nmlbench", "checkpoint": str(r.checkpoint_path)})
    assert bb.checkpoint_meta["family"] == "open_clip" and bb.feature_dim == 64


@pytest.mark.slow
def test_failed_job_is_reported_without_losing_the_others(trained) -> None:
    b = trained["broken"]
    assert not b.ok and "no_such_arch_xyz" in b.error
    assert trained["sup"].ok and trained["clip"].ok


@pytest.mark.slow
def test_killed_worker_resumes_from_the_last_checkpoint(trained) -> None:
    r = trained["fault"]
    assert r.ok and not r.reused, r.error
    run_dir = trained["work"] / "ray_results" / FAULT.key
    assert (run_dir / "fault_injected_after_epoch_1").is_file()  # the kill did happen
    assert [e["epoch"] for e in r.metrics] == [0, 1, 2]          # no epoch trained twice
    assert [e["resumed_from_epoch"] for e in r.metrics] == [-1, -1, 1]
    assert (job_dir(FAULT, trained["work"]) / "done.json").is_file()
    assert r.metrics[-1]["loss"] < r.metrics[0]["loss"]

