"""Noisy downstream labels (issue 25, item 2): exact, seeded, an axis of the plan, never on a test split."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from support import fit_records, synthetic_fits, synthetic_runs

from benchmark.config import validate_suite
from benchmark.errors import ConfigError
from benchmark.extraction import FeaturePayload
from benchmark.heads import resolve_hparams
from benchmark.leaderboard import leaderboard, leaderboard_rows
from benchmark.leaderboard_text import render
from benchmark.noise.downstream import (
    DIGEST,
    TRAIN_RATE,
    VAL_RATE,
    expected_rate,
    noisy_task_labels,
    realised_line,
    setting_for,
)
from benchmark.plan import FitSpec, fit_key, make_plan
from benchmark.sweep import iter_fit_batches
from benchmark.trials import plan_trials

TASK = {"name": "blobs", "kind": "id", "train": "blobs/train/a", "val": "blobs/train/b", "tests": {}}


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    y = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(y)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()


# -- the science: exact, seeded, per task ------------------------------------------------------
def test_realised_rate_is_exactly_the_rounded_per_class_count() -> None:
    y_tr, y_va = _labels([37, 50, 13, 101, 9]), _labels([9, 12, 3, 25, 2], seed=1)
    s = setting_for(TASK, kind="symmetric", ratio=0.2, seed=0)
    out = noisy_task_labels(y_tr, y_va, 5, s)
    # round-half-up(0.2 * n_c) per class: 7 + 10 + 3 + 20 + 2 = 42 of 210; validation 2+2+1+5+0 = 10 of 51
    assert int((out.train != y_tr).sum()) == 42 and out.train_rate == expected_rate(y_tr, 0.2) == 42 / 210
    assert int((out.val != y_va).sum()) == 10 and out.val_rate == expected_rate(y_va, 0.2) == 10 / 51
    for c, n in enumerate([37, 50, 13, 101, 9]):
        assert int(((y_tr == c) & (out.train != y_tr)).sum()) == int(np.floor(0.2 * n + 0.5))
    assert np.array_equal(out.train_flipped, out.train != y_tr)


def test_same_seed_same_flips_other_task_or_seed_other_flips() -> None:
    y_tr, y_va = _labels([200] * 4), _labels([50] * 4, seed=1)
    a = noisy_task_labels(y_tr, y_va, 4, setting_for(TASK, kind="symmetric", ratio=0.3))
    again = noisy_task_labels(y_tr, y_va, 4, setting_for(dict(TASK), kind="symmetric", ratio=0.3))
    other_task = noisy_task_labels(y_tr, y_va, 4, setting_for({**TASK, "name": "x"}, kind="symmetric", ratio=0.3))
    other_seed = noisy_task_labels(y_tr, y_va, 4, setting_for(TASK, kind="symmetric", ratio=0.3, seed=1))
    assert np.array_equal(a.train, again.train) and a.digest == again.digest and len(a.digest) == 64
    assert len({a.digest, other_task.digest, other_seed.digest}) == 3
    assert not np.array_equal(a.train_flipped, other_task.train_flipped)
    # the same rate whatever the draw: the counts are exact
    assert a.train_rate == other_task.train_rate == other_seed.train_rate == 0.3
    s = setting_for(TASK, kind="symmetric", ratio=0.3)
    assert s is not None and s.train_seed != s.val_seed


def test_ratio_zero_is_the_identity() -> None:
    y_tr, y_va = _labels([20, 30]), _labels([5, 5])
    assert setting_for(TASK, kind="symmetric", ratio=0.0) is None
    out = noisy_task_labels(y_tr, y_va, 2, None)
    assert np.array_equal(out.train, y_tr) and np.array_equal(out.val, y_va)
    assert out.train_rate == out.val_rate == 0.0 and not out.train_flipped.any()


def test_clean_validation_keeps_validation_labels_and_train_noise_is_the_same() -> None:
    y_tr, y_va = _labels([100] * 3), _labels([40] * 3, seed=2)
    noisy = noisy_task_labels(y_tr, y_va, 3, setting_for(TASK, kind="symmetric", ratio=0.25))
    clean = noisy_task_labels(y_tr, y_va, 3, setting_for(TASK, kind="symmetric", ratio=0.25, validation="clean"))
    assert np.array_equal(clean.val, y_va) and clean.val_rate == 0.0
    assert noisy.val_rate == 30 / 120 and int((noisy.val != y_va).sum()) == 30
    assert np.array_equal(clean.train, noisy.train)  # the train draw does not depend on the validation mode
    assert clean.digest != noisy.digest


def test_asymmetric_kind_takes_its_class_map() -> None:
    y_tr = _labels([50, 50, 50])
    s = setting_for(TASK, kind="asymmetric", ratio=0.4, options={"class_map": {0: 2}})
    out = noisy_task_labels(y_tr, _labels([10, 10, 10]), 3, s)
    moved = out.train != y_tr
    assert int(moved.sum()) == 20 and set(y_tr[moved]) == {0} and set(out.train[moved]) == {2}


# -- the heads stage: noise before the probe, never on a test split --------------------------------
def _blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.random.default_rng(123).normal(size=(k, d)) * 3
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


def _fit(ratio: float, seed: int = 0, validation: str = "noisy") -> FitSpec:
    hp = resolve_hparams("lp")
    noise = setting_for(TASK, kind="symmetric", ratio=ratio, validation=validation)
    params = {"head": "lp", "task": "blobs", "backbone": "synthetic"}
    params.update(noise.params() if noise else {"label_noise_ratio": 0.0})
    return FitSpec(fit_key("p0", hp, seed, 1.0, noise), "p0", hp, seed, 1.0, None, params, {}, noise)


def test_a_real_fit_trains_on_noisy_labels_and_never_touches_the_test_labels(monkeypatch) -> None:
    import benchmark.probe as probe

    payload = FeaturePayload(
        train=_blobs(200, 8, 4, 0),
        val=_blobs(60, 8, 4, 1),
        tests={"test": _blobs(80, 8, 4, 2), "shift": _blobs(40, 8, 4, 3)},
        num_classes=4,
    )
    before = {k: _sha(v[1]) for k, v in payload.tests.items()}
    seen: list[dict] = []
    real = probe.prepare_data

    def spy(x_tr, y_tr, xs, ys, **kw):
        seen.append({"train": y_tr.numpy().copy(), **{k: v.numpy().copy() for k, v in ys.items()}})
        return real(x_tr, y_tr, xs, ys, **kw)

    monkeypatch.setattr(probe, "prepare_data", spy)
    specs = [_fit(0.0), _fit(0.2), _fit(0.2, validation="clean")]
    records = [r for batch in iter_fit_batches(payload, specs) for r in batch]

    assert {k: _sha(v[1]) for k, v in payload.tests.items()} == before  # the payload is unchanged
    assert len(seen) == 3  # one prepared data set per label-noise setting
    for s in seen:  # what the probe saw as test labels: the originals, bit for bit
        assert _sha(s["test"]) == before["test"] and _sha(s["shift"]) == before["shift"]
    clean, noisy, clean_val = seen
    assert np.array_equal(clean["train"], payload.train[1]) and np.array_equal(clean["val"], payload.val[1])
    assert int((noisy["train"] != payload.train[1]).sum()) == 40  # 0.2 * 50 per class, 4 classes
    assert int((noisy["val"] != payload.val[1]).sum()) == 12  # round(0.2 * 15) = 3 per class
    assert np.array_equal(clean_val["val"], payload.val[1]) and np.array_equal(clean_val["train"], noisy["train"])

    r0, r1, r2 = records
    assert "error" not in r1 and TRAIN_RATE not in r0["metrics"] and DIGEST not in r0["params"]
    assert r1["metrics"][TRAIN_RATE] == 0.2 and r1["metrics"][VAL_RATE] == 0.2 and len(r1["params"][DIGEST]) == 64
    assert r2["metrics"][VAL_RATE] == 0.0 and r1["params"]["label_noise_ratio"] == 0.2
    # the test accuracies are measured against the clean test labels: well-separated blobs stay near 1
    assert r1["metrics"]["test_accuracy"] > 0.9, r1["metrics"]["test_accuracy"]
    (task, ratio), line = realised_line(r1)
    assert (task, ratio) == ("blobs", 0.2) and "realised 20.00% of train labels" in line
    assert realised_line(r0) is None


# -- the plan: an axis that keeps old keys -------------------------------------------------------
def _suite(tmp_path, **label_noise) -> dict:
    downstream = {"id": ["sklearn-digits"], "heads": ["lp"], "seeds": [0, 1]}
    if label_noise:
        downstream["label_noise"] = label_noise
    return {
        "name": "ln",
        "work_dir": str(tmp_path),
        "backbones": [{"family": "timm", "arch": "test_resnet", "image_size": 28, "seed": 0}],
        "downstream": downstream,
    }


def test_fit_keys_are_unchanged_without_label_noise_and_ratios_are_an_axis(tmp_path) -> None:
    plain = make_plan(validate_suite(_suite(tmp_path)))
    zero = make_plan(validate_suite(_suite(tmp_path, ratios=[0.0])))
    both = make_plan(validate_suite(_suite(tmp_path, kind="symmetric", ratios=[0.0, 0.2])))
    keys = [f.key for f in plain.fits]
    assert len(keys) == 2 and [f.key for f in zero.fits] == keys
    # hashed exactly as before the axis existed
    assert keys[0] == fit_key(plain.pairs[0].key, resolve_hparams("lp"), 0, 1.0)
    assert all(f.label_noise is None and f.params["label_noise_ratio"] == 0.0 for f in plain.fits)
    assert len(both.fits) == 4 and {f.key for f in both.fits if f.label_noise is None} == set(keys)
    noisy = [f for f in both.fits if f.label_noise is not None]
    assert len({f.key for f in noisy} | set(keys)) == 4
    assert all(
        f.params["label_noise_ratio"] == 0.2
        and f.params["label_noise_kind"] == "symmetric"
        and f.params["label_noise_validation"] == "noisy"
        for f in noisy
    )
    trials = plan_trials(both.fits, fits_per_trial=16)
    assert len(trials) == 2 and all(len({f.label_noise for f in t.fits}) == 1 for t in trials)
    clean_trials = [t.trial_id for t in trials if t.fits[0].label_noise is None]
    assert [t.trial_id for t in plan_trials(plain.fits, 16)] == clean_trials
    # `nmlbench plan` says which label settings every fit is made under (and nothing for a clean suite)
    from benchmark.plan_status import render_status

    line = "downstream labels, each fit once per setting: clean, symmetric 20% (val noisy); test labels never touched"
    assert line in render_status(both, [], "sqlite:///x.db")
    assert "downstream labels" not in render_status(plain, [], "sqlite:///x.db")


@pytest.mark.parametrize(
    ("label_noise", "message"),
    [
        ({"kind": "nope", "ratio": 0.2}, "'nope' is not a registered noise kind; downstream label noise is one of"),
        ({"kind": "swap", "ratio": 0.2}, "'swap' corrupts captions, not labels"),
        ({"ratio": 1.0}, "label_noise.ratios[0] = 1.0: must be in [0, 1)"),
        ({"ratios": [0.1, 0.1]}, "must not repeat values"),
        ({"ratio": 0.1, "ratios": [0.1]}, "give either ratio or ratios, not both"),
        ({"kind": "asymmetric", "ratio": 0.2}, "needs label_noise.class_map"),
        ({"ratio": 0.2, "validation": "test"}, "label_noise.validation"),
    ],
)
def test_bad_label_noise_is_a_clear_config_error(tmp_path, label_noise, message) -> None:
    with pytest.raises(ConfigError) as err:
        validate_suite(_suite(tmp_path, **label_noise))
    assert message in str(err.value), str(err.value)


def test_issue_spelling_loads() -> None:
    from benchmark.config.downstream import LabelNoise

    ln = LabelNoise.model_validate({"kind": "symmetric", "ratio": 0.2})
    assert ln.ratios == [0.2] and ln.validation == "noisy" and ln.seed == 0


# -- the leaderboard: an axis only when some run has it ----------------------------------------
def test_leaderboard_groups_by_label_noise_only_when_present() -> None:
    runs = synthetic_runs()
    plain = leaderboard(runs)
    assert "label_noise_ratio" not in plain.columns and "Label noise" not in render(plain)

    noisy = runs.assign(label_noise_ratio=0.2, test_accuracy=runs["test_accuracy"] - 0.1)
    both = leaderboard(pd.concat([runs, noisy], ignore_index=True))
    assert "label_noise_ratio" in both.columns and len(both) == 2 * len(plain)
    clean_rows = both[both["label_noise_ratio"] == 0.0].drop(columns="label_noise_ratio").reset_index(drop=True)
    noisy_rows = both[both["label_noise_ratio"] == 0.2].reset_index(drop=True)
    pd.testing.assert_series_equal(clean_rows["id_acc"], plain["id_acc"], check_names=False)
    np.testing.assert_allclose(noisy_rows["id_acc"], plain["id_acc"] - 0.1, atol=1e-12)
    assert "Label noise" in render(both) and "(backbone, noise ratio, label noise) cells" in render(both)
    rows = leaderboard_rows(pd.concat([runs, noisy], ignore_index=True))
    assert rows["fits"].sum() == 2 * len(runs)


def test_fit_names_say_the_label_noise_only_when_set() -> None:
    from benchmark.names import fit_name

    p = {"head": "lp", "task": "mnist-5k", "head_seed": 0, "objective": "frozen"}
    assert fit_name({**p, "label_noise_ratio": 0.0}) == fit_name(p) == "lp · mnist-5k · s0"
    assert fit_name({**p, "label_noise_ratio": 0.2}) == "lp · mnist-5k · s0 · labels 20% noisy"


def test_the_runner_prints_the_realised_rate_once_per_task_and_ratio(capsys) -> None:
    from benchmark.sink import TrackerSink

    class Tracker:
        def __init__(self) -> None:
            self.fits: list[dict] = []

        def log_fit(self, record: dict) -> None:
            self.fits.append(record)

    def record(task: str, ratio: float, seed: int) -> dict:
        params = {"task": task, "label_noise_ratio": ratio, "label_noise_kind": "symmetric", "head_seed": seed}
        params.update({"label_noise_validation": "noisy", DIGEST: "ab" * 32})
        return {"key": f"{task}{ratio}{seed}", "params": params, "metrics": {TRAIN_RATE: ratio, VAL_RATE: ratio}}

    tracker = Tracker()
    sink = TrackerSink(tracker, 5)
    for r in (record("a", 0.2, 0), record("a", 0.2, 1), record("b", 0.2, 0), record("a", 0.4, 0)):
        sink(r)
    sink.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if "label noise on" in line]
    assert len(tracker.fits) == 4 and len(lines) == 3, lines
    assert "label noise on a: symmetric 20% asked, realised 20.00% of train labels" in lines[0]


def test_claims_read_the_clean_downstream_fits_only() -> None:
    from benchmark.claims import analyse

    runs = synthetic_runs()
    noisy = runs.assign(label_noise_ratio=0.4, test_accuracy=0.1)
    assert analyse(pd.concat([runs, noisy], ignore_index=True)) == analyse(runs)


def test_label_noise_reaches_mlflow_and_the_published_board(tmp_path) -> None:
    from benchmark.reporting import publish_suite
    from benchmark.tracking import Tracker, TrackingReader
    from benchmark.tracking.layout import leaderboard_key

    df = synthetic_fits()
    df = df[df.backbone == "net"].reset_index(drop=True)
    old = fit_records(df, "ln")  # runs written before the axis: no label-noise param at all
    noisy = fit_records(df.assign(test_accuracy=df.test_accuracy - 0.2), "ln")
    for rec in noisy:
        rec["key"] += "-noisy"
        rec["params"].update(label_noise_ratio=0.2, label_noise_kind="symmetric", label_noise_validation="noisy")
        rec["params"][DIGEST] = "cd" * 32
        rec["metrics"].update({TRAIN_RATE: 0.2, VAL_RATE: 0.2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "ln", suite="ln")
    for rec in old + noisy:
        tracker.log_fit(rec)
    reader = TrackingReader(uri, "ln")
    runs = reader.runs_frame("fit")
    assert runs.loc[runs["key"].str.endswith("-noisy"), DIGEST].eq("cd" * 32).all()
    assert runs.loc[runs["key"].str.endswith("-noisy"), TRAIN_RATE].eq(0.2).all()
    assert publish_suite(tracker, force=True) == 8  # 2 noise ratios x 2 heads x 2 label-noise ratios
    board = reader.leaderboard_frame("ln")
    assert sorted(board["label_noise_ratio"].unique()) == [0.0, 0.2]
    clean, dirty = board[board["label_noise_ratio"] == 0.0], board[board["label_noise_ratio"] == 0.2]
    np.testing.assert_allclose(dirty["id_acc"].to_numpy(), clean["id_acc"].to_numpy() - 0.2, atol=1e-9)
    # a clean row keeps the key it was published under before the axis existed
    row = {"backbone": "net", "noise_ratio": 0.1, "head": "lp"}
    assert leaderboard_key("ln", row) == leaderboard_key("ln", {**row, "label_noise_ratio": 0.0})
    assert leaderboard_key("ln", row) != leaderboard_key("ln", {**row, "label_noise_ratio": 0.2})


def test_instance_noise_reads_the_payload_features_and_keeps_exact_counts() -> None:
    from benchmark.noise.downstream import noisy_payload

    payload = FeaturePayload(
        train=_blobs(200, 8, 4, 0), val=_blobs(60, 8, 4, 1), tests={"test": _blobs(80, 8, 4, 2)}, num_classes=4
    )
    s = setting_for(TASK, kind="instance", ratio=0.3)
    out, noisy = noisy_payload(payload, s)
    assert noisy is not None and noisy.train_rate == 0.3 and int((out.train[1] != payload.train[1]).sum()) == 60
    assert out.tests is payload.tests and out.train[0] is payload.train[0]
    other = FeaturePayload(
        train=(payload.train[0] * -1.0, payload.train[1]), val=payload.val, tests=payload.tests, num_classes=4
    )
    again = noisy_payload(other, s)[1]  # which rows flip is drawn by rate, their new labels from the features
    assert np.array_equal(again.train_flipped, noisy.train_flipped) and again.digest != noisy.digest
