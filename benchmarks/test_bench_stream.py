"""Measurements 6-8: pre-training that streams a corpus of image files.

Corpus: Fashion-MNIST images upscaled to 128 px JPEG files in ImageNet's layout (a data root in
a temp dir); training at 64 px with random-resized crops and flips, ``test_resnet``, batch 64,
one Ray Train worker holding one CPU plus one decoding process, on a 2-core machine.

6. **The input design** (the measurement that chose it): images/s one Ray Train worker receives
   from (a) Ray Data (``read_binary_files`` -> ``map_batches`` decode + crop, consumed with
   ``get_dataset_shard().iter_torch_batches``; its tasks get the CPU the worker leaves) and (b)
   a per-worker PyTorch ``DataLoader`` over the worker's shard (``benchmark.pretrain.inputs``,
   one loader process). Same decode-and-crop function per image, no model: input alone.
7. **Streaming Ray Train vs a plain PyTorch loop over the same files** (steady-state images/s of
   the training steps, target >= 0.8): ``run_pretrain`` vs ``plainloop.train_plain_files``
   (torchvision ``ImageFolder`` + ``RandomResizedCrop`` + flip + ``DataLoader``).
8. **Memory stays flat when the corpus grows 4x** (target: peak ratio <= 1.1): the driver's and
   each worker's peak resident memory for 4,000 and 16,000 images at the same size, each driver
   a fresh process with its own Ray. (Decoding the corpus in the driver, as before streaming,
   would add 47 and 188 MB there, and as much again in the object store.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import benchutil
import numpy as np
import plainloop
import pytest
from support import imagenet_root_from_arrays

from benchmark.pretrain import PretrainJob, run_pretrain

SIZE, TRAIN_SIZE, BATCH = 128, 64, 64
JOB = PretrainJob(
    objective="supervised",
    corpus="imagenet",
    arch="test_resnet",
    noise_ratio=0.2,
    seed=0,
    epochs=3,
    batch_size=BATCH,
    lr=2e-3,
    image_size=TRAIN_SIZE,
    augment="crop_flip",
    crop_scale=(0.25, 1.0),
    loader_workers=1,
)


def _corpus(root: Path, n: int) -> Path:
    """``n`` Fashion-MNIST images, colour-tinted per class, as SIZE-px JPEGs in ImageNet's layout."""
    from benchmark.data import get_dataset

    images, labels = get_dataset("fashion-mnist").split("train").arrays()
    tint = np.random.default_rng(0).uniform(0.4, 1.0, size=(10, 3))
    rgb = (images[:n, :, :, None] * tint[labels[:n]][:, None, None, :]).astype(np.uint8)
    imagenet_root_from_arrays(root, rgb, labels[:n], size=SIZE)
    return root


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    return _corpus(tmp_path_factory.mktemp("stream-corpus"), 1000)


# -- 6: Ray Data vs per-worker DataLoader --------------------------------------------------------
class _Blobs:
    """The encoded images of one Ray Data batch, shaped like a split for ``decode_item``."""

    indices = None

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs

    def image_bytes(self, i: int) -> bytes:
        return self.blobs[i]


def _decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from benchmark.pretrain import decode_item

    blobs = _Blobs(list(batch["bytes"]))
    out = [
        decode_item(blobs, i, TRAIN_SIZE, "crop_flip", JOB.crop_scale, np.random.default_rng([0, i]))
        for i in range(len(blobs.blobs))
    ]
    return {"image": np.stack(out)}


def _consume_ray_data(cfg: dict) -> None:
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    history = []
    for epoch in range(cfg["epochs"]):
        n, t0 = 0, time.perf_counter()
        for batch in shard.iter_torch_batches(batch_size=BATCH, device="cpu"):
            n += len(batch["image"])
        history.append({"epoch": epoch, "images": n, "seconds": time.perf_counter() - t0})
    Path(cfg["out"]).write_text(json.dumps(history))  # Result.metrics needs a checkpoint; a file does not


def _consume_loader(cfg: dict) -> None:
    import torch

    from benchmark.data import get_dataset
    from benchmark.pretrain import epoch_shard
    from benchmark.pretrain.inputs import make_input

    split = get_dataset("imagenet", cfg["root"]).split("train")
    inp = make_input(
        split,
        {
            "image_size": TRAIN_SIZE,
            "augment": "crop_flip",
            "crop_scale": JOB.crop_scale,
            "seed": 0,
            "loader_workers": 1,
        },
        torch.device("cpu"),
    )
    history = []
    for epoch in range(cfg["epochs"]):
        n, t0 = 0, time.perf_counter()
        for x, _ in inp.batches(epoch_shard(len(split), 1, 0, 0, epoch), BATCH, epoch):
            n += len(x)
        history.append({"epoch": epoch, "images": n, "seconds": time.perf_counter() - t0})
    Path(cfg["out"]).write_text(json.dumps(history))  # Result.metrics needs a checkpoint; a file does not


def _fit_history(loop, config: dict, datasets: dict | None = None) -> list[dict]:
    import ray.cloudpickle
    import ray.train
    from ray.train.torch import TorchTrainer

    # The loops and the decode function live here, in a module Ray's workers cannot import.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    with tempfile.TemporaryDirectory(prefix="bench-input-") as storage:
        config = {**config, "out": str(Path(storage) / "history.json")}
        trainer = TorchTrainer(
            loop,
            train_loop_config=config,
            datasets=datasets,
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(storage_path=storage),
        )
        result = trainer.fit()
        assert result.error is None, result.error
        return json.loads((Path(storage) / "history.json").read_text())


def test_input_ray_data_vs_worker_dataloader(benchmark, local_ray, corpus_root):
    import ray

    files = sorted(str(p) for p in (corpus_root / "imagenet" / "train").glob("*/*.JPEG"))
    epochs = 3

    def ray_data() -> list[dict]:
        ds = ray.data.read_binary_files(files).map_batches(_decode_batch, batch_size=BATCH, batch_format="numpy")
        return _fit_history(_consume_ray_data, {"epochs": epochs}, {"train": ds})

    loader_runs, data_runs = [], []
    benchmark.pedantic(
        lambda: loader_runs.append(_fit_history(_consume_loader, {"epochs": epochs, "root": str(corpus_root)})),
        rounds=1,
        iterations=1,
    )
    data_runs.append(ray_data())

    def steady(hist: list[dict]) -> float:  # epochs after the first: workers and caches warm
        rest = hist[1:]
        assert all(h["images"] == len(files) for h in hist)
        return sum(h["images"] for h in rest) / sum(h["seconds"] for h in rest)

    loader, data = steady(loader_runs[0]), steady(data_runs[0])
    benchutil.record(
        benchmark,
        "input_ray_data_vs_dataloader",
        ratio=loader / data,
        target=1.0,
        times_s={
            "loader_epoch_seconds": [h["seconds"] for h in loader_runs[0]],
            "ray_data_epoch_seconds": [h["seconds"] for h in data_runs[0]],
        },
        what="images/s one Ray Train worker receives: per-worker DataLoader (1 loader process) / Ray Data "
        "(read_binary_files + map_batches decode, get_dataset_shard); same decode-and-crop per image",
        images_per_s_dataloader=loader,
        images_per_s_ray_data=data,
        params={
            "images": len(files),
            "file_px": SIZE,
            "train_px": TRAIN_SIZE,
            "batch": BATCH,
            "epochs": epochs,
            "cluster_cpus": 2,
            "worker_cpus": 1,
        },
    )


# -- 7: streaming Ray Train vs a plain loop over the same files -----------------------------------
def test_streaming_ray_train_vs_plain_loop(benchmark, local_ray, corpus_root):
    sw = benchutil.Stopwatch()
    job = replace(JOB, data_root=str(corpus_root))
    folder = corpus_root / "imagenet" / "train"
    plain: list[dict] = []
    ours: list = []

    def run_plain() -> None:
        plain.append(sw.timed("plain", plainloop.train_plain_files, job, folder, loader_workers=1))

    def run_ours() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-stream-") as work:
            ours.append(sw.timed("ray_train", run_pretrain, job, work, progress=False, cpus_per_worker=1.0))

    benchmark.pedantic(run_ours, setup=run_plain, rounds=1, iterations=1)
    run_plain()
    r = ours[0]
    assert r.ok and all(m["input"] == "stream" for m in r.metrics)

    def steady(hist: list[dict]) -> float:
        rest = hist[1:]
        return sum(h["images_per_s"] * h["seconds"] for h in rest) / sum(h["seconds"] for h in rest)

    ray_ips = steady(r.metrics)
    plain_ips = benchutil.median([steady(p["metrics"]) for p in plain])
    benchutil.record(
        benchmark,
        "streaming_ray_train_vs_plain_loop",
        ratio=ray_ips / plain_ips,
        target=0.8,
        times_s={
            **sw.times,
            "ray_epoch_seconds": [m["seconds"] for m in r.metrics],
            "plain_epoch_seconds": [[m["seconds"] for m in p["metrics"]] for p in plain],
        },
        what="steady-state training images/s (epochs 2+) of Ray Train streaming JPEG files (1 worker, 1 loader "
        "process) / a plain PyTorch loop (ImageFolder + RandomResizedCrop + flip, 1 loader process)",
        images_per_s_ray=ray_ips,
        images_per_s_plain=plain_ips,
        params={
            "images": plain[0]["images"],
            "file_px": SIZE,
            "train_px": TRAIN_SIZE,
            "batch": BATCH,
            "epochs": JOB.epochs,
            "arch": JOB.arch,
            "threads": 1,
            "loader_workers": 1,
        },
    )


# -- 8: memory when the corpus grows 4x -----------------------------------------------------------
_DRIVER = textwrap.dedent("""
    import json, sys, tempfile
    from benchmark.pretrain import PretrainJob, run_pretrain
    from benchmark.pretrain.inputs import peak_rss_mb
    from benchmark.ray_session import init_ray
    init_ray(num_cpus=2)
    before = peak_rss_mb()
    job = PretrainJob(**json.loads(sys.argv[1]))
    with tempfile.TemporaryDirectory() as work:
        r = run_pretrain(job, work, progress=False, cpus_per_worker=1.0)
    assert r.ok, r.error
    ranks = r.metrics[-1]["ranks"]
    print("RESULT " + json.dumps({"driver_peak_mb": peak_rss_mb(), "driver_before_mb": before,
                                  "ranks": ranks, "images": ranks[0]["images"]}))
""")


def _measure(root: Path) -> dict:
    fields = asdict(JOB)
    fields.update(data_root=str(root), epochs=1, crop_scale=list(JOB.crop_scale))
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER, json.dumps(fields)],
        cwd=benchutil.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


SMALL, LARGE = 4000, 16000  # large enough that a decoded corpus would show: +147 MB at 64 px


def test_memory_flat_when_the_corpus_grows(benchmark, tmp_path):
    small, large = _corpus(tmp_path / "n1", SMALL), _corpus(tmp_path / "n4", LARGE)
    runs: dict[str, dict] = {}
    benchmark.pedantic(lambda: runs.update(small=_measure(small)), rounds=1, iterations=1)
    runs["large"] = _measure(large)
    s, big = runs["small"], runs["large"]
    assert (s["images"], big["images"]) == (SMALL, LARGE)
    worker = big["ranks"][0]["peak_rss_mb"] / s["ranks"][0]["peak_rss_mb"]
    loader = big["ranks"][0]["loader_peak_rss_mb"] / s["ranks"][0]["loader_peak_rss_mb"]
    driver = big["driver_peak_mb"] / s["driver_peak_mb"]
    benchutil.record(
        benchmark,
        "memory_flat_when_corpus_grows",
        ratio=max(worker, loader, driver),
        target=1.1,
        higher_is_better=False,
        times_s={},
        what="peak resident memory with 4x the images / with 1x, same image size: the largest of the driver's, "
        "the Ray Train worker's and its loader process's ratios",
        driver_ratio=driver,
        worker_ratio=worker,
        loader_ratio=loader,
        runs=runs,
        # What the driver held before streaming: the corpus decoded to uint8 at the training size.
        uint8_corpus_mb_before_streaming={
            "1x": SMALL * 3 * TRAIN_SIZE**2 / 2**20,
            "4x": LARGE * 3 * TRAIN_SIZE**2 / 2**20,
        },
        params={"images": [SMALL, LARGE], "file_px": SIZE, "train_px": TRAIN_SIZE, "epochs": 1},
    )
