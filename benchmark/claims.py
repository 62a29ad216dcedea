"""Do the paper's four claims hold in a suite's runs? Paired differences and trends with intervals.

The unit of replication is the pre-training seed: head seeds of the same pre-trained model are
averaged first (``leaderboard.unit_table``), because they share the backbone and are not
independent evidence about pre-training noise; a deterministic head (the converged LP) counts
once. Frozen backbones (one released model, no noise axis) only enter claim 4, with head seeds
as units.

1. Slight noise (5-10 %) raises ID LP accuracy: paired difference acc(r) - acc(0) per seed.
2. Any noise lowers OOD LP accuracy: paired differences for every r > 0, and the least-squares
   slope of accuracy on noise ratio with its 95 % interval.
3. Noise raises SVE and lowers LSVR of the frozen features: slopes on noise ratio.
4. NMTune beats MLP (about +1 point) and LP on ID and OOD: within **one backbone family** at a
   time, differences paired by (pre-training seed, task) over the family's pre-trainings (every
   noise ratio x seed; head seeds averaged); a frozen family pairs by head seed. Opposite
   effects of unlike backbones are never averaged into "no difference": the pooled number, over
   every family's units, comes after the per-family ones and is labelled so.

Every finding gets one of three verdicts (``VERDICT_RULE``): **held** (the 95 % interval excludes
0 in the claimed direction), **contradicted** (it excludes 0 the other way), **undecided** (it
contains 0). Where undecided, the power column gives the smallest number of units for which an
exact t test would exclude 0 with 80 % probability if the observed effect and spread were the
truth (``seeds_for_effect``: statsmodels' noncentral-t ``TTestPower``, not a normal approximation,
which under-counts at few degrees of freedom).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.power import TTestPower

from benchmark.heads import contenders, head_label, probe_head
from benchmark.leaderboard import label_noise_column, replicate_table

HELD, CONTRADICTED, UNDECIDED, TOO_FEW = "held", "contradicted", "undecided", "too few replicates"
VERDICT_RULE = (
    "Verdicts: **held** = the 95 % interval excludes 0 in the claimed direction; **contradicted** = "
    "it excludes 0 in the opposite direction; **undecided** = it contains 0."
)
#: The largest number of units the power search reports; beyond it the effect is "too small to decide".
MAX_UNITS = 100_000


def _smallest_n(power_at, target: float, start: int) -> int | None:
    """The smallest integer n >= start with ``power_at(n) >= target`` (power rises with n)."""
    lo, hi = start, start
    while power_at(hi) < target:
        lo, hi = hi + 1, hi * 2
        if hi > MAX_UNITS:
            return None
    while lo < hi:
        mid = (lo + hi) // 2
        if power_at(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return hi


def seeds_for_effect(effect_size: float, power: float = 0.8, alpha: float = 0.05) -> int | None:
    """Units a two-sided one-sample (paired) t test needs to reach ``power`` at standardised effect
    ``effect_size`` = |mean| / sd: the exact noncentral-t power of statsmodels' ``TTestPower``."""
    d = abs(float(effect_size))
    if not math.isfinite(d) or d == 0:
        return None
    tt = TTestPower()
    return _smallest_n(lambda n: tt.power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided"), power, 2)


def slope_power(slope: float, se: float, n_now: int, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided slope t test with ``n`` points if the design is replicated
    (standard error ``se * sqrt(n_now / n)``, n - 2 degrees of freedom): noncentral t."""
    df = n - 2
    ncp = abs(slope) / (se * math.sqrt(n_now / n))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


@dataclass
class Estimate:
    """A mean (difference or slope) with a two-sided 95 % interval and its sample size."""

    value: float
    low: float
    high: float
    n: int
    kind: str = "mean"  # "mean" (n paired differences) or "slope" (n points of a regression)

    @property
    def sign(self) -> str:
        """What the interval shows: "positive", "negative", "interval includes 0" or too few."""
        if self.n < 2 or not math.isfinite(self.low):
            return TOO_FEW
        if self.low > 0:
            return "positive"
        if self.high < 0:
            return "negative"
        return "interval includes 0"

    def verdict(self, direction: str) -> str:
        """``held`` / ``contradicted`` / ``undecided`` (or too few) for a claimed ``direction``
        ("positive" or "negative"), by ``VERDICT_RULE``."""
        sign = self.sign
        if sign == TOO_FEW:
            return TOO_FEW
        if sign == "interval includes 0":
            return UNDECIDED
        return HELD if sign == direction else CONTRADICTED

    def _se(self, confidence: float) -> float:
        dof = self.n - 1 if self.kind == "mean" else self.n - 2
        return (self.high - self.low) / 2 / stats.t.ppf(0.5 + confidence / 2, max(dof, 1))

    def seeds_needed(self, power: float = 0.8, confidence: float = 0.95) -> int | None:
        """Units (mean: paired differences; slope: points of the regression) for the interval to
        exclude 0 with probability ``power`` if the observed effect and spread were the truth:
        exact noncentral-t power (``seeds_for_effect``; slopes: ``slope_power``). Never fewer
        than ``n``; None without a spread or an effect to scale.
        """
        if self.n < 2 or not (math.isfinite(self.low) and math.isfinite(self.value)) or self.value == 0:
            return None
        se = self._se(confidence)
        if se <= 0:
            return self.n
        alpha = 1 - confidence
        if self.kind == "mean":
            need = seeds_for_effect(abs(self.value) / (se * math.sqrt(self.n)), power, alpha)
        else:
            need = _smallest_n(lambda k: slope_power(self.value, se, self.n, k, alpha), power, 3)
        return None if need is None else max(self.n, need)

    def fmt(self, scale: float = 100.0, digits: int = 2) -> str:
        if not math.isfinite(self.low):
            return f"{self.value * scale:+.{digits}f} (n={self.n})"
        return (
            f"{self.value * scale:+.{digits}f} [{self.low * scale:+.{digits}f}, "
            f"{self.high * scale:+.{digits}f}] (n={self.n})"
        )


def mean_ci(diffs: np.ndarray, confidence: float = 0.95) -> Estimate:
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    if len(d) < 2:
        return Estimate(float(d.mean()), math.nan, math.nan, len(d))
    half = stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return Estimate(float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d))


def slope_ci(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Least-squares slope of y on x with its t interval (per unit of x)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0:
        return Estimate(math.nan, math.nan, math.nan, len(x))
    res = stats.linregress(x, y)
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 2) * res.stderr
    return Estimate(float(res.slope), float(res.slope - half), float(res.slope + half), len(x), "slope")


def _full_data(rep: pd.DataFrame) -> pd.DataFrame:
    return rep[rep["fraction"].astype(float) == 1.0] if "fraction" in rep else rep


def _per_pretrain_seed(rep: pd.DataFrame) -> pd.DataFrame:
    """Average head seeds (and fractions = 1 only) so that rows are pre-training replicates."""
    keys = ["backbone", "noise_ratio", "head", "pretrain_seed"]
    return _full_data(rep).groupby(keys, dropna=False).mean(numeric_only=True).reset_index()


def _paired(df: pd.DataFrame, metric: str, r: float, base: float = 0.0) -> np.ndarray:
    a = df[np.isclose(df["noise_ratio"], r)].set_index("pretrain_seed")[metric]
    b = df[np.isclose(df["noise_ratio"], base)].set_index("pretrain_seed")[metric]
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    return (joined["a"] - joined["b"]).to_numpy()


def _finding(backbone: str, what: str, e: Estimate, direction: str, **extra) -> dict:
    verdict = e.verdict(direction)
    return {
        "backbone": backbone,
        "what": what,
        "estimate": e,
        "direction": direction,
        "verdict": verdict,
        "held": verdict == HELD,
        **extra,
    }


def head_units(rep: pd.DataFrame) -> pd.DataFrame:
    """Claim 4's units, one row per (backbone family, unit, head): a pre-trained family's unit is
    a pre-training (noise ratio, pre-training seed), head seeds averaged; a frozen family's unit
    is the head seed. Columns ``backbone``, ``unit``, ``head``, ``id_acc``, ``ood_acc``."""
    rep = _full_data(rep)
    frozen = rep["noise_ratio"].isna()
    pre = (
        rep[~frozen]
        .groupby(["backbone", "noise_ratio", "pretrain_seed", "head"], dropna=False)[["id_acc", "ood_acc"]]
        .mean()
        .reset_index()
    )
    pre["unit"] = [f"r{r:g} p{p}" for r, p in zip(pre["noise_ratio"], pre["pretrain_seed"])]
    fro = (
        rep[frozen].groupby(["backbone", "head_seed", "head"], dropna=False)[["id_acc", "ood_acc"]].mean().reset_index()
    )
    fro["unit"] = [f"s{s}" for s in fro["head_seed"]]
    cols = ["backbone", "unit", "head", "id_acc", "ood_acc"]
    return pd.concat([pre[cols], fro[cols]], ignore_index=True)


def analyse(runs: pd.DataFrame) -> dict[str, list[dict]]:
    """Per claim, a list of findings: {backbone, what, estimate, direction, verdict, held}.

    The paper's claims are about noisy pre-training with clean downstream labels: fits with noisy
    downstream labels (``label_noise_ratio`` > 0, suite ``downstream.label_noise``) are left out."""
    runs = runs[label_noise_column(runs) <= 0.0]
    rep = replicate_table(runs)
    rep["noise_ratio"] = pd.to_numeric(rep["noise_ratio"], errors="coerce")
    per_seed = _per_pretrain_seed(rep)
    out: dict[str, list[dict]] = {"1": [], "2": [], "3": [], "4": []}
    noisy = per_seed[per_seed["noise_ratio"].notna()]
    for backbone, part in noisy.groupby("backbone"):
        ratios = sorted(part["noise_ratio"].unique())
        if len(ratios) < 2 or 0.0 not in ratios:
            continue
        lp = part[part["head"] == probe_head()]  # the linear probe: the head claims 1-3 read
        for r in [r for r in ratios if 0 < r <= 0.1]:
            out["1"].append(
                _finding(backbone, f"ID LP acc, {r:.0%} - 0 %", mean_ci(_paired(lp, "id_acc", r)), "positive")
            )
        for r in [r for r in ratios if r > 0]:
            out["2"].append(
                _finding(backbone, f"OOD LP acc, {r:.0%} - 0 %", mean_ci(_paired(lp, "ood_acc", r)), "negative")
            )
        out["2"].append(
            _finding(
                backbone,
                "OOD LP acc: slope per unit noise ratio",
                slope_ci(lp["noise_ratio"], lp["ood_acc"]),
                "negative",
            )
        )
        for metric, sign, label in (
            ("sve_raw", "positive", "SVE (ID, frozen features)"),
            ("lsvr_raw", "negative", "LSVR (OOD, frozen features)"),
        ):
            out["3"].append(
                _finding(
                    backbone,
                    f"{label}: slope per unit noise ratio",
                    slope_ci(lp["noise_ratio"], lp[metric]),
                    sign,
                    scale=1.0,
                )
            )
    out["4"] = _claim4(head_units(rep))
    return out


def _claim4(units: pd.DataFrame) -> list[dict]:
    """NMTune minus MLP / LP per family (paired by unit), then pooled over families."""
    wide = units.pivot_table(index=["backbone", "unit"], columns="head", values=["id_acc", "ood_acc"], dropna=False)
    found, pooled = [], []
    for metric in ("id_acc", "ood_acc"):
        for head, other in contenders():  # NMTune against the MLP, then against the LP
            if (metric, head) not in wide or (metric, other) not in wide:
                continue
            diff = wide[(metric, head)] - wide[(metric, other)]
            what = f"{metric.split('_')[0].upper()} acc, {head_label(head)} - {head_label(other)}"
            diff = diff[diff.notna()]  # e.g. OOD of a family without OOD tasks: no finding at all
            for backbone, d in diff.groupby(level="backbone", sort=True):
                found.append(_finding(str(backbone), what, mean_ci(d.to_numpy()), "positive"))
            once = diff[diff.index.get_level_values("backbone").isin(_last_checkpoints(diff))]
            if once.index.get_level_values("backbone").nunique() > 1:
                pooled.append(_finding("all families, pooled", what, mean_ci(once.to_numpy()), "positive"))
    return found + pooled


def _last_checkpoints(diff: pd.Series) -> set[str]:
    """The backbone rows a pooled number may use: a run evaluated at several checkpoint epochs
    (rows ``<name>@e<epoch>``) enters once, at its last epoch, not once per epoch."""
    last: dict[str, tuple[int, str]] = {}
    for name in diff.index.get_level_values("backbone").unique():
        m = re.fullmatch(r"(.+)@e(\d+)", str(name))
        base, epoch = (m.group(1), int(m.group(2))) if m else (str(name), -1)
        if base not in last or epoch > last[base][0]:
            last[base] = (epoch, str(name))
    return {name for _, name in last.values()}


CLAIM_TEXT = {
    "1": "Slight pre-training noise (5-10 %) raises in-domain linear-probe accuracy",
    "2": "Any pre-training noise lowers out-of-domain linear-probe accuracy",
    "3": "Noise raises the singular value entropy (SVE) and lowers the largest singular value ratio (LSVR) of the frozen features",  # noqa: E501
    "4": "NMTune improves on the MLP head (about +1 point) and on the linear probe, ID and OOD",
}


def claim_verdict(rows: list[dict]) -> str:
    """One line for a claim: its findings' verdicts counted (all alike: that verdict; else mixed)."""
    testable = [r["verdict"] for r in rows if r["verdict"] != TOO_FEW]
    if not testable:
        return "not testable here (too few replicates: run more seeds)"
    counts = {v: testable.count(v) for v in (HELD, CONTRADICTED, UNDECIDED)}
    kinds = [v for v, c in counts.items() if c]
    head = kinds[0] if len(kinds) == 1 else "mixed"
    return (
        f"{head}: " + ", ".join(f"{c} {v}" for v, c in counts.items() if c) + f" of {len(testable)} testable findings"
    )


def claims_markdown(runs: pd.DataFrame, suite: str) -> str:
    """The claims section of a suite's results: a table per claim, the verdict rule, a verdict line."""
    if runs is None or len(runs) == 0:
        return f"# Claims of the paper in suite `{suite}`\n\nNo finished head fits yet.\n"
    found = analyse(runs)
    lines = [
        f"# Claims of the paper in suite `{suite}`",
        "",
        "Differences in accuracy points (percent), mean [95 % t-interval] over units of replication: "
        "pre-training seeds (head seeds averaged first; a deterministic head counted once); claim 4 "
        "compares heads within one backbone family, paired by (pre-training seed, task) over the "
        "family's pre-trainings, or by head seed for a frozen backbone; a pooled row, where shown, "
        "comes after the families. Slopes: change per unit of noise ratio (x100 for accuracies). "
        "Where a finding is undecided, the last column is the smallest number of units (slopes: "
        "pre-training runs) for which an exact t test would exclude 0 with 80 % probability if the "
        "observed effect and spread were the truth (noncentral t, statsmodels).",
        "",
    ]
    for c in ("1", "2", "3", "4"):
        rows = found[c]
        lines += [f"## Claim {c}: {CLAIM_TEXT[c]}", ""]
        if not rows:
            lines += [
                "Not testable in this suite (it needs pre-training noise ratios including 0 %, or several heads).",
                "",
            ]
            continue
        lines += [
            "| backbone | quantity | estimate | claimed | verdict | n to decide (80 % power) |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            scale = r.get("scale", 100.0)
            e = r["estimate"]
            need = e.seeds_needed() if r["verdict"] == UNDECIDED else None
            power = f"{need} ({'units' if e.kind == 'mean' else 'pre-training runs'})" if need else ""
            lines.append(
                f"| {r['backbone']} | {r['what']} | {e.fmt(scale, 2 if scale == 100 else 4)} | "
                f"{'> 0' if r['direction'] == 'positive' else '< 0'} | {r['verdict']} | {power} |"
            )
        lines += ["", VERDICT_RULE, "", f"**Verdict: {claim_verdict(rows)}.**", ""]
    return "\n".join(lines)
