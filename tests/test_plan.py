"""The plan: a suite expands into keyed jobs, rows and fits exactly as documented, purely.

What runs is what the plan says, so these tests pin the plan: the shipped quick suite's grid,
the rows the tested samplers choose (validation disjoint from training, few-shot counts per
class), keys that change with everything that changes a result, trial batching, and the
``nmlbench plan`` listing, which must start no Ray and write nothing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from benchmark.config import load_suite, validate_suite
from benchmark.errors import ConfigError
from benchmark.heads import resolve_hparams
from benchmark.plan import (
    FitSpec,
    fit_key,
    head_grid,
    make_plan,
    pretrain_jobs,
)
from benchmark.plan_status import plan_status
from benchmark.pretrain.job import job_dir
from benchmark.trials import largest_trials_first, plan_trials

SUITES = Path(__file__).resolve().parents[1] / "suites"


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


@pytest.fixture(scope="module")
def quick():
    return make_plan(load_suite(SUITES / "quick.yaml"))


def test_quick_suite_expands_to_the_documented_grid(quick):
    s = load_suite(SUITES / "quick.yaml", check_names=False)
    jobs = pretrain_jobs(s)
    sup = [j for j in jobs if j.objective == "supervised"]
    clip = [j for j in jobs if j.objective == "clip"]
    assert [j.noise_ratio for j in sup] == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert {(j.arch, j.corpus, j.noise_kind, j.seed, j.epochs, j.train_subset, j.image_size) for j in sup} == {
        ("test_resnet", "fashion-mnist", "symmetric", 0, 2, 10000, 32)
    }
    assert [(j.arch, j.noise_kind, j.noise_ratio) for j in clip] == [
        ("nml-tiny-clip", "swap", 0.0),
        ("nml-tiny-clip", "swap", 0.3),
    ]
    assert all(j.corpus == "fashion-mnist" for j in clip)
    assert [(t.name, t.kind) for t in quick.tasks] == [
        ("fashion-mnist", "id"),
        ("mnist-5k", "id"),
        ("animal-mnist", "id"),
        ("sklearn-digits", "id"),
        ("digits-from-mnist", "ood"),
        ("digits-from-fonts", "ood"),
    ]
    grid = head_grid(s)
    assert [sum(h.head == m for h in grid) for m in ("lp", "mlp", "nmtune")] == [1, 3, 6]
    nm = [h for h in grid if h.head == "nmtune"][0]
    assert (nm.lam, nm.lr, nm.depth, nm.preset, nm.w_cov, nm.epochs, nm.batch_size) == (
        0.01,
        0.001,
        1,
        "paper",
        1.0,
        30,
        128,
    )
    assert all(
        h.epochs == 30 and h.batch_size == 128 and h.epoch_selection == "best_val" for h in grid if h.head != "lp"
    )
    assert len({h.batch_key() for h in grid if h.head != "lp"}) == 1  # MLP and NMTune: one batch per pair
    d = s.downstream
    assert (d.max_train, d.seeds, d.fractions) == (2000, [0], [1.0])
    assert (s.selection.split, s.selection.val_fraction) == ("val", 0.2)
    assert len(quick.pretrain) == 7 and len(quick.pairs) == 7 * 6
    assert len(quick.fits) == 7 * 6 * 10
    assert len({f.key for f in quick.fits}) == len(quick.fits)


def test_planning_imports_neither_ray_nor_mlflow():
    code = (
        "import sys; from benchmark.config import load_suite; from benchmark.plan import make_plan; "
        f"p = make_plan(load_suite({str(SUITES / 'quick.yaml')!r})); "
        "print(len(p.fits), 'ray' in sys.modules, 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["420", "False", "False"]


def test_rows_come_from_the_tested_samplers(quick):
    from benchmark.data import get_dataset

    for task in quick.tasks:
        labels = get_dataset(task.train.dataset).split("train").labels
        tr, va = np.asarray(task.train.indices), np.asarray(task.val.indices)
        assert not set(tr) & set(va), task.name  # validation never overlaps training
        assert all(ref.split == "test" and ref.indices is None for _, ref in task.tests)
        assert list(task.train_labels) == labels[tr].tolist()
        # max_train 2000: each class keeps round-half-up(2000 / n of it); validation 20 % of those
        n = len(labels)
        for c in np.unique(labels):
            n_c = int((labels == c).sum())
            kept = n_c if n <= 2000 else max(1, _half_up(2000 / n * n_c))
            held = min(_half_up(0.2 * kept), kept - 1)
            assert int((labels[va] == c).sum()) == held, (task.name, c)
            assert int((labels[tr] == c).sum()) == kept - held, (task.name, c)


def test_few_shot_fractions_take_the_documented_rows_per_class(tmp_path):
    data = {
        "name": "fs",
        "work_dir": str(tmp_path),
        "backbones": [{"family": "timm", "arch": "test_resnet", "image_size": 28, "seed": 0}],
        "downstream": {"id": ["sklearn-digits"], "heads": ["lp"], "seeds": [0, 1], "fractions": [0.1, 0.5, 1.0]},
    }
    plan = make_plan(validate_suite(data))
    [task] = plan.tasks
    labels = np.asarray(task.train_labels)
    rows = {(f.head_seed, f.fraction): f.train_rows for f in plan.fits}
    assert rows[(0, 1.0)] is None and rows[(1, 1.0)] is None
    for seed in (0, 1):
        small, big = set(rows[(seed, 0.1)]), set(rows[(seed, 0.5)])
        assert small < big  # nested within a seed
        for frac, chosen in ((0.1, small), (0.5, big)):
            counts = np.bincount(labels[sorted(chosen)], minlength=10)
            expected = [max(1, _half_up(frac * int((labels == c).sum()))) for c in range(10)]
            assert counts.tolist() == expected
    assert rows[(0, 0.1)] != rows[(1, 0.1)]  # each head seed draws its own subset


def test_fit_key_depends_on_everything_that_changes_the_result():
    base = resolve_hparams("nmtune", lam=0.01, depth=1)
    keys = {
        fit_key("a", base, 0, 1.0),
        fit_key("b", base, 0, 1.0),
        fit_key("a", resolve_hparams("nmtune", lam=0.1, depth=1), 0, 1.0),
        fit_key("a", resolve_hparams("nmtune", lam=0.01, depth=2), 0, 1.0),
        fit_key("a", resolve_hparams("nmtune", lam=0.01, depth=1, preset="paper"), 0, 1.0),
        fit_key("a", resolve_hparams("nmtune", lam=0.01, depth=1, epochs=3), 0, 1.0),
        fit_key("a", base, 1, 1.0),
        fit_key("a", base, 0, 0.5),
    }
    assert len(keys) == 8
    assert fit_key("a", base, 0, 1.0) == fit_key("a", resolve_hparams("nmtune", lam=0.01, depth=1), 0, 1.0)


def _spec(pair: str, seed: int) -> FitSpec:
    hp = resolve_hparams("lp")
    return FitSpec(fit_key(pair, hp, seed, 1.0), pair, hp, seed, 1.0, None, {"head": "lp"})


def test_plan_trials_batches_per_pair():
    fits = [_spec(p, s) for p in ("a", "b") for s in range(5)]
    trials = plan_trials(fits, fits_per_trial=2)
    assert [len(t.fits) for t in trials] == [2, 2, 1, 2, 2, 1]
    assert all(len({f.pair for f in t.fits}) == 1 for t in trials)
    assert sorted(f.key for t in trials for f in t.fits) == sorted(f.key for f in fits)
    assert [t.trial_id for t in trials] == [t.trial_id for t in plan_trials(list(reversed(fits)), 2)]


def test_largest_trials_run_first_by_rows_times_width(tmp_path):
    """The quick suite's trials with its extracted widths (CNN 96, tiny CLIP 64; the CLIP trials
    took 5-12 s, the CNN ones 8-22 s): every CNN trial comes before every CLIP one, and within a
    backbone sklearn-digits (fewer training rows) comes last; the same trials, only reordered."""
    plan = make_plan(load_suite(SUITES / "quick.yaml").override(work_dir=tmp_path))
    trials = plan_trials(plan.fits, 10)
    widths = {p.key: 64 if "clip" in p.backbone.display else 96 for p in plan.pairs}
    ordered = largest_trials_first(trials, plan.pairs, widths)
    assert sorted(t.trial_id for t in ordered) == sorted(t.trial_id for t in trials)
    pair = {p.key: p for p in plan.pairs}
    names = [(pair[t.pair].backbone.display, pair[t.pair].task.name) for t in ordered]
    assert [b for b, _ in names] == ["test_resnet-sup"] * 30 + ["tiny-clip"] * 12
    rows = [len(pair[t.pair].task.train) * len(t.fits) * widths[t.pair] for t in ordered]
    assert rows == sorted(rows, reverse=True)
    assert [task for _, task in names[25:30]] == ["sklearn-digits"] * 5
    # A pair whose width is unknown counts as width 1: it goes last, nothing is dropped.
    unknown = largest_trials_first(trials, plan.pairs, {k: v for k, v in widths.items() if k != trials[0].pair})
    assert unknown[-1].pair == trials[0].pair and len(unknown) == len(trials)


def test_plan_status_counts_what_earlier_runs_left(tmp_path, quick):
    plan = make_plan(load_suite(SUITES / "quick.yaml").override(work_dir=tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fresh = {s.stage: s for s in plan_status(plan, uri, "quick")}
    assert [(s.total, s.done) for s in fresh.values()] == [(7, 0), (42, 0), (420, 0)]
    sup = plan.pretrain[0]
    assert (
        fresh["pre-training"].work_left
        == sum(j.train_subset * j.epochs for j in plan.pretrain)
        == 5 * 10000 * 2 + 2 * 10000 * 3
    )
    # mark one job done and one pair cached, as the stages do
    (tmp_path / "pretrain" / sup.key).mkdir(parents=True)
    (tmp_path / "pretrain" / sup.key / "done.json").write_text("{}")
    marker = tmp_path / "features" / "pairs" / f"{plan.pairs[0].key}.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "quick-1.json").write_text(
        json.dumps(
            {
                "pretrain_total": 7,
                "pretrain_reused": 3,
                "pretrain_failed": [],
                "pairs_extracted": 10,
                "fits_run": 100,
                "fits_failed": 0,
                "seconds": {"pretrain": 80.0, "features": 20.0, "heads": 50.0},
            }
        )
    )
    now = {s.stage: s for s in plan_status(plan, uri, "quick")}
    assert (now["pre-training"].done, now["features"].done, now["head fits"].done) == (1, 1, 0)
    assert now["pre-training"].work_left == fresh["pre-training"].work_left - sup.train_subset * sup.epochs
    assert now["pre-training"].seconds_per_job == 20.0 and now["features"].seconds_per_job == 2.0
    assert now["head fits"].seconds_left == pytest.approx(420 * 0.5)  # (50 s / 100 fits) x 420 in float64
    assert not (tmp_path / "mlflow.db").exists()  # reading the store created nothing


def test_plan_command_prints_stages_and_writes_nothing(tmp_path):
    from benchmark.cli import app

    suite = {
        "name": "p",
        "work_dir": str(tmp_path / "w"),
        "backbones": [{"family": "timm", "arch": "test_resnet", "image_size": 28, "seed": 0}],
        "downstream": {"id": ["sklearn-digits"], "ood": ["digits-from-fonts"], "grid": {"lam": [0.01, 0.1]}},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(suite))
    res = CliRunner().invoke(app, ["plan", str(path)])
    assert res.exit_code == 0, res.output
    assert "1 backbones x 2 tasks = 2 pairs, 8 head fits" in res.output  # lp 1 + mlp 1 + nmtune 2, x 2 tasks
    assert "task sklearn-digits (id): 1151 train rows, 287 validation rows" in res.output
    res = CliRunner().invoke(app, ["plan", str(path), "--json"])
    stages = json.loads(res.output)
    assert [(s["stage"], s["total"], s["todo"]) for s in stages] == [
        ("pre-training", 0, 0),
        ("features", 2, 2),
        ("head fits", 8, 8),
    ]
    assert not (tmp_path / "w").exists()


def test_checkpoint_epochs_make_one_backbone_per_epoch_from_one_run(tmp_path):
    """``checkpoint_epochs`` evaluates the same runs at several epochs: one pre-training job per
    (ratio, seed), one backbone row ``<name>@e<epoch>`` per epoch; the last epoch reads
    ``model.pt`` under the run's own key (its features are those of a plain suite), earlier ones
    their snapshot; a failed run takes every epoch's backbone with it."""
    block = {
        "name": "cnn",
        "objective": "supervised",
        "corpus": "fashion-mnist",
        "arch": "test_resnet",
        "noise": {"ratios": [0.0, 0.1]},
        "seeds": [0, 1],
        "epochs": 4,
        "train_subset": 100,
    }
    base = {"name": "ce", "work_dir": str(tmp_path), "downstream": {"id": ["sklearn-digits"], "heads": ["lp"]}}
    plain = make_plan(validate_suite({**base, "pretrain": [block]}))
    plan = make_plan(validate_suite({**base, "pretrain": [{**block, "checkpoint_epochs": [4, 2]}]}))
    assert len(plan.pretrain) == 4 and len(plan.backbones) == 8
    assert all(j.snapshot_epochs == (2,) for j in plan.pretrain)
    assert {j.key for j in plan.pretrain}.isdisjoint({j.key for j in plain.pretrain})  # snapshots are output
    names = sorted({b.display for b in plan.backbones})
    assert names == ["cnn@e2", "cnn@e4"]
    for b in plan.backbones:
        out = job_dir(b.job, tmp_path)
        if b.params["pretrain_epoch"] == 4:
            assert b.key == b.job.key and b.spec["checkpoint"] == str(out / "model.pt")
        else:
            assert b.key != b.job.key and b.spec["checkpoint"] == str(out / "model_epoch_0002.pt")
    assert len({b.key for b in plan.backbones}) == 8
    failed = plan.pretrain[0].key
    left = plan.without_backbones([failed])
    assert len(left.backbones) == 6 and all(b.job.key != failed for b in left.backbones)
    assert all(p.backbone.job.key != failed for p in left.pairs)
    with pytest.raises(ConfigError, match=r"checkpoint_epochs \[5\] lie after the last epoch \(4\)"):
        validate_suite({**base, "pretrain": [{**block, "checkpoint_epochs": [2, 5]}]})
