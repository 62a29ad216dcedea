"""Session fixtures shared by test modules.

``pipeline_run``: a tiny suite (``support.pipeline_suite``) run once per session through the real
runner (``benchmark.runner.run_suite``): plan -> features (a Ray task) -> heads (Ray Tune trials)
-> a sqlite MLflow store. Its data root is a miniature ImageNet with V2, Sketch, A and R in their
real layouts (``support.write_imagenet_root``); the backbone is a frozen random-init timm model,
so nothing is pre-trained. Tests read what the run left: the store, the feature cache, the work
dir, and the plan it executed. Ray is shut down before the first test runs, so tests that need
Ray start their own through ``benchmark.ray_session.init_ray``.

``published_study``: one real MLflow store holding a small published synthetic study. The store is
written through ``Tracker`` exactly as a sweep writes it (fits, pre-trainings with per-epoch
curves and noise records, spectra), then ``finish()`` publishes the leaderboard runs and the
suite run's artifacts. Tests that only read it share it; tests that change a store build their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import (
    PIPELINE_COUNTS,
    PIPELINE_WNIDS,
    Study,
    build_study,
    pipeline_pixels,
    pipeline_suite,
    run_suite_locally,
    write_imagenet_root,
)


@dataclass(frozen=True)
class PipelineRun:
    """What the session's pipeline run left behind, and how to read it back."""

    suite_path: Path  # the suite file (CLI commands take it)
    suite: Any  # benchmark.config.Suite, as loaded from suite_path
    plan: Any  # benchmark.plan.Plan that run_suite executed (plans are pure: same suite, same plan)
    data_root: Path
    work_dir: Path
    uri: str  # MLflow tracking URI (also the suite's tracking.uri)
    experiment: str
    summary: Any  # benchmark.runner.SuiteRun
    log: list[str] = field(default_factory=list)  # the runner's progress lines

    def frame(self, kind: str = "fit") -> Any:
        """Finished runs of ``kind`` read back from the store, read-only (``TrackingReader.runs_frame``)."""
        from benchmark.tracking import TrackingReader

        return TrackingReader(self.uri, self.experiment).runs_frame(kind)

    def task(self, name: str) -> Any:
        return next(t for t in self.plan.tasks if t.name == name)

    def pair(self, task: str) -> Any:
        return next(p for p in self.plan.pairs if p.task.name == task)

    def payload(self, task: str) -> Any:
        """The features the run's fits on ``task`` read, through the features stage's own code
        (``extraction.extract_payload``) served from the run's cache."""
        from benchmark.extraction import extract_payload

        return extract_payload(
            self.pair(task), str(self.work_dir / "features"), str(self.data_root), self.plan.normalize_features
        )


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    from benchmark.config import load_suite
    from benchmark.plan import make_plan

    root = tmp_path_factory.mktemp("pipeline")
    write_imagenet_root(root / "data", PIPELINE_WNIDS, PIPELINE_COUNTS, pipeline_pixels)
    data = pipeline_suite(root)
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    suite = load_suite(path)
    summary, log = run_suite_locally(suite)
    return PipelineRun(
        path,
        suite,
        make_plan(suite),
        Path(data["data_root"]),
        Path(data["work_dir"]),
        data["tracking"]["uri"],
        data["tracking"]["experiment"],
        summary,
        log,
    )


# -- a published synthetic study ------------------------------------------------------------
@pytest.fixture(scope="session")
def study(tmp_path_factory) -> Study:
    """A published study shared by tests that only read it (do not write to it)."""
    return build_study(tmp_path_factory.mktemp("study"))


@pytest.fixture
def one_torch_thread():
    """torch on one thread for a test, restored after: the CI box has 2 shared cores, and one thread
    fixes how reductions split, which the bit-identical (batched == lone) asserts need."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
