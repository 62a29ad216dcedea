"""The nmlbench command: listings, bad input with exit status 2 and a message, paper suites."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from benchmark.cli import app, resolve_suite_path

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

EMBEDDED = ["fashion-mnist", "mnist-5k", "animal-mnist", "sklearn-digits", "digits-printed", "digits-handwriting"]


def test_datasets_lists_every_embedded_set_as_available() -> None:
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0, res.output
    rows = {line.split("│")[1].strip(): line for line in res.output.splitlines() if line.count("│") > 3}
    for name in EMBEDDED:
        assert name in rows, f"{name} missing from `nmlbench datasets`"
        assert " yes " in rows[name], rows[name]
    assert " no " in rows["imagenet"] and "imagenet/{train,val}" in rows["imagenet"]


def test_backbones_lists_built_in_families() -> None:
    res = runner.invoke(app, ["backbones"])
    assert res.exit_code == 0
    for family in ("timm", "open_clip", "torchvision", "nmlbench", "blackbox"):
        assert family in res.output


@pytest.mark.parametrize("name", ["quick", "embedded-study", "mobilenet", "paper-supervised", "paper-clip"])
def test_every_shipped_suite_validates_from_the_cli(name: str) -> None:
    res = runner.invoke(app, ["validate", name])
    assert res.exit_code == 0, res.output
    assert "valid" in res.output


def test_quick_is_the_default_suite() -> None:
    assert resolve_suite_path(None) == (REPO / "suites" / "quick.yaml").resolve()


def test_unknown_suite_lists_known_suites() -> None:
    res = runner.invoke(app, ["validate", "no-such-suite"])
    assert res.exit_code == 2
    assert "no-such-suite" in res.output and "quick" in res.output


def _write(tmp: Path, data: dict) -> Path:
    p = tmp / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    "mutate, needles",
    [
        (
            lambda s: s["pretrain"][0]["noise"].update(ratios=[0.0, 1.5]),
            ["pretrain[0].noise.ratios[1]", "1.5", "[0, 1)"],
        ),
        (lambda s: s["downstream"].update(id=["fashion-mnist", "cifar-11"]), ["cifar-11", "fashion-mnist"]),
        (lambda s: s.update(colour="blue"), ["colour"]),
        (lambda s: s["pretrain"][0].update(epochs="three"), ["pretrain[0].epochs", "three"]),
    ],
)
def test_malformed_suites_fail_before_anything_runs(tmp_path: Path, mutate, needles) -> None:
    suite = yaml.safe_load((REPO / "suites" / "quick.yaml").read_text())
    mutate(suite)
    path = _write(tmp_path, suite)
    res = runner.invoke(app, ["run", str(path), "--work-dir", str(tmp_path / "work")])
    assert res.exit_code == 2, res.output
    assert str(path) in res.output  # the full path of the file at fault
    for n in needles:
        assert n in res.output, (n, res.output)
    assert not (tmp_path / "work").exists(), "a bad suite must not start anything"


def test_paper_suite_without_its_data_root_names_the_layout(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["run", "paper-supervised", "--data-root", str(tmp_path / "missing"), "--work-dir", str(tmp_path / "work")]
    )
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "imagenet" in out and str(tmp_path / "missing") in out
    assert "train" in out  # the expected layout is spelled out


def test_leaderboard_of_a_suite_without_runs_says_so(tmp_path: Path) -> None:
    res = runner.invoke(app, ["leaderboard", "quick", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert res.exit_code == 0
    assert "nothing has been run yet" in res.output and str(tmp_path / "empty.db") in res.output
    assert not (tmp_path / "empty.db").exists()  # reading never creates a store


def test_validate_and_plan_list_the_code_a_suite_imports(tmp_path: Path) -> None:
    """A suite naming a blackbox `module:function` runs that module wherever features are computed:
    `validate` and `plan` name it (read from the file, nothing imported); a suite of built-in
    families says it runs nml-bench's code only."""
    path = _write(
        tmp_path,
        {
            "name": "bbx",
            "work_dir": str(tmp_path / "work"),
            "backbones": [{"family": "blackbox", "target": "my_lab.embed:encode", "version": "1", "name": "lab model"}],
            "downstream": {"id": ["sklearn-digits"], "ood": [], "heads": ["lp"], "seeds": [0]},
        },
    )
    listing = "  my_lab.embed  (backbone 'lab model': blackbox target my_lab.embed:encode)"
    for args in (["validate", str(path)], ["plan", str(path)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "trust this suite as you would a script" in res.output and listing in res.output.splitlines()
    assert not (tmp_path / "work").exists()
    res = runner.invoke(app, ["validate", "quick"])
    assert res.exit_code == 0 and "code it runs: nml-bench's own modules and their dependencies only" in res.output


def test_submit_to_an_address_where_no_head_answers_names_the_fix(tmp_path: Path, monkeypatch) -> None:
    from support import free_port

    # No Ray token at hand, so submit leaves this process's RAY_AUTH_MODE as it is.
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    res = runner.invoke(app, ["submit", "quick", "--address", address])
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert f"error: no Ray job server answers at {address}" in out and "cluster/start-local-head.sh" in out
    assert "Traceback" not in out
