"""The numbers quoted in ``results/README.md`` are the numbers the suites wrote (issue 23 item 8).

Why: prose drifted from the record before (a head called best where the table says otherwise,
figures rounded by hand). A block of the README fenced by ``<!-- numbers from: FOLDER[, FOLDER]
-->`` ... ``<!-- end numbers -->`` may quote only numbers printed in those folders' files
(``claims.md``, ``leaderboard.md`` / ``.csv``, ``provenance.json`` ...), digit for digit: each
decimal number of the block must appear as a number of its own in one of them (a FOLDER may also
be a single file, e.g. ``lp_vs_sklearn.md``; signs are not compared). A results folder
with a ``provenance.json`` must have been made from the suite file as it is now (same sha256):
after a suite changes, its folder is regenerated, not left to describe another study.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
BLOCK = re.compile(r"<!-- numbers from: ([^>]+?) -->(.*?)<!-- end numbers -->", re.S)
NUMBER = re.compile(r"(?<![\w.])[+\-−]?(\d+\.\d+)(?![\d])")


def _blocks(text: str) -> list[tuple[list[str], str]]:
    return [([f.strip() for f in m.group(1).split(",")], m.group(2)) for m in BLOCK.finditer(text)]


def _numbers_in(folders: list[str]) -> set[str]:
    found: set[str] = set()
    for folder in folders:
        d = RESULTS / folder
        assert d.exists(), f"results/README.md quotes results/{folder}, which does not exist"
        for path in d.iterdir() if d.is_dir() else [d]:
            if path.suffix in (".md", ".csv", ".json"):
                found.update(NUMBER.findall(path.read_text()))
    return found


def quoted_but_not_written(text: str) -> list[tuple[str, str]]:
    """(folders, number) for every number of a fenced block that its folders never print."""
    bad = []
    for folders, block in _blocks(text):
        written = _numbers_in(folders)
        bad += [(", ".join(folders), n) for n in NUMBER.findall(block) if n not in written]
    return bad


def test_every_quoted_number_is_in_the_files_of_its_folder() -> None:
    text = (RESULTS / "README.md").read_text()
    blocks = _blocks(text)
    assert {f for folders, _ in blocks for f in folders} >= {"embedded-study", "mobilenet"}
    assert sum(len(NUMBER.findall(b)) for _, b in blocks) > 50  # the claims sections are fenced
    assert quoted_but_not_written(text) == []


def test_the_check_catches_a_number_rounded_by_hand(tmp_path) -> None:
    """A figure the files print as 2.205 quoted as 2.21 (or any other digit) is caught."""
    lb = (RESULTS / "embedded-study" / "leaderboard.md").read_text()
    value = NUMBER.findall(lb)[0]
    written = _numbers_in(["embedded-study"])
    digits = len(value.split(".")[1])
    # the nearest hand-rounded neighbour the folder does not print (a large study prints many)
    wrong = next(w for k in range(1, 100) if (w := f"{float(value) + k * 10**-digits:.{digits}f}") not in written)
    good = f"<!-- numbers from: embedded-study -->\nLP: {value} %\n<!-- end numbers -->"
    bad = f"<!-- numbers from: embedded-study -->\nLP: {wrong} %\n<!-- end numbers -->"
    assert quoted_but_not_written(good) == []
    assert quoted_but_not_written(bad) == [("embedded-study", wrong)]


@pytest.mark.parametrize("folder", sorted(p.name for p in RESULTS.iterdir() if (p / "provenance.json").is_file()))
def test_a_results_folder_was_made_from_the_suite_file_as_it_is(folder: str) -> None:
    prov = json.loads((RESULTS / folder / "provenance.json").read_text())
    assert prov["suite_file"], f"results/{folder}/provenance.json names no suite file"
    path = Path(prov["suite_file"])
    path = path if path.is_absolute() else ROOT / path
    if not path.is_file():  # made in another checkout: the same file under suites/
        path = ROOT / "suites" / path.name
    assert path.is_file(), f"results/{folder} names suite {prov['suite_file']}, which is gone"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == prov["suite_sha256"], (
        f"results/{folder} was made from another version of {path.name}: regenerate it "
        "(nmlbench run + report) or restore the suite file"
    )
    assert prov["commit"] and prov["machine"]["cpu_model"] and prov["date"]


def test_every_suite_results_folder_says_where_it_came_from() -> None:
    """A folder a suite wrote (it has a leaderboard) records commit, suite hash, machine and date:
    the studies' numbers are citable only with the tree and machine that made them."""
    suite_folders = sorted(p.name for p in RESULTS.iterdir() if (p / "leaderboard.md").is_file())
    assert {"embedded-study", "mobilenet", "contenders"} <= set(suite_folders)
    missing = [f for f in suite_folders if not (RESULTS / f / "provenance.json").is_file()]
    assert missing == [], f"results/{missing} lack provenance.json: regenerate with `nmlbench report`"
