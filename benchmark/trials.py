"""How a plan's fits are grouped into Ray Tune trials and in what order the trials run.

Kept apart from ``plan.py`` (what the suite will do) because this is scheduling: grouping and
order change how fast a sweep ends, never what it computes (every fit is seeded and keyed by
itself, so results are the same in any grouping and order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from benchmark.hashing import config_hash
from benchmark.plan import FitSpec, PairPlan, TrialPlan, rows_digest


def plan_trials(fits: Iterable[FitSpec], fits_per_trial: int) -> list[TrialPlan]:
    """Batch fits by pair, at most ``fits_per_trial`` per trial, in a stable order.

    Fits that the probe can train as one computation (same ``HParams.batch_key`` and training
    rows) are kept in the same trial: whole groups are packed into trials, and only a group
    larger than ``fits_per_trial`` is split. Fits with different downstream label noise never
    share a trial: a trial's fits train on one set of labels.
    """
    cap = max(1, fits_per_trial)
    by_pair: dict[tuple[str, str], dict[tuple, list[FitSpec]]] = {}
    for f in fits:
        noise = config_hash(f.label_noise.key_dict()) if f.label_noise is not None else ""
        groups = by_pair.setdefault((f.pair, noise), {})
        groups.setdefault((repr(f.hparams.batch_key()), rows_digest(f.train_rows)), []).append(f)
    trials = []
    for pair in sorted(by_pair):
        chunks: list[list[FitSpec]] = [[]]
        for _, group in sorted(by_pair[pair].items()):
            group = sorted(group, key=lambda f: f.key)
            parts = [group[i : i + cap] for i in range(0, len(group), cap)]
            for part in parts:
                if len(chunks[-1]) + len(part) > cap:
                    chunks.append([])
                chunks[-1].extend(part)
        for chunk in chunks:
            if chunk:
                trials.append(TrialPlan(config_hash([f.key for f in chunk]), pair[0], tuple(chunk)))
    return trials


def largest_trials_first(
    trials: Sequence[TrialPlan], pairs: Sequence[PairPlan], widths: dict[str, int]
) -> list[TrialPlan]:
    """``trials`` ordered by their work, largest first (ties keep their order).

    Why: trials run ``max_concurrent`` at a time, and a sweep ends when its last trial does; a
    large trial left for the end runs alone while the other slots idle. Largest first leaves
    only small trials to even out the slots' ends (longest-processing-time-first). The work of a
    trial is estimated as the sum over its fits of training rows x feature width (``widths``:
    pair key -> width; a pair without one counts as width 1). Only the order changes: every fit
    is seeded and keyed by itself, so results are the same in any order.
    """
    rows = {p.key: len(p.task.train) for p in pairs}

    def work(t: TrialPlan) -> int:
        n = sum(len(f.train_rows) if f.train_rows is not None else rows.get(t.pair, 1) for f in t.fits)
        return n * int(widths.get(t.pair, 1))

    return sorted(trials, key=lambda t: -work(t))
