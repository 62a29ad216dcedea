"""The summary table of ``results/performance.md``, written from the measurements themselves.

Run after ``make bench``::

    .venv/bin/python benchmarks/summary.py            # prints a markdown table

Every row is one ``results/bench/<name>.json`` (written by ``benchutil.record``): its headline
ratio, the target, whether it was met, and the machine load and time it was measured at, so the
table in ``results/performance.md`` is pasted from the measurements rather than typed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"


def rows(folder: Path = RESULTS) -> list[dict]:
    """Every measurement record in ``folder`` (not pytest-benchmark's own ``bench.json``), by time."""
    out = []
    for path in sorted(folder.glob("*.json")):
        if path.name == "bench.json":
            continue
        rec = json.loads(path.read_text())
        if "ratio" in rec and "target" in rec:
            out.append(rec)
    return sorted(out, key=lambda r: r.get("measured_at", ""))


def markdown(records: list[dict]) -> str:
    lines = [
        "| measurement | what | ratio | target | met | load (1 min) | measured at (UTC) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        load = (r.get("machine") or {}).get("load_average_1_5_15") or ["?"]
        lines.append(
            f"| `{r['name']}` | {r['what']} | **{r['ratio']:g}** | {r['target']} | "
            f"{'yes' if r['met'] else 'no'} | {load[0]} | {r.get('measured_at', '?')[:16]} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default=str(RESULTS))
    print(markdown(rows(Path(ap.parse_args().folder))))


if __name__ == "__main__":
    main()
