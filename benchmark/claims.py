"""Do the paper's four claims hold in a suite's runs? Paired differences and trends with intervals.

A claim counts as held only where the interval supports it: a claim that did not hold is reported
as such, never tuned away. The unit of replication is the pre-training
seed: head seeds of the same pre-trained model are averaged first, because they share the
backbone and are not independent evidence about pre-training noise. Frozen backbones (one model,
no noise axis) only enter claim 4, with head seeds as units.

1. Slight noise (5-10 %) raises ID LP accuracy: paired difference acc(r) - acc(0) per seed.
2. Any noise lowers OOD LP accuracy: paired differences for every r > 0, and the least-squares
   slope of accuracy on noise ratio with its 95 % interval.
3. Noise raises SVE and lowers LSVR of the frozen features: slopes on noise ratio.
4. NMTune beats MLP (about +1 point) and LP on ID and OOD: paired differences over every
   (backbone, noise ratio, seed) unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from benchmark.leaderboard import replicate_table


@dataclass
class Estimate:
    """A mean (difference or slope) with a two-sided 95 % interval and its sample size."""

    value: float
    low: float
    high: float
    n: int
    kind: str = "mean"  # "mean" (n paired differences) or "slope" (n points of a regression)

    @property
    def verdict(self) -> str:
        if self.n < 2 or not math.isfinite(self.low):
            return "too few replicates"
        if self.low > 0:
            return "positive"
        if self.high < 0:
            return "negative"
        return "interval includes 0"

    def seeds_needed(self, power: float = 0.8, confidence: float = 0.95) -> int | None:
        """Replicates for this interval to exclude 0 with probability ``power`` if the observed
        effect and spread are the truth (normal approximation: n = n_now * ((z_a + z_b) * se / |value|)^2).

        Only meaningful where the verdict is undecided; None where there is no spread to scale.
        """
        if self.n < 2 or not (math.isfinite(self.low) and math.isfinite(self.value)) or self.value == 0:
            return None
        dof = self.n - 1 if self.kind == "mean" else self.n - 2
        se = (self.high - self.low) / 2 / stats.t.ppf(0.5 + confidence / 2, max(dof, 1))
        z = stats.norm.ppf(0.5 + confidence / 2) + stats.norm.ppf(power)
        return max(self.n, math.ceil(self.n * (z * se / abs(self.value)) ** 2))

    def fmt(self, scale: float = 100.0, digits: int = 2) -> str:
        if not math.isfinite(self.low):
            return f"{self.value * scale:+.{digits}f} (n={self.n})"
        return (f"{self.value * scale:+.{digits}f} [{self.low * scale:+.{digits}f}, "
                f"{self.high * scale:+.{digits}f}] (n={self.n})")


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


def _per_pretrain_seed(rep: pd.DataFrame) -> pd.DataFrame:
    """Average head seeds (and fractions = 1 only) so that rows are pre-training replicates."""
    rep = rep[rep["fraction"].astype(float) == 1.0] if "fraction" in rep else rep
    keys = ["backbone", "noise_ratio", "method", "pretrain_seed"]
    return rep.groupby(keys, dropna=False).mean(numeric_only=True).reset_index()


def _paired(df: pd.DataFrame, metric: str, r: float, base: float = 0.0) -> np.ndarray:
    a = df[np.isclose(df["noise_ratio"], r)].set_index("pretrain_seed")[metric]
    b = df[np.isclose(df["noise_ratio"], base)].set_index("pretrain_seed")[metric]
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    return (joined["a"] - joined["b"]).to_numpy()


def analyse(runs: pd.DataFrame) -> dict[str, list[dict]]:
    """Per claim, a list of findings: {backbone, what, estimate, verdict, held}."""
    rep = replicate_table(runs)
    rep["noise_ratio"] = pd.to_numeric(rep["noise_ratio"], errors="coerce")
    per_seed = _per_pretrain_seed(rep)
    out: dict[str, list[dict]] = {"1": [], "2": [], "3": [], "4": []}
    noisy = per_seed[per_seed["noise_ratio"].notna()]
    for backbone, part in noisy.groupby("backbone"):
        ratios = sorted(part["noise_ratio"].unique())
        if len(ratios) < 2 or 0.0 not in ratios:
            continue
        lp = part[part["method"] == "lp"]
        for r in [r for r in ratios if 0 < r <= 0.1]:
            e = mean_ci(_paired(lp, "id_acc", r))
            out["1"].append({"backbone": backbone, "what": f"ID LP acc, {r:.0%} - 0 %", "estimate": e,
                             "held": e.verdict == "positive"})
        for r in [r for r in ratios if r > 0]:
            e = mean_ci(_paired(lp, "ood_acc", r))
            out["2"].append({"backbone": backbone, "what": f"OOD LP acc, {r:.0%} - 0 %", "estimate": e,
                             "held": e.verdict == "negative"})
        e = slope_ci(lp["noise_ratio"], lp["ood_acc"])
        out["2"].append({"backbone": backbone, "what": "OOD LP acc: slope per unit noise ratio", "estimate": e,
                         "held": e.verdict == "negative"})
        for metric, sign, label in (("sve_raw", "positive", "SVE (ID, frozen features)"),
                                    ("lsvr_raw", "negative", "LSVR (OOD, frozen features)")):
            e = slope_ci(lp["noise_ratio"], lp[metric])
            out["3"].append({"backbone": backbone, "what": f"{label}: slope per unit noise ratio", "estimate": e,
                             "held": e.verdict == sign, "scale": 1.0})
    # claim 4: all backbones, all noise ratios; units are (backbone, noise, pretrain seed, head seed)
    units = ["backbone", "noise_ratio", "pretrain_seed", "head_seed"]
    wide = rep[rep["fraction"].astype(float) == 1.0].pivot_table(
        index=units, columns="method", values=["id_acc", "ood_acc"], dropna=False)
    for metric in ("id_acc", "ood_acc"):
        for other in ("mlp", "lp"):
            if (metric, "nmtune") in wide and (metric, other) in wide:
                d = (wide[(metric, "nmtune")] - wide[(metric, other)]).to_numpy()
                e = mean_ci(d)
                out["4"].append({"backbone": "all", "what": f"{metric.split('_')[0].upper()} acc, NMTune - {other.upper()}",
                                 "estimate": e, "held": e.verdict == "positive"})
    return out


CLAIM_TEXT = {
    "1": "Slight pre-training noise (5-10 %) raises in-domain linear-probe accuracy",
    "2": "Any pre-training noise lowers out-of-domain linear-probe accuracy",
    "3": "Noise raises the singular value entropy (SVE) and lowers the largest singular value ratio (LSVR) of the frozen features",
    "4": "NMTune improves on the MLP head (about +1 point) and on the linear probe, ID and OOD",
}


def claims_markdown(runs: pd.DataFrame, suite: str) -> str:
    """The claims section of a suite's results: a table per claim and a one-line verdict."""
    if runs is None or len(runs) == 0:
        return f"# Claims of the paper in suite `{suite}`\n\nNo finished head fits yet.\n"
    found = analyse(runs)
    lines = [f"# Claims of the paper in suite `{suite}`", "",
             "Differences in accuracy points (percent), mean [95 % t-interval] over pre-training seeds "
             "(head seeds averaged first; claim 4: over every backbone x noise ratio x seed unit). "
             "Slopes: change per unit of noise ratio (x100 for accuracies). A finding holds only if "
             "its interval excludes 0 in the claimed direction. Where an interval includes 0, the last "
             "column says how many replicates (claims 1-2: pre-training seeds; claim 4: units; slopes: pre-training runs) "
             "would exclude 0 with 80 % probability if the observed effect and spread were the truth.", ""]
    for c in ("1", "2", "3", "4"):
        rows = found[c]
        lines += [f"## Claim {c}: {CLAIM_TEXT[c]}", ""]
        if not rows:
            lines += ["Not testable in this suite (it needs pre-training noise ratios including 0 %, "
                      "or several heads).", ""]
            continue
        lines += ["| backbone | quantity | estimate | supports the claim | n to decide (80 % power) |",
                  "|---|---|---|---|---|"]
        for r in rows:
            scale = r.get("scale", 100.0)
            e = r["estimate"]
            need = e.seeds_needed() if e.verdict == "interval includes 0" else None
            power = f"{need} ({'replicates' if e.kind == 'mean' else 'pre-training runs'})" if need else ""
            lines.append(f"| {r['backbone']} | {r['what']} | {e.fmt(scale, 2 if scale == 100 else 4)} | "
                         f"{'yes' if r['held'] else 'no (' + e.verdict + ')'} | {power} |")
        held = sum(r["held"] for r in rows)
        testable = sum(r["estimate"].verdict != "too few replicates" for r in rows)
        if testable == 0:
            verdict = "not testable here (too few replicates: run more seeds)"
        else:
            verdict = "held" if held == len(rows) else "partly held" if held else "did not hold"
        lines += ["", f"**Verdict: {verdict}** ({held} of {len(rows)} findings support it, "
                  f"{testable} testable).", ""]
    return "\n".join(lines)
