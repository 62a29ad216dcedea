"""Which head wins where: every head against a reference head, paired, with three verdicts.

A contenders suite (LP, LP-AdamW, MLP, NMTune, LGM, fine-tuning, each possibly with a robust loss:
``nmtune+gce``) asks which head to use on which backbone. A leaderboard's overlapping ±
intervals cannot answer that: two heads share pre-trainings and tasks, so their difference must
be paired. This module reuses the leaderboard's selection (``leaderboard.selected_fits``: the
hyper-parameters validation chose per task and replicate) and claim 4's units:

- within a **pre-trained family** at one pre-training noise ratio, a unit is (pre-training seed,
  task), head seeds averaged inside it (they share the backbone);
- a **frozen backbone** (no noise ratio: one released model) pairs by (head seed, task).

Cells are (backbone family, pre-training noise ratio, downstream label-noise ratio, task kind):
clean and noisy-label fits, ID and OOD tasks are never mixed. Full-data fits only (the largest
``fraction``). ``COMPARISON_RULE`` gives the verdicts.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from benchmark.claims import mean_ci
from benchmark.errors import ConfigError
from benchmark.heads import head_label, head_order
from benchmark.heads.robust import head_with_loss
from benchmark.leaderboard import LABEL_NOISE, selected_fits

BETTER, WORSE, TIED, TOO_FEW = "better", "worse", "not distinguishable", "too few units"
CELL = ["backbone", "noise_ratio", LABEL_NOISE, "task_kind"]
COMPARISON_RULE = (
    "Rule: test-accuracy difference head − reference in points, mean [95 % Student-t interval] over "
    "paired units: (pre-training seed, task) within a backbone family at one noise ratio, head seeds "
    "averaged; (head seed, task) for a frozen backbone. **better** / **worse**: the interval excludes 0 "
    "above / below; **not distinguishable**: it contains 0; fewer than 2 units: **too few units**. "
    "Hyper-parameters are those validation chose per task and replicate (as on the leaderboard)."
)
#: Distinct heads (loss included) a suite needs before a report gets ``comparisons.md``.
MIN_HEADS = 3


def distinct_heads(fits: pd.DataFrame) -> list[str]:
    """The heads of a fits frame, a robust loss making a head of its own (``nmtune+gce``)."""
    if fits is None or len(fits) == 0 or "head" not in fits.columns:
        return []
    losses = fits["loss"] if "loss" in fits.columns else pd.Series(None, index=fits.index)
    heads = {head_with_loss(h, loss) for h, loss in zip(fits["head"], losses, strict=True) if isinstance(h, str)}
    return sorted(heads, key=head_order)


def unit_accuracies(fits: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, head, unit, task): the selected fits' test accuracy, head seeds averaged
    inside a pre-training. Columns ``CELL`` + ``head``, ``unit``, ``task``, ``test_accuracy``."""
    chosen = selected_fits(fits)
    if "fraction" in chosen.columns:
        frac = pd.to_numeric(chosen["fraction"], errors="coerce")
        chosen = chosen[frac == frac.max()]
    chosen = chosen.assign(noise_ratio=pd.to_numeric(chosen["noise_ratio"], errors="coerce"))
    frozen = chosen["noise_ratio"].isna()
    chosen = chosen.assign(
        unit=np.where(frozen, "h" + chosen["head_seed"].astype(str), "p" + chosen["pretrain_seed"].astype(str))
    )
    keys = [*CELL, "head", "unit", "task"]
    return chosen.groupby(keys, dropna=False, sort=False)["test_accuracy"].mean().reset_index()


def _verdict(low: float, high: float, n: int) -> str:
    if n < 2 or not math.isfinite(low):
        return TOO_FEW
    return BETTER if low > 0 else WORSE if high < 0 else TIED


def _compare(wide: pd.DataFrame, head: str, other: str) -> dict:
    """``head`` − ``other`` over the units both have, in points, with the verdict."""
    d = (wide[head] - wide[other]).dropna().to_numpy() * 100.0
    e = mean_ci(d)
    return {"diff": e.value, "low": e.low, "high": e.high, "n": e.n, "verdict": _verdict(e.low, e.high, e.n)}


def _cells(fits: pd.DataFrame):
    """(cell key dict, units x heads accuracy table) per cell, in a stable order."""
    units = unit_accuracies(fits)
    for key, part in units.groupby(CELL, dropna=False, sort=True):
        wide = part.pivot_table(index=["unit", "task"], columns="head", values="test_accuracy", dropna=False)
        yield dict(zip(CELL, key, strict=True)), wide


def head_comparisons(fits: pd.DataFrame, reference: str = "lp") -> pd.DataFrame:
    """One row per (cell, head other than ``reference``): ``diff`` (points), ``low`` / ``high``
    (95 % t interval; NaN with fewer than 2 units), ``n`` units and ``verdict``."""
    cols = [*CELL, "head", "reference", "diff", "low", "high", "n", "verdict"]
    if fits is None or len(fits) == 0:
        return pd.DataFrame(columns=cols)
    if reference not in distinct_heads(fits):
        raise ConfigError(
            f"reference head {reference!r} has no fits here (heads: {', '.join(distinct_heads(fits))}); "
            "pass one of those as reference"
        )
    rows = []
    for cell, wide in _cells(fits):
        if reference not in wide.columns:
            continue
        for head in sorted((h for h in wide.columns if h != reference), key=head_order):
            rows.append({**cell, "head": head, "reference": reference, **_compare(wide, head, reference)})
    return pd.DataFrame(rows, columns=cols)


def best_heads(fits: pd.DataFrame) -> pd.DataFrame:
    """Per cell: ``best`` (highest mean test accuracy over its units, ``best_acc`` in points) and
    ``tied`` (the heads not distinguishable from it, paired against it by the same rule);
    ``too_few`` lists heads with fewer than 2 units shared with the best."""
    cols = [*CELL, "best", "best_acc", "tied", "too_few", "n_heads"]
    if fits is None or len(fits) == 0:
        return pd.DataFrame(columns=cols)
    rows = []
    for cell, wide in _cells(fits):
        means = wide.mean().dropna()
        if means.empty:
            continue
        best = str(means.idxmax())
        verdicts = {h: _compare(wide, h, best)["verdict"] for h in means.index if h != best}
        order = sorted(verdicts, key=head_order)
        rows.append(
            {
                **cell,
                "best": best,
                "best_acc": float(means[best]) * 100.0,
                "tied": [h for h in order if verdicts[h] == TIED],
                "too_few": [h for h in order if verdicts[h] == TOO_FEW],
                "n_heads": len(means),
            }
        )
    return pd.DataFrame(rows, columns=cols)


def _ratio(v: object) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):g}"  # type: ignore[arg-type]


def _cell_text(r: pd.Series) -> list[str]:
    return [str(r["backbone"]), _ratio(r["noise_ratio"]), _ratio(r[LABEL_NOISE]), str(r["task_kind"]).upper()]


def comparisons_markdown(fits: pd.DataFrame, suite: str, reference: str = "lp") -> str:
    """``comparisons.md``: each head against ``reference`` per cell, then the best head per cell
    and the heads not distinguishable from it; the rule under the tables. A suite without the
    ``reference`` head is compared against its first head (registry order), and the text says so."""
    from tabulate import tabulate

    title = f"# Head comparisons in suite `{suite}`"
    if fits is None or len(fits) == 0:
        return f"{title}\n\nNo finished head fits yet.\n"
    heads = distinct_heads(fits)
    note = ""
    if reference not in heads:  # a suite without the LP still gets its table, against its first head
        note = f"The suite has no {head_label(reference)} fits: the reference is {head_label(heads[0])}.\n\n"
        reference = heads[0]
    comp = head_comparisons(fits, reference)
    rows = []
    for _, r in comp.iterrows():
        interval = "–" if not math.isfinite(r["low"]) else f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        diff = "–" if not math.isfinite(r["diff"]) else f"{r['diff']:+.2f}"
        rows.append([*_cell_text(r), head_label(r["head"]), diff, interval, str(int(r["n"])), r["verdict"]])
    cell_headers = ["Backbone", "Noise", "Label noise", "Tasks"]
    headers = [*cell_headers, "Head", f"− {head_label(reference)} (points)", "95 % interval", "n units", "verdict"]
    best = best_heads(fits)
    best_rows = [
        [
            *_cell_text(r),
            head_label(r["best"]),
            f"{r['best_acc']:.2f}",
            ", ".join(map(head_label, r["tied"])) or "none",
            ", ".join(map(head_label, r["too_few"])),
        ]
        for _, r in best.iterrows()
    ]
    best_headers = [*cell_headers, "Best head", "its accuracy (%)", "not distinguishable from it", "too few units"]
    return "\n".join(
        [
            title,
            "",
            f"## Each head against {head_label(reference)}",
            "",
            note + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
            "",
            COMPARISON_RULE,
            "",
            "## Best head per cell",
            "",
            tabulate(best_rows, headers=best_headers, tablefmt="github", disable_numparse=True),
            "",
            "The best head has the highest mean test accuracy over the cell's units; the others are paired "
            "against it by the same rule, and those whose interval contains 0 are listed as not "
            "distinguishable from it.",
            "",
        ]
    )
