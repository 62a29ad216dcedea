"""Feature extraction through the features stage's Ray task vs a plain loop over the same splits.

Setup: the quick suite's six tasks (its rows, from ``benchmark.plan``) under one backbone, timm
``test_resnet`` (random init, 32 px, the quick suite's model size): 14,000-odd images over the
distinct splits. The plain loop builds the backbone in this process and runs ``extract_features``
over each distinct split, one thread. The Ray side is what the runner does: one task per backbone
(``extraction.extract_backbone``, one returned object per pair, a fresh on-disk cache), timed from
submission until every pair's payload is in the object store; it pays for a worker, its imports,
the data sets and the cache writes. Rounds alternate the two sides; the first Ray round may start
a worker process, later ones may reuse it, and both are reported. Both sides encode the same
images to the same features (asserted), so the ratio compares machinery, not work.
"""

from __future__ import annotations

import tempfile

import benchutil
import numpy as np
import torch

from benchmark.backbones import create_backbone
from benchmark.config import load_suite
from benchmark.extraction import extract_backbone, resolve_split
from benchmark.features import extract_features
from benchmark.plan import frozen_backbone, make_plan

ROUNDS = 3
TARGET = 0.8
BACKBONE = {"family": "timm", "arch": "test_resnet", "seed": 0, "image_size": 32, "name": "test_resnet"}


def _pairs():
    suite = load_suite(benchutil.REPO_ROOT / "suites" / "quick.yaml")
    plan = make_plan(suite)
    from benchmark.config.schema import FrozenBackbone

    backbone = frozen_backbone(FrozenBackbone(**BACKBONE))
    return [type(p)(p.key, backbone, p.task, ()) for p in plan.pairs if p.backbone.key == plan.pairs[0].backbone.key]


def test_extraction_ray_task_vs_plain_loop(benchmark, local_ray, one_thread):
    import ray

    pairs = _pairs()
    refs = {}
    for p in pairs:
        for ref in (p.task.train, p.task.val, *(r for _, r in p.task.tests)):
            refs[ref.fingerprint()] = ref
    n_images = sum(len(resolve_split(r, None)) for r in refs.values())
    sw = benchutil.Stopwatch()
    state: dict = {}

    def plain_loop() -> dict:
        backbone = create_backbone({k: v for k, v in BACKBONE.items() if k != "name"})
        return {fp: extract_features(backbone, resolve_split(r, None), device="cpu").x for fp, r in refs.items()}

    def ray_task() -> list:
        with tempfile.TemporaryDirectory(prefix="bench-extract-") as cache:
            remote = ray.remote(num_cpus=1, max_retries=0)(extract_backbone)
            out = remote.options(num_returns=len(pairs)).remote(pairs, cache, None, False)
            ray.wait(list(out), num_returns=len(out))
            return ray.get(list(out))

    def setup() -> None:
        state["plain"] = sw.timed("plain_loop", plain_loop)

    def ours() -> None:
        with sw("ray_task"):
            state["ray"] = ray_task()

    benchmark.pedantic(ours, setup=setup, rounds=ROUNDS, iterations=1)

    # Same images, same features: the first pair's training rows from both sides.
    first = pairs[0].task.train.fingerprint()
    assert np.array_equal(state["ray"][0].train[0], state["plain"][first].numpy())
    t_plain, t_ray = sw.median("plain_loop"), sw.median("ray_task")
    ratio = (n_images / t_ray) / (n_images / t_plain)
    benchutil.record(
        benchmark,
        "extraction_ray_vs_plain_loop",
        ratio=ratio,
        target=TARGET,
        times_s=sw.times,
        what=f"images/s of the features stage's Ray task (one per backbone, {len(pairs)} pairs) / a plain "
        f"in-process loop over the same {len(refs)} splits ({n_images} images), timm test_resnet 32 px, 1 thread",
        images=n_images,
        pairs=len(pairs),
        splits=len(refs),
        ratio_first_round=(t_plain and sw.times["plain_loop"][0]) / sw.times["ray_task"][0],
        images_per_s_plain=n_images / t_plain,
        images_per_s_ray=n_images / t_ray,
        torch_threads=torch.get_num_threads(),
    )
