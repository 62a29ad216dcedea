"""Noisy pre-training with Ray Train: outputs, noise records, reuse, concurrency, job lists that
share a trainer, fault recovery, streaming input, memorisation metrics, and the data-parallel
semantics of more than one worker.

Each Ray Train fit costs ~20 s of fixed start-up on a 2-core machine, so the slow tests share
one module fixture that starts four trainers at once on ``init_ray(num_cpus=2)``: a supervised
job, a CLIP job and a job with an unknown architecture through ``run_pretrain_jobs`` (two
trainers; the broken job fails before its fit), beside them (in threads) two supervised jobs
sharing one trainer whose worker is SIGKILLed after epoch 1 of each job, and a supervised job
on two workers (gloo) streaming its shards from JPEG files in an ImageNet layout, with the
real-corpus recipe (random-resized crops, warm-up, gradient accumulation). Workers take a
quarter or half of a CPU each so all four trainers fit together; every fit is a real
multi-process Ray Train run.
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
from support import imagenet_root_from_arrays

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

N = 1000  # training images per supervised job
SUP = PretrainJob(
    objective="supervised",
    corpus="fashion-mnist",
    arch="test_resnet",
    noise_kind="symmetric",
    noise_ratio=0.2,
    seed=0,
    epochs=3,
    batch_size=64,
    lr=2e-3,
    image_size=32,
    train_subset=N,
)
# Long enough to leave the InfoNCE plateau at log(batch): ~190 steps of 32 pairs.
N_CLIP = 2000
CLIP = PretrainJob(
    objective="clip",
    corpus="fashion-mnist",
    arch="nml-tiny-clip",
    noise_kind="swap",
    noise_ratio=0.3,
    seed=0,
    epochs=3,
    batch_size=32,
    lr=1e-3,
    image_size=32,
    train_subset=N_CLIP,
)
# One shared trainer, killed twice. FAULT_A is SUP itself (in another work dir): resumed after
# the kill, it must end bit for bit where SUP's uninterrupted run ends.
# FAULT_B also keeps its weights after epochs 1 and 2 (suite checkpoint_epochs: [1, 2, 3]); both
# are taken before its kill (after epoch index 1, i.e. two epochs) and must survive the resume.
FAULT_A, FAULT_B = SUP, replace(SUP, seed=2, snapshot_epochs=(1, 2))
BROKEN = replace(SUP, arch="no_such_arch_xyz")
# The streaming path: the same 1000 images as JPEG files, two workers, the real-corpus recipe.
# Another key (global batch 2 x 64 x 2): trained in a work dir of its own.
TWO = replace(
    SUP,
    corpus="imagenet",
    train_subset=None,
    workers=2,
    augment="crop_flip",
    crop_scale=(0.35, 1.0),
    warmup_epochs=0.5,
    grad_accum=2,
)
RUN_KW = {"cpus_per_worker": 0.5, "progress": False, "max_failures": 2}


# -- fast tests: no Ray ----------------------------------------------------------------------


def test_class_captions_are_seeded_and_name_the_class() -> None:
    labels = np.arange(200) % 4
    classes = ["t_shirt", "bag", "coat", "sandal"]
    a = class_captions(labels, classes, seed=3)
    assert a == class_captions(labels, classes, seed=3)
    assert a != class_captions(labels, classes, seed=4)
    names = [c.replace("_", " ") for c in classes]
    templates = [next(t for t in CAPTION_TEMPLATES if t.format(c=names[y]) == c) for c, y in zip(a, labels)]
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
    # uint8 rounding of the resized image: at most one grey level (2/255 after normalising), plus
    # 1e-6 for float32 round-off of the normalisation (values ~1: eps32 = 1.2e-7).
    assert (ours - ref).abs().max().item() <= 2 / 255 + 1e-6


def test_clip_training_set_swaps_exactly_the_requested_pairs() -> None:
    ts = build_training_set(replace(CLIP, train_subset=200))
    assert not hasattr(ts, "images")  # the driver holds labels and captions, never pixels
    rec, table = ts.record, ts.labels
    assert len(table) == 200 and int(rec["mismatched"].sum()) == 60 == ts.summary["num_mismatched"]
    assert ts.realised_ratio == pytest.approx(0.3)  # 60 / 200, float64
    # Each image trains with the caption of sample caption_source[i]: its own unless swapped,
    # and the swapped ones take each other's captions (a permutation of the mismatched set).
    source = rec["caption_source"]
    assert np.array_equal(table.targets, source) and np.array_equal(table.noisy, rec["mismatched"])
    assert np.array_equal(source != np.arange(200), rec["mismatched"])
    assert sorted(source[rec["mismatched"]]) == sorted(np.flatnonzero(rec["mismatched"]))
    assert np.array_equal(rec["clean_captions"][source], rec["captions"])
    assert np.array_equal(rec["caption_labels"], rec["clean_labels"][source])


def test_supervised_training_set_is_a_label_table() -> None:
    ts = build_training_set(SUP)
    assert not hasattr(ts, "images")
    assert ts.corpus.name == "fashion-mnist" and np.array_equal(ts.corpus.indices, ts.indices)
    assert np.array_equal(ts.labels.targets, ts.record["noisy_labels"])
    assert np.array_equal(ts.labels.noisy, ts.record["flipped"])
    assert np.array_equal(ts.labels.clean, ts.corpus.open().labels)
    assert int(ts.labels.noisy.sum()) == 200  # 20 % of each class's 100 labels


def test_decoded_files_match_the_feature_transform(image_root) -> None:
    """Without augmentation a streamed image is resized exactly as features are extracted."""
    from benchmark.backbones import make_transform
    from benchmark.data import get_dataset
    from benchmark.pretrain import decode_item

    split = get_dataset("imagenet", image_root).split("train")
    tf = make_transform(32, PRETRAIN_MEAN, PRETRAIN_STD)
    for i in (0, 517, 999):
        ours = preprocess(
            torch.from_numpy(decode_item(split, i, 32)).permute(2, 0, 1)[None], 32, PRETRAIN_MEAN, PRETRAIN_STD
        )[0]
        assert torch.allclose(ours, tf(split[i][0]), atol=1e-6)  # same uint8 pixels; float32 normalising: ~1e-7


def test_instance_noise_on_files_streams_thumbnails(image_root) -> None:
    """Instance-dependent noise needs per-sample features: on a corpus of files they are 8 px
    thumbnails decoded in a streaming pass (the driver never holds the images), whatever the
    number of loader processes."""
    from benchmark.data import get_dataset
    from benchmark.noise import flip_labels
    from benchmark.pretrain import decode_item, instance_features

    split = get_dataset("imagenet", image_root).split("train")
    feats = instance_features(split, 8, loader_workers=2)
    assert feats.shape == (N, 8 * 8 * 3) and feats.dtype == np.float32
    assert np.array_equal(feats, instance_features(split, 8, loader_workers=0))
    assert np.allclose(feats[517], decode_item(split, 517, 8).reshape(-1) / 255.0)  # float32 vs float64 of v/255
    job = replace(SUP, corpus="imagenet", data_root=str(image_root), train_subset=None, noise_kind="instance")
    ts = build_training_set(job)
    expect = flip_labels(split.labels, 10, 0.2, kind="instance", seed=0, features=feats)
    assert np.array_equal(ts.labels.targets, expect.noisy_labels)
    assert int(ts.labels.noisy.sum()) == 200
    symmetric = build_training_set(replace(job, noise_kind="symmetric"))
    assert not np.array_equal(ts.labels.noisy, symmetric.labels.noisy)


def test_crops_are_seeded_per_sample_not_per_loader(image_root) -> None:
    """crop_flip draws from (seed, epoch, sample): the same batches whatever the number of
    loader processes, new crops every epoch, and real crops (not the resized whole image)."""
    from benchmark.data import get_dataset
    from benchmark.pretrain import decode_item
    from benchmark.pretrain.inputs import make_input

    split = get_dataset("imagenet", image_root).split("train")
    cfg = {"image_size": 32, "augment": "crop_flip", "crop_scale": (0.2, 1.0), "seed": 5}
    shard = epoch_shard(len(split), 2, 1, seed=5, epoch=0)[:40]

    def batches(workers: int, epoch: int) -> list[torch.Tensor]:
        inp = make_input(split, {**cfg, "loader_workers": workers}, torch.device("cpu"))
        assert inp.kind == "stream"
        out = list(inp.batches(shard, 16, epoch))
        assert [len(p) for _, p in out] == [16, 16, 8]
        assert torch.equal(torch.cat([p for _, p in out]), shard)  # in shard order
        return [x for x, _ in out]

    inline, two = batches(0, 0), batches(2, 0)
    assert all(torch.equal(a, b) for a, b in zip(inline, two))
    assert not torch.equal(inline[0], batches(0, 1)[0])
    assert inline[0].shape == (16, 3, 32, 32) and inline[0].dtype == torch.uint8
    whole = torch.from_numpy(decode_item(split, int(shard[0]), 32)).permute(2, 0, 1)
    assert not torch.equal(inline[0][0], whole)


def test_memorisation_metrics_count_what_they_say() -> None:
    """Hand-made predictions: which flipped samples the model fits to the noisy label, which to
    the true one; for CLIP, where each image ranks its paired caption."""
    from benchmark.pretrain import epoch_metrics
    from benchmark.pretrain.recipe import clip_step, supervised_step

    pred = torch.tensor([0, 1, 1, 2, 0, 2, 2])
    clean = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    noisy = torch.tensor([0, 1, 2, 2, 0, 1, 1])  # samples 3 to 6 flipped
    flipped = noisy != clean
    logits = torch.nn.functional.one_hot(pred, 3).float() * 5
    _, sums = supervised_step(lambda x: logits, torch.zeros(7, 1), noisy, clean, flipped)
    m = epoch_metrics("supervised", sums.tolist())  # counts over n in float64: approx's 1e-6 is ample
    assert m["train_accuracy"] == pytest.approx(4 / 7)  # 0, 1, 3 and 4 agree with their label
    assert m["clean_accuracy"] == pytest.approx(3 / 7)  # 0, 1 and 5 are right
    assert m["unflipped_accuracy"] == pytest.approx(2 / 3)  # sample 2 is wrong
    assert m["noisy_fit"] == pytest.approx(2 / 4)  # 3 and 4 memorised their wrong label
    assert m["true_fit"] == pytest.approx(1 / 4)  # 5 kept its true class (6: neither)
    assert "noisy_fit" not in epoch_metrics(
        "supervised",
        supervised_step(lambda x: logits, torch.zeros(7, 1), clean, clean, torch.zeros(7, dtype=torch.bool))[
            1
        ].tolist(),
    )

    img = torch.eye(4)
    txt = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    mismatched = torch.tensor([False, True, True, False])
    loss, sums = clip_step((img, txt, torch.tensor(1.0)), mismatched, rank=0, world=1)
    c = epoch_metrics("clip", sums.tolist())
    # images 0 and 3 rank their own caption first; 1 and 2 second of four (rank 1 / 3)
    assert c["matched_rank"] == 0.0 and c["mismatched_rank"] == pytest.approx(1 / 3)
    assert c["train_accuracy"] == 0.5 and c["loss"] == pytest.approx(loss.item())  # float32 loss x n / n in float64


def test_schedule_warms_up_then_follows_the_cosine() -> None:
    from benchmark.pretrain import lr_factor

    model = torch.nn.Linear(2, 2)
    ref_opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=20)
    for step in range(20):  # no warm-up: the embedded recipe's schedule
        # A closed-form cosine vs torch's recursive update: ~eps64 per step, 20 steps.
        assert lr_factor(step, 20, 0) == pytest.approx(ref.get_last_lr()[0], abs=1e-12)
        ref_opt.step()
        ref.step()
    assert [lr_factor(s, 20, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 20, 4) == 1.0 and lr_factor(12, 20, 4) == pytest.approx(0.5)
    assert lr_factor(20, 20, 4) == pytest.approx(0.0, abs=1e-12)  # (1 + cos(pi)) / 2 in float64: ~1e-17


def test_small_jobs_share_trainers_balanced_by_work() -> None:
    from benchmark.pretrain import shares_trainer, trainer_lists

    sup = [replace(SUP, noise_ratio=r) for r in (0.0, 0.1, 0.2, 0.3, 0.4)]  # 3000 images each
    clip = [replace(CLIP, noise_ratio=r) for r in (0.0, 0.3)]  # 6000 images each
    big = replace(SUP, workers=2)
    gpu = replace(SUP, gpus_per_worker=1.0)
    assert not shares_trainer(big) and not shares_trainer(gpu) and shares_trainer(SUP)
    lists = trainer_lists([*sup, big, *clip, gpu], max_concurrent=2)
    assert lists[:2] == [[big], [gpu]]  # big jobs keep a trainer each
    small = lists[2:]
    assert len(small) == 2 and sorted(j.key for g in small for j in g) == sorted(j.key for j in [*sup, *clip])
    work = [sum(j.train_subset * j.epochs for j in g) for g in small]
    assert work == [15000, 12000]  # the two CLIP jobs apart, the five others around them
    assert all(g[0].objective == "clip" for g in small)
    assert trainer_lists(sup, 2, group_small=False) == [[j] for j in sup]


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
def image_root(tmp_path_factory) -> Path:
    """SUP's 1000 Fashion-MNIST images as JPEG files in ImageNet's layout (a data root)."""
    from benchmark.data import get_dataset

    root = tmp_path_factory.mktemp("data-root")
    images, labels = get_dataset("fashion-mnist").split("train").arrays()
    idx = subset_indices(len(labels), N, 0)
    imagenet_root_from_arrays(root, images[idx], labels[idx])
    return root


@pytest.fixture(scope="module")
def trained(ray_cluster, image_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("pretrain")
    work_fault = tmp_path_factory.mktemp("pretrain-fault")
    work_two = tmp_path_factory.mktemp("pretrain-two-workers")
    two_job = replace(TWO, data_root=str(image_root))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        fault = pool.submit(
            run_pretrain_jobs, [FAULT_A, FAULT_B], work_fault, max_concurrent=1, fault_kill_after_epoch=1, **RUN_KW
        )
        two = pool.submit(run_pretrain, two_job, work_two, **{**RUN_KW, "cpus_per_worker": 0.25})
        events: list[tuple[str, ...]] = []
        results = run_pretrain_jobs(
            [SUP, CLIP, BROKEN],
            work,
            max_concurrent=2,
            on_result=lambda r: events.append(("result", r.key)),
            on_slot_free=lambda: events.append(("slot free",)),
            **RUN_KW,
        )
        fault_results, two_result = fault.result(), two.result()
    return {
        "work": work,
        "sup": results[0],
        "clip": results[1],
        "broken": results[2],
        "events": events,
        "fault": fault_results,
        "work_fault": work_fault,
        "two": two_result,
        "two_job": two_job,
        "work_two": work_two,
        "seconds": time.perf_counter() - t0,
    }


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
    # Measured (Zen 1, seed 0 / seed 2): loss ratio 0.717 / 0.732, clean accuracy 0.762 / 0.747 on
    # 1,000 images, true fit 0.745 / 0.699, noisy fit 0.025 / 0.035. The bounds sit several seed-to-seed
    # spreads away; another CPU's round-off moves a run far less than another seed does.
    assert m[-1]["loss"] < 0.8 * m[0]["loss"]
    assert m[-1]["clean_accuracy"] > 0.45  # chance is 0.10
    # 20 % of the labels are wrong: the model agrees more with the truth than with them.
    assert m[-1]["clean_accuracy"] > m[-1]["train_accuracy"]
    assert all(e["images_per_s"] == pytest.approx(N / e["seconds"]) for e in m)  # every image once; same division
    assert all(e["input"] == "array" for e in m)  # the embedded corpus' in-memory fast path

    # Memorisation, per epoch, from the flipped mask that travels with the label table: the
    # 800 unflipped and 200 flipped samples split both accuracies exactly (counts; float64 ratios) ...
    for e in m:
        assert e["clean_accuracy"] * N == pytest.approx(e["unflipped_accuracy"] * 800 + e["true_fit"] * 200)
        assert e["train_accuracy"] * N == pytest.approx(e["unflipped_accuracy"] * 800 + e["noisy_fit"] * 200)
        assert e["noisy_fit"] + e["true_fit"] <= 1.0
    # ... and three short epochs fit the true class of a flipped sample far more often than its
    # noisy one: the early-learning phase before memorisation.
    assert m[-1]["true_fit"] > 0.4 and m[-1]["noisy_fit"] < 0.15

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
    import benchmark.pretrain.trainer as trainer

    def boom(*a, **k):
        raise AssertionError("a finished job must neither start Ray Train nor build its training set")

    monkeypatch.setattr(ray.train.torch, "TorchTrainer", boom)
    monkeypatch.setattr(trainer, "build_training_set", boom)  # nor rebuild its noisy label table
    monkeypatch.setattr(launch, "prepare", boom)
    r = run_pretrain(SUP, trained["work"], **RUN_KW)
    assert r.reused and r.metrics == trained["sup"].metrics  # exact: read back from the first run's done.json
    both = run_pretrain_jobs([SUP, SUP], trained["work"], **RUN_KW)
    assert [b.reused for b in both] == [True, True]


@pytest.mark.slow
def test_clip_job_saves_exact_caption_mismatches_and_learns(trained) -> None:
    from benchmark.backbones import create_backbone

    r = trained["clip"]
    assert r.ok, r.error
    rec = _npz(r.noise_path)
    assert int(rec["mismatched"].sum()) == round(0.3 * N_CLIP)
    assert float(rec["realised_ratio"]) == pytest.approx(0.3) == r.realised_ratio  # 600 / 2000
    changed = rec["captions"] != rec["clean_captions"]
    assert np.array_equal(changed, rec["mismatched"])
    info = json.loads(r.noise_path.with_suffix(".json").read_text())
    assert info["num_mismatched"] == round(0.3 * N_CLIP)
    m = r.metrics
    assert [e["epoch"] for e in m] == [0, 1, 2]
    # It learns: the contrastive loss falls from chance (log 32) and each image ranks its own
    # caption well above chance (normalised rank 0.5) among the batch's 32 captions ... Measured:
    # epoch-0 loss 3.461 (log 32 = 3.466; 0.2 allows the first epoch's own progress), final 3.109,
    # matched rank 0.16, mismatched 0.50: each bound leaves 2-3x the margin it asks for.
    assert m[0]["loss"] == pytest.approx(math.log(CLIP.batch_size), abs=0.2)
    assert m[-1]["loss"] < m[0]["loss"] - 0.1
    assert m[-1]["matched_rank"] < 0.35
    # ... while the swapped pairs it has not memorised yet stay near chance.
    assert m[-1]["mismatched_rank"] > m[-1]["matched_rank"] + 0.1
    bb = create_backbone({"family": "nmlbench", "checkpoint": str(r.checkpoint_path)})
    assert bb.checkpoint_meta["family"] == "open_clip" and bb.feature_dim == 64


@pytest.mark.slow
def test_failed_job_is_reported_without_losing_the_others(trained) -> None:
    b = trained["broken"]
    assert not b.ok and "no_such_arch_xyz" in b.error
    assert trained["sup"].ok and trained["clip"].ok


@pytest.mark.slow
def test_each_freed_trainer_slot_is_offered_after_its_results(trained) -> None:
    """[SUP, CLIP, BROKEN] on two slots are two trainer lists, none waiting: the first to end
    reports its jobs, then offers its slot while the other still trains (the runner extracts
    features there); the last end offers nothing, the stage is over."""
    events = trained["events"]
    assert sorted(e[1] for e in events if e[0] == "result") == sorted([SUP.key, CLIP.key, BROKEN.key])
    slot = events.index(("slot free",))
    assert events.count(("slot free",)) == 1 and 0 < slot < len(events) - 1


@pytest.mark.slow
def test_trainers_on_a_private_instance_start_no_preemption_watcher(trained) -> None:
    """A private local instance is one machine: Ray Train's preemption watcher (an actor process
    per trainer) has nothing to watch there, so ``init_ray`` switches it off; the trainers of
    the fixture ran (their controllers are in the actor table) without one."""
    import ray._private.state as state  # the GCS actor table; the state API needs a dashboard

    classes = [a["ActorClassName"] for a in state.actors().values()]
    assert classes.count("TrainController") >= 4
    assert "PreemptionWatcher" not in classes


_WORKERS_SCRIPT = """
import glob
import os
import time

from benchmark.ray_session import init_ray

def workers():  # Ray worker processes below this driver (their title is ray::IDLE, ray::<task>, ...)
    parent, title = {}, {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            pid = int(stat.split("/")[2])
            parent[pid] = int(open(stat).read().rsplit(")", 1)[1].split()[1])
            title[pid] = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")[0].decode()
        except (OSError, ValueError, IndexError):
            continue
    def below(pid):
        while pid in parent and pid > 1:
            pid = parent[pid]
            if pid == os.getpid():
                return True
        return False
    return [t for p, t in title.items() if below(p) and (t.startswith("ray::IDLE") or "default_worker" in t)]

init_ray(num_cpus=2)
time.sleep(3)
before = workers()
import ray
print("before", len(before), "task", ray.get(ray.remote(lambda: 7).remote()), flush=True)
"""


@pytest.mark.slow
def test_a_private_instance_starts_no_workers_ahead_of_demand() -> None:
    """Ray would start one idle worker per CPU for the first driver; in a suite that pre-trains
    none is used (Ray Train's actors get workers of their own), so a private instance starts
    workers on demand (``ray_session.LOCAL_SYSTEM_CONFIG``): none waits after the start, and
    the first task still gets one."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _WORKERS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "before 0 task 7" in out.stdout, out.stdout


def test_no_slot_is_offered_while_a_trainer_waits_to_start(ray_cluster, tmp_path) -> None:
    """Three one-job lists on two slots: the first list to end hands its slot to the third, the
    second offers its slot while the third runs, the last offers none. The jobs fail before Ray
    Train (unknown architecture), so the order is the launcher's alone."""
    broken = [replace(BROKEN, seed=s) for s in range(3)]
    events: list[str] = []
    results = run_pretrain_jobs(
        broken,
        tmp_path,
        max_concurrent=2,
        group_small=False,
        on_result=lambda r: events.append("result"),
        on_slot_free=lambda: events.append("slot free"),
        **RUN_KW,
    )
    assert all(not r.ok and "no_such_arch_xyz" in r.error for r in results)
    assert events == ["result", "result", "slot free", "result"]


@pytest.mark.slow
def test_jobs_sharing_a_trainer_resume_one_by_one_after_kills(trained) -> None:
    """Two small jobs run in turn in one trainer; its worker is killed after epoch 1 of each:
    the first restart resumes job A, the second skips finished A and resumes B."""
    from benchmark.pretrain.launch import trainer_name

    a, b = trained["fault"]
    assert a.ok and b.ok and not a.reused, (a.error, b.error)
    name = trainer_name([FAULT_A, FAULT_B])
    run_dir = trained["work_fault"] / "ray_results" / name
    # Both kills happened: one per job.
    assert (run_dir / "fault_injected_job00_after_epoch_1").is_file()
    assert (run_dir / "fault_injected_job01_after_epoch_1").is_file()
    for r in (a, b):
        assert [e["epoch"] for e in r.metrics] == [0, 1, 2]  # no epoch trained twice
        assert [e["resumed_from_epoch"] for e in r.metrics] == [-1, -1, 1]
        assert r.metrics[-1]["loss"] < r.metrics[0]["loss"]
        done = json.loads((job_dir(r.job, trained["work_fault"]) / "done.json").read_text())
        assert done["trainer"]["name"] == name and done["trainer"]["jobs"] == [FAULT_A.key, FAULT_B.key]
        assert done["ray_run_dir"] == str(run_dir)
    assert a.metrics[-1]["ranks"][0]["param_digest"] != b.metrics[-1]["ranks"][0]["param_digest"]

    # Resuming is exact, not close: A (= SUP) killed after epoch 1 and resumed from its checkpoint
    # has the uninterrupted run's losses, accuracies and parameters bit for bit (same machine,
    # one thread each, deterministic algorithms, RNG reseeded per epoch: benchmark.determinism).
    def numbers(e: dict) -> dict:
        return {k: v for k, v in e.items() if k not in ("seconds", "images_per_s", "resumed_from_epoch", "ranks")}

    sup = trained["sup"]
    assert [numbers(e) for e in a.metrics] == [numbers(e) for e in sup.metrics]
    assert [e["ranks"][0]["param_digest"] for e in a.metrics] == [e["ranks"][0]["param_digest"] for e in sup.metrics]
    from benchmark.backbones import load_pretrain_checkpoint

    resumed, straight = (load_pretrain_checkpoint(r.checkpoint_path)["state_dict"] for r in (a, sup))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    # One trainer for both jobs, and nothing else in that storage.
    assert [p.name for p in (trained["work_fault"] / "ray_results").iterdir()] == [name]


@pytest.mark.slow
def test_snapshots_are_the_weights_after_their_epochs_and_survive_a_resume(trained) -> None:
    """A job with ``snapshot_epochs`` writes ``model_epoch_XXXX.pt`` beside ``model.pt``: the
    parameters the run had after that epoch (its per-epoch digest says which), kept through the
    kill and resume; a snapshot of a finished job that went missing makes the job unusable."""
    from benchmark.backbones import load_pretrain_checkpoint
    from benchmark.pretrain.job import snapshot_file
    from benchmark.pretrain.launch import load_done
    from benchmark.pretrain.recipe import build_model

    b = trained["fault"][1]
    assert b.ok and b.job.snapshot_epochs == (1, 2), b.error
    out = job_dir(FAULT_B, trained["work_fault"])
    digests = [e["ranks"][0]["param_digest"] for e in b.metrics]
    assert len(set(digests)) == 3
    for epoch in (1, 2, 3):
        path = out / ("model.pt" if epoch == 3 else snapshot_file(epoch))
        ckpt = load_pretrain_checkpoint(path)
        assert ckpt["job"].get("epoch", 3) == epoch and ckpt["job"]["key"] == FAULT_B.key
        net, _ = build_model(
            {"objective": "supervised", "arch": "test_resnet", "num_classes": 10, "image_size": 32, "seed": 0}
        )
        net.load_state_dict(ckpt["state_dict"])
        assert param_digest(net) == digests[epoch - 1], epoch
    assert load_done(FAULT_B, trained["work_fault"]) is not None
    assert load_done(replace(FAULT_B, snapshot_epochs=()), trained["work_fault"]) is None  # other key
    moved = out / "moved.pt"
    (out / snapshot_file(1)).rename(moved)
    try:
        assert load_done(FAULT_B, trained["work_fault"]) is None  # trains again rather than fail later
    finally:
        moved.rename(out / snapshot_file(1))


@pytest.mark.slow
def test_two_workers_stream_disjoint_shards_and_average_their_gradients(trained) -> None:
    """Two workers read their own shards of JPEG files; ``batch_size`` is per worker and
    micro-batch; DDP keeps the replicas equal; the noise does not depend on the worker count;
    one checkpoint per epoch."""
    from benchmark.backbones import load_pretrain_checkpoint
    from benchmark.backbones.timm_family import build_timm_module

    r, one, job = trained["two"], trained["sup"], trained["two_job"]
    assert r.ok and not r.reused, r.error
    assert TWO.key != replace(TWO, workers=1).key  # the worker count changes the global batch
    per_worker = N // 2
    micro = math.ceil(per_worker / SUP.batch_size)  # 8 micro-batches, 2 per optimiser step
    assert [e["epoch"] for e in r.metrics] == [0, 1, 2]
    for e in r.metrics:
        assert e["input"] == "stream"  # decoded from the files by each worker's loader
        assert e["workers"] == 2 and e["grad_accum"] == 2
        assert e["batch_per_worker"] == SUP.batch_size
        assert e["global_batch"] == 2 * 2 * SUP.batch_size == job.global_batch
        assert e["steps_per_epoch"] == math.ceil(micro / 2) == 4
        ranks = e["ranks"]
        assert [x["rank"] for x in ranks] == [0, 1]
        assert [x["images"] for x in ranks] == [per_worker, per_worker]
        # The two shards are disjoint and together are the (equal-sharded) corpus.
        shards = sum(int(x["index_digest"], 16) for x in ranks) % 2**64
        assert shards == index_digest(np.arange(2 * per_worker))
        # Gradients are all-reduced: both replicas hold the same parameters after every
        # epoch. Workers training alone on their own shards would drift apart at step one.
        assert ranks[0]["param_digest"] == ranks[1]["param_digest"]
        assert all(x["loader_peak_rss_mb"] > 0 for x in ranks)  # loader processes did decode
    assert len({e["ranks"][0]["index_digest"] for e in r.metrics}) == 3  # reshuffled each epoch
    assert len({e["ranks"][0]["param_digest"] for e in r.metrics}) == 3  # and it does train
    assert r.metrics[-1]["loss"] < r.metrics[0]["loss"]
    assert all(
        (e["workers"], e["batch_per_worker"], e["global_batch"], e["steps_per_epoch"])
        == (1, SUP.batch_size, SUP.batch_size, math.ceil(N / SUP.batch_size))
        for e in one.metrics
    )

    # The noisy labels do not depend on the worker count: the driver draws them on the label
    # table alone, exactly as for a one-worker job on the same files.
    two_rec = _npz(r.noise_path)
    one_rec = build_training_set(replace(job, workers=1)).record
    assert two_rec.keys() == one_rec.keys()
    assert all(np.array_equal(two_rec[k], one_rec[k]) for k in one_rec)
    assert int(two_rec["flipped"].sum()) == 200

    # model.pt holds the replicas' final parameters.
    ckpt = load_pretrain_checkpoint(r.checkpoint_path)
    module = build_timm_module(ckpt["arch"], ckpt["model_cfg"])
    module.load_state_dict(ckpt["state_dict"])
    assert param_digest(module) == r.metrics[-1]["ranks"][0]["param_digest"]

    # One report per epoch, each carrying one checkpoint (rank 0's); Ray keeps the last two.
    out = job_dir(job, trained["work_two"])
    assert sorted(p.name for p in out.iterdir()) == ["done.json", "model.pt", "noise.json", "noise.npz"]
    run_dir = trained["work_two"] / "ray_results" / job.key
    snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    assert snap["current_report_index"] == 3 and snap["checkpoint_report_indices"] == [1, 2]
    kept = sorted(p.name for p in run_dir.glob("epoch_*"))
    assert kept == ["epoch_0001", "epoch_0002"]
    assert all([f.name for f in (run_dir / k).iterdir()] == ["state.pt"] for k in kept)


@pytest.mark.slow
def test_progress_counts_every_epoch_of_every_job(ray_cluster, tmp_path, capfd) -> None:
    """With ``progress`` the stage shows one bar of finished epochs over all its jobs (two
    small jobs of 2 epochs sharing one trainer: 4 epochs), as the features and heads stages do;
    without it, no bar."""
    jobs = [replace(SUP, train_subset=128, epochs=2, seed=s) for s in (5, 6)]
    results = run_pretrain_jobs(jobs, tmp_path, max_concurrent=1, **{**RUN_KW, "progress": True})
    assert all(r.ok for r in results)
    err = capfd.readouterr().err
    assert "pre-training: 100%" in err and "4/4" in err, err[-2000:]
    again = run_pretrain_jobs(jobs, tmp_path, max_concurrent=1, **{**RUN_KW, "progress": True})
    assert all(r.reused for r in again)
    assert "pre-training" not in capfd.readouterr().err  # nothing left to train: no bar
