"""Measurement 9: the quick suite's pre-training stage, one trainer per job vs job lists.

The quick suite trains 7 small jobs (five supervised ``test_resnet`` jobs of 2 epochs, two tiny
CLIP jobs of 3 epochs, 10,000 Fashion-MNIST images each). Each Ray Train fit pays ~17-20 s of
worker-group start-up on this machine, against ~8 s of training for a supervised job. Both sides
run ``run_pretrain_jobs`` on the suite's own jobs with the runner's concurrency (2), each in a
fresh work dir: one trainer per job (``group_small=False``, the design before) and the small jobs
as two job lists sharing a trainer each (the default). Same jobs, same results (asserted: every
job trains its epochs; the losses agree, as the per-job seeds fix the data order and the init).
"""

from __future__ import annotations

import tempfile

import benchutil

from benchmark.config import load_suite
from benchmark.plan import pretrain_jobs
from benchmark.pretrain import run_pretrain_jobs


def test_quick_pretrain_stage_one_trainer_per_job_vs_job_lists(benchmark, local_ray):
    jobs = pretrain_jobs(load_suite(benchutil.REPO_ROOT / "suites" / "quick.yaml"))
    sw = benchutil.Stopwatch()
    results: dict[str, list] = {}

    def run(side: str, group_small: bool) -> None:
        with tempfile.TemporaryDirectory(prefix=f"bench-stage-{side}-") as work:
            results[side] = sw.timed(
                side, run_pretrain_jobs, jobs, work, max_concurrent=2, group_small=group_small, progress=False
            )

    benchmark.pedantic(
        lambda: run("job_lists", True), setup=lambda: run("one_trainer_per_job", False), rounds=1, iterations=1
    )
    for side, rs in results.items():
        assert all(r.ok and not r.reused for r in rs), (side, [r.error for r in rs])
        assert [len(r.metrics) for r in rs] == [j.epochs for j in jobs]
    for a, b in zip(results["one_trainer_per_job"], results["job_lists"]):
        assert [round(m["loss"], 2) for m in a.metrics] == [round(m["loss"], 2) for m in b.metrics]
    before, after = sw.times["one_trainer_per_job"][0], sw.times["job_lists"][0]
    steps = {side: sum(m["seconds"] for r in rs for m in r.metrics) for side, rs in results.items()}
    benchutil.record(
        benchmark,
        "quick_pretrain_stage_job_lists",
        ratio=before / after,
        target=1.3,
        times_s=sw.times,
        what="wall time of the quick suite's pre-training stage (7 jobs, 2 at a time): one Ray Train trainer "
        "per job / small jobs sharing two trainers",
        trainers={"one_trainer_per_job": len(jobs), "job_lists": 2},
        step_seconds=steps,
        params={"jobs": len(jobs), "max_concurrent": 2, "cpus_per_worker": 1.0},
    )
