"""Noisy pre-training with Ray Train: outputs, noise records, reuse, concurrency, fault recovery,
and the data-parallel semantics of more than one worker.

Each Ray Train fit costs ~20 s of fixed start-up on a 2-core machine, so the slow tests share
one module fixture that starts five jobs at once on ``init_ray(num_cpus=2)``: a supervised job, a
CLIP job and a job with an unknown architecture through ``run_pretrain_jobs``, and beside them
(in threads) a supervised job whose worker is SIGKILLed after epoch 1 and the supervised job
again on two workers (gloo) in a work dir of its own. Workers take a quarter or half of a CPU
each so all four trainers fit together; every fit is a real multi-process Ray Train run.
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
    index_digest,
    job_dir,
    param_digest,
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
TWO = replace(SUP, workers=2)  # another key (global batch 2 x 64): trained in a work dir of its own
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


def test_index_digest_adds_over_disjoint_shards_and_catches_overlap() -> None:
    a, b = epoch_shard(1000, 2, 0, seed=1, epoch=0), epoch_shard(1000, 2, 1, seed=1, epoch=0)
    whole = index_digest(np.arange(1000))
    assert (index_digest(a) + index_digest(b)) % 2**64 == whole
    assert index_digest(a.flip(0)) == index_digest(a)  # order-free
    overlap = torch.cat([a[:-1], b[:1]])  # same size as a: one index of b twice, one of a lost
    assert (index_digest(overlap) + index_digest(b)) % 2**64 != whole


def test_param_digest_sees_parameters_not_buffers() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    before = param_digest(net)
    net(torch.randn(8, 4))  # training-mode forward: only BatchNorm's running stats change
    assert param_digest(net) == before
    with torch.no_grad():
        net[0].weight[0, 0] += 1e-6
    assert param_digest(net) != before


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
    work_two = tmp_path_factory.mktemp("pretrain-two-workers")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        fault = pool.submit(run_pretrain, FAULT, work, fault_kill_after_epoch=1, **RUN_KW)
        two = pool.submit(run_pretrain, TWO, work_two, **{**RUN_KW, "cpus_per_worker": 0.25})
        results = run_pretrain_jobs([SUP, CLIP, BROKEN], work, max_concurrent=2, **RUN_KW)
        fault_result, two_result = fault.result(), two.result()
    return {"work": work, "sup": results[0], "clip": results[1], "broken": results[2],
            "fault": fault_result, "two": two_result, "work_two": work_two,
            "seconds": time.perf_counter() - t0}


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
    assert all(e["images_per_s"] == pytest.approx(N / e["seconds"]) for e in m)  # every image, once an epoch

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

    import benchmark.pretrain.launch as launch

    def boom(*a, **k):
        raise AssertionError("a finished job must neither start Ray Train nor build its training set")

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", boom)
    monkeypatch.setattr(launch, "build_training_set", boom)  # nor rebuild its noisy corpus
    r = run_pretrain(SUP, trained["work"], **RUN_KW)
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


@pytest.mark.slow
def test_two_workers_split_the_data_and_average_their_gradients(trained) -> None:
    """``batch_size`` is per worker; shards are disjoint; DDP keeps the replicas equal."""
    from benchmark.backbones import load_pretrain_checkpoint
    from benchmark.backbones.timm_family import build_timm_module

    r, one = trained["two"], trained["sup"]
    assert r.ok and not r.reused, r.error
    assert TWO.key != SUP.key  # the worker count changes the global batch, so it is part of the job
    per_worker = N // 2
    assert [e["epoch"] for e in r.metrics] == [0, 1, 2]
    for e in r.metrics:
        assert e["world_size"] == 2
        assert e["batch_per_worker"] == SUP.batch_size
        assert e["global_batch"] == 2 * SUP.batch_size
        assert e["steps_per_epoch"] == math.ceil(per_worker / SUP.batch_size) == 8
        ranks = e["ranks"]
        assert [x["rank"] for x in ranks] == [0, 1]
        assert [x["images"] for x in ranks] == [per_worker, per_worker]
        # The two shards are disjoint and together are the (equal-sharded) corpus.
        shards = sum(int(x["index_digest"], 16) for x in ranks) % 2**64
        assert shards == index_digest(np.arange(2 * per_worker))
        # Gradients are all-reduced: both replicas hold the same parameters after every
        # epoch. Workers training alone on their own shards would drift apart at step one.
        assert ranks[0]["param_digest"] == ranks[1]["param_digest"]
    assert len({e["ranks"][0]["index_digest"] for e in r.metrics}) == 3  # reshuffled each epoch
    assert len({e["ranks"][0]["param_digest"] for e in r.metrics}) == 3  # and it does train
    assert r.metrics[-1]["loss"] < r.metrics[0]["loss"]
    assert all((e["world_size"], e["batch_per_worker"], e["global_batch"], e["steps_per_epoch"])
               == (1, SUP.batch_size, SUP.batch_size, math.ceil(N / SUP.batch_size))
               for e in one.metrics)

    # The noisy labels do not depend on the worker count.
    two_rec, one_rec = _npz(r.noise_path), _npz(one.noise_path)
    assert two_rec.keys() == one_rec.keys()
    assert all(np.array_equal(two_rec[k], one_rec[k]) for k in one_rec)

    # model.pt holds the replicas' final parameters.
    ckpt = load_pretrain_checkpoint(r.checkpoint_path)
    module = build_timm_module(ckpt["arch"], ckpt["model_cfg"])
    module.load_state_dict(ckpt["state_dict"])
    assert param_digest(module) == r.metrics[-1]["ranks"][0]["param_digest"]

    # One report per epoch, each carrying one checkpoint (rank 0's); Ray keeps the last two.
    out = job_dir(TWO, trained["work_two"])
    assert sorted(p.name for p in out.iterdir()) == ["done.json", "model.pt", "noise.json",
                                                     "noise.npz"]
    run_dir = trained["work_two"] / "ray_results" / TWO.key
    snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    assert snap["current_report_index"] == 3 and snap["checkpoint_report_indices"] == [1, 2]
    kept = sorted(p.name for p in run_dir.glob("epoch_*"))
    assert kept == ["epoch_0001", "epoch_0002"]
    assert all([f.name for f in (run_dir / k).iterdir()] == ["state.pt"] for k in kept)
