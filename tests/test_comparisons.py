"""Head comparisons: planted differences get the right verdict, units pair as claim 4's do."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from support import synthetic_runs

from benchmark.comparisons import COMPARISON_RULE, best_heads, comparisons_markdown, head_comparisons
from benchmark.errors import ConfigError
from benchmark.report import make_report
from benchmark.report_html import render_html

SEEDS, TASKS = (0, 1, 2), ("a", "b")
#: Per unit (pre-training seed x task), in points: A's small spread, B's symmetric noise (mean 0).
SMALL = [0.1, -0.1, 0.05, -0.05, 0.02, -0.02]
SYMMETRIC = [1.0, -1.0, 0.5, -0.5, 0.8, -0.8]
#: head (name, loss) -> points over the LP per unit
PLANTED = {
    ("nmtune", None): [2.0 + s for s in SMALL],  # A: better
    ("mlp", "gce"): SYMMETRIC,  # B: not distinguishable from the LP
    ("lgm", None): [-3.0 + s for s in SMALL],  # C: worse
    ("lp_adamw", None): [1.8 + s for s in SYMMETRIC],  # not distinguishable from A
}


def _row(backbone, noise, head, loss, task, ps, hs, acc, val=None, lam=0.01) -> dict:
    return {
        "backbone": backbone,
        "noise_ratio": noise,
        "head": head,
        "loss": loss,
        "task": task,
        "task_kind": "id",
        "pretrain_seed": ps,
        "head_seed": hs,
        "fraction": 1.0,
        "lam": lam,
        "depth": 1,
        "label_noise_ratio": 0.0,
        "val_accuracy": acc if val is None else val,
        "test_accuracy": acc,
        "test_macro_f1": acc,
        "test_sve": 3.0,
        "test_lsvr": 0.2,
        "test_sve_raw": 3.0,
        "test_lsvr_raw": 0.2,
    }


def _fits() -> pd.DataFrame:
    """A pre-trained family (3 pre-training seeds x 2 tasks, 2 head seeds each differing by ±0.5
    points around the unit's value) and a frozen backbone (3 head seeds x 2 tasks)."""
    rows = []
    for k, (ps, task) in enumerate((p, t) for p in SEEDS for t in TASKS):
        lp = 0.70 + 0.01 * ps + 0.02 * TASKS.index(task)
        for hs, jitter in ((0, 0.005), (1, -0.005)):
            rows.append(_row("cnn", 0.1, "lp", None, task, ps, hs, lp))
            for (head, loss), gain in PLANTED.items():
                rows.append(_row("cnn", 0.1, head, loss, task, ps, hs, lp + gain[k] / 100 + jitter))
            # a decoy validation must reject: best test accuracy, worst validation
            rows.append(_row("cnn", 0.1, "nmtune", None, task, ps, hs, 0.99, val=0.1, lam=0.1))
        # frozen: head seeds are the units; the LP is the same for every head seed
        frozen_lp = 0.6 + 0.02 * TASKS.index(task)
        rows.append(_row("mobilenet", np.nan, "lp", None, task, 0, ps, frozen_lp))
        rows.append(_row("mobilenet", np.nan, "nmtune", None, task, 0, ps, frozen_lp + (1.0 + SMALL[k]) / 100))
        rows.append(_row("mobilenet", np.nan, "mlp", None, task, 0, ps, frozen_lp - 0.01))
    clean = pd.DataFrame(rows)
    noisy = clean.assign(label_noise_ratio=0.2)
    a = noisy["head"] == "nmtune"
    noisy.loc[a, ["val_accuracy", "test_accuracy"]] -= 0.05  # A: +2 clean, -3 with noisy labels
    return pd.concat([clean, noisy], ignore_index=True)


def _one(comp: pd.DataFrame, backbone: str, label_noise: float, head: str) -> pd.Series:
    sel = comp[(comp.backbone == backbone) & (comp.label_noise_ratio == label_noise) & (comp["head"] == head)]
    assert len(sel) == 1
    return sel.iloc[0]


def test_planted_heads_get_their_verdicts_and_exact_means() -> None:
    comp = head_comparisons(_fits())
    a = _one(comp, "cnn", 0.0, "nmtune")
    assert a.verdict == "better" and a.low > 0 and a.n == 6
    assert a["diff"] == pytest.approx(2.0, abs=1e-9)  # the decoy (test 0.99) was never selected
    b = _one(comp, "cnn", 0.0, "mlp+gce")
    assert b.verdict == "not distinguishable" and b.low < 0 < b.high and b["diff"] == pytest.approx(0.0, abs=1e-9)
    c = _one(comp, "cnn", 0.0, "lgm")
    assert c.verdict == "worse" and c.high < 0 and c["diff"] == pytest.approx(-3.0, abs=1e-9)
    d = np.array(PLANTED[("nmtune", None)])  # the interval is the paired t interval over 6 units
    half = 2.5705818366147395 * d.std(ddof=1) / math.sqrt(6)
    assert (a.low, a.high) == pytest.approx((2.0 - half, 2.0 + half))
    assert set(comp["reference"]) == {"lp"} and "lp" not in set(comp["head"])


def test_label_noise_ratios_are_kept_apart() -> None:
    comp = head_comparisons(_fits())
    noisy = _one(comp, "cnn", 0.2, "nmtune")
    assert noisy["diff"] == pytest.approx(-3.0, abs=1e-9) and noisy.verdict == "worse" and noisy.n == 6
    assert _one(comp, "cnn", 0.0, "nmtune")["diff"] == pytest.approx(2.0, abs=1e-9)


def test_id_and_ood_tasks_are_separate_cells() -> None:
    fits = _fits()
    ood = fits.assign(task_kind="ood", task="o" + fits["task"])
    ood.loc[ood["head"] == "lgm", ["val_accuracy", "test_accuracy"]] += 0.05  # C: -3 on ID, +2 on OOD
    comp = head_comparisons(pd.concat([fits, ood], ignore_index=True))
    c = comp[(comp.backbone == "cnn") & (comp.label_noise_ratio == 0.0) & (comp["head"] == "lgm")]
    by_kind = {k: (round(d, 9), v, n) for k, d, v, n in zip(c.task_kind, c["diff"], c.verdict, c.n)}
    assert by_kind == {"id": (-3.0, "worse", 6), "ood": (2.0, "better", 6)}


def test_a_frozen_backbone_pairs_by_head_seed_and_task() -> None:
    comp = head_comparisons(_fits())
    a = _one(comp, "mobilenet", 0.0, "nmtune")
    assert math.isnan(a.noise_ratio) and a.n == 6 and a["diff"] == pytest.approx(1.0, abs=1e-9)
    assert a.verdict == "better"
    assert _one(comp, "mobilenet", 0.0, "mlp").verdict == "worse"


def test_fewer_than_two_units_get_no_interval() -> None:
    one = _fits()
    one = one[(one.backbone == "cnn") & (one.pretrain_seed == 0) & (one.task == "a")]
    row = _one(head_comparisons(one), "cnn", 0.0, "nmtune")
    assert row["n"] == 1 and row.verdict == "too few units" and math.isnan(row.low) and math.isnan(row.high)


def test_best_heads_names_the_best_and_those_indistinguishable_from_it() -> None:
    best = best_heads(_fits())
    clean = best[(best.backbone == "cnn") & (best.label_noise_ratio == 0.0)].iloc[0]
    assert clean.best == "nmtune" and clean.tied == ["lp_adamw"] and clean.too_few == []
    noisy = best[(best.backbone == "cnn") & (best.label_noise_ratio == 0.2)].iloc[0]
    assert noisy.best == "lp_adamw" and noisy.tied == []  # B sits exactly 1.8 below it: paired, that is decided
    frozen = best[best.backbone == "mobilenet"]
    # clean labels: NMTune +1 over the LP; noisy labels: -4, so the LP wins that cell
    assert dict(zip(frozen.label_noise_ratio, frozen.best)) == {0.0: "nmtune", 0.2: "lp"}


def test_an_unknown_reference_is_refused() -> None:
    with pytest.raises(ConfigError, match="reference head 'finetune'"):
        head_comparisons(_fits(), reference="finetune")


def test_a_suite_without_the_lp_is_compared_against_its_first_head() -> None:
    fits = _fits()
    text = comparisons_markdown(fits[fits["head"] != "lp"], "no-lp")
    assert "no LP fits: the reference is LP (AdamW)" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| cnn") and "| LGM " in ln and "| 0 " in ln)
    assert "-4.80" in line and "| worse" in line  # -3 - 1.8 points, paired against lp_adamw


def test_report_writes_comparisons_only_with_three_heads(tmp_path) -> None:
    paths = make_report(_fits(), tmp_path / "many", "contenders")
    text = paths["comparisons.md"].read_text()
    assert text.startswith("# Head comparisons in suite `contenders`") and COMPARISON_RULE in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| cnn") and "| NMTune " in ln and "| 0 " in ln)
    assert "+2.00" in line and "| better" in line
    assert text == comparisons_markdown(_fits(), "contenders")
    two = make_report(synthetic_runs(), tmp_path / "two", "clean")  # LP and NMTune only
    assert "comparisons.md" not in two and not (tmp_path / "two" / "comparisons.md").exists()
    page = render_html("contenders", pd.DataFrame(), {}, "# Claims\n", [], comparisons_md=text)
    assert '<h2 id="comparisons">Which head wins where</h2>' in page and "not distinguishable" in page
    assert 'id="comparisons"' not in render_html("clean", pd.DataFrame(), {}, "# Claims\n", [])
