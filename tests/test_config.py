"""Suite files: the shipped suites validate and expand as documented; bad files fail loudly,
naming the file, the key path, the bad value and what is allowed, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmark.config import check_data_available, load_suite, validate_suite
from benchmark.errors import ConfigError, DatasetUnavailable
from benchmark.plan import pretrain_jobs

SUITES = Path(__file__).resolve().parents[1] / "suites"
MINIMAL = {
    "name": "t",
    "pretrain": [
        {"objective": "supervised", "corpus": "fashion-mnist", "arch": "test_resnet", "noise": {"ratios": [0.0, 0.1]}}
    ],
    "downstream": {"id": ["mnist-5k"], "ood": ["digits-from-mnist"]},
}


def write(tmp_path: Path, data, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def problems(path: Path, check_names: bool = False) -> str:
    with pytest.raises(ConfigError) as info:
        load_suite(path, check_names=check_names)
    msg = str(info.value)
    assert str(path) in msg and "nothing was run" in msg
    return msg


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_validates_with_registry_names(path):
    suite = load_suite(path)
    assert suite.source == str(path) and suite.name == path.stem
    assert suite.selection.split == "val"
    assert suite.tracking.uri.startswith("sqlite:///") and Path(suite.tracking.uri[10:]).is_absolute()
    jobs = pretrain_jobs(suite)
    assert len(jobs) == sum(len(b.noise.ratios) * len(b.seeds) for b in suite.pretrain)  # blocks x ratios x seeds
    assert len({j.key for j in jobs}) == len(jobs)  # every job has its own checkpoint dir


def test_head_grid_axes_apply_to_the_methods_that_take_them():
    d = load_suite(SUITES / "quick.yaml", check_names=False).downstream
    assert d.axes("lp") == {} and d.axes("mlp") == {"lr": [0.001, 0.003, 0.01]}
    assert d.axes("nmtune") == {"lam": [0.01, 0.1], "lr": [0.001, 0.003, 0.01]}
    assert d.fixed_hparams("lp") == {}  # the converged LP takes none of them (its L2 grid is its own)
    shared = {"depth": 1, "epochs": 30, "batch_size": 128, "epoch_selection": "best_val"}
    assert d.fixed_hparams("mlp") == shared  # preset is NMTune's alone
    assert d.fixed_hparams("nmtune") == {"preset": "paper", **shared}
    own = validate_suite(
        {**MINIMAL, "downstream": {**MINIMAL["downstream"], "hparams": {"epochs": 5, "lp": {"l2_steps": 9}}}},
        check_names=False,
    ).downstream
    assert own.fixed_hparams("lp") == {"l2_steps": 9} and own.fixed_hparams("mlp") == {"epochs": 5}


def test_defaults_are_resolved_and_override_follows_work_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = validate_suite(dict(MINIMAL), check_names=False)
    assert s.work_dir == str(tmp_path / ".nmlbench")
    assert s.tracking.uri == f"sqlite:///{tmp_path / '.nmlbench' / 'mlflow.db'}"
    assert s.tracking.experiment == "t"
    assert s.pretrain[0].noise.kind == "symmetric" and s.pretrain[0].name == "test_resnet-supervised"
    moved = s.override(work_dir=tmp_path / "elsewhere", data_root=tmp_path / "data")
    assert moved.tracking.uri == f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    assert moved.data_root == str(tmp_path / "data")
    assert all(j.data_root == str(tmp_path / "data") for j in pretrain_jobs(moved))
    clip = validate_suite(
        {**MINIMAL, "pretrain": [{"objective": "clip", "corpus": "fashion-mnist", "arch": "nml-tiny-clip"}]},
        check_names=False,
    )
    assert [j.noise_kind for j in pretrain_jobs(clip)] == ["swap"]  # clip's default noise


def test_schema_errors_name_path_value_and_allowed(tmp_path):
    bad = {
        "name": "bad",
        "colour": "red",
        "pretrain": [
            {
                "objective": "supervised",
                "corpus": "fashion-mnist",
                "arch": "x",
                "noise": {"kind": "symmetric", "ratios": [0.1, 1.5]},
                "epochs": 0,
                "lrr": 1,
            }
        ],
        "downstream": {"id": ["mnist-5k"], "heads": ["lp", "svm"], "fractions": [0.0], "lambdas": [0.1]},
        "selection": {"split": "oracle", "val_fraction": 0.7},
    }
    msg = problems(write(tmp_path, bad))
    for expected in [
        "pretrain[0].noise.ratios[1] = 1.5: must be in [0, 1)",
        "pretrain[0].epochs = 0: must be >= 1",
        "pretrain[0]: unknown key 'lrr' (allowed: name, objective, corpus, arch, model_kwargs, noise, seeds,",
        "<top level>: unknown key 'colour' (allowed: name, work_dir, data_root, pretrain, backbones, downstream,",
        "downstream.heads = ['lp', 'svm']: unknown head(s) 'svm' "
        "(registered heads: lp, lp_adamw, mlp, nmtune, lgm, finetune)",
        "downstream.fractions[0] = 0.0: must be in (0, 1]",
        "downstream: unknown key 'lambdas' (allowed: id, ood, heads, grid, hparams,",
        "it moved to downstream.grid: {lam: [...]}",
        "selection.split = 'oracle': only 'val' is allowed",
        "the test set is never used for selection",
        "selection.val_fraction = 0.7: must be in (0, 0.5]",
    ]:
        assert expected in msg, (expected, msg)
    assert "(9 problems, schema)" in msg


def test_old_suite_keys_still_load_under_their_new_names_with_a_notice(tmp_path, capsys):
    """``downstream.methods`` is ``heads`` now and the MLP's ``ratio`` is ``width``: a suite file
    written before the rename loads to the same suite and prints where each old key went."""
    old = {
        **MINIMAL,
        "downstream": {
            "id": ["mnist-5k"],
            "methods": ["lp", "mlp"],
            "grid": {"ratio": [2, 4]},
            "hparams": {"mlp": {"depth": 2}},
        },
    }
    new = {
        **MINIMAL,
        "downstream": {
            "id": ["mnist-5k"],
            "heads": ["lp", "mlp"],
            "grid": {"width": [2, 4]},
            "hparams": {"mlp": {"depth": 2}},
        },
    }
    suite = load_suite(write(tmp_path, old))
    err = capsys.readouterr().err
    assert (
        "downstream.methods is now downstream.heads" in err
        and "downstream.grid.ratio is now downstream.grid.width" in err
    )
    assert suite.downstream == load_suite(write(tmp_path, new)).downstream
    assert capsys.readouterr().err == ""  # the new names: no notice
    assert suite.downstream.heads == ["lp", "mlp"] and suite.downstream.axes("mlp") == {"width": [2, 4]}
    nested = {**MINIMAL, "downstream": {"id": ["mnist-5k"], "heads": ["mlp"], "hparams": {"mlp": {"ratio": 2}}}}
    assert load_suite(write(tmp_path, nested)).downstream.fixed_hparams("mlp") == {"width": 2}
    assert "downstream.hparams.mlp.ratio is now downstream.hparams.mlp.width" in capsys.readouterr().err
    both = {**MINIMAL, "downstream": {"id": ["mnist-5k"], "heads": ["lp"], "methods": ["lp"]}}
    assert "both 'methods' and 'heads' are given" in problems(write(tmp_path, both))


def test_head_grid_errors_name_axis_value_and_method(tmp_path):
    grid = {"lam": [0.1, -1], "depth": [0], "colour": [1]}
    bad = {
        **MINIMAL,
        "downstream": {
            "id": ["mnist-5k"],
            "heads": ["lp", "mlp"],
            "grid": grid,
            "hparams": {"preset": "paper", "batch_size": 1, "nmtune": {"lam": 2}},
        },
    }
    msg = problems(write(tmp_path, bad))
    for expected in [
        "downstream.grid.lam: no listed head takes it (it applies to nmtune, finetune; heads: lp, mlp)",
        "downstream.grid.colour: unknown hyper-parameter (known: epochs, batch_size, lr,",
        "downstream.hparams.preset: no listed head takes it (it applies to nmtune, finetune;",
        "downstream.hparams.nmtune: head 'nmtune' is not in heads (lp, mlp)",
        "downstream.hparams (mlp): batch_size must be >= 2, got 1",
    ]:
        assert expected in msg, (expected, msg)
    ok = {**MINIMAL, "downstream": {"id": ["mnist-5k"], "grid": {"lam": [0.1, -1], "depth": [1, 0]}}}
    msg = problems(write(tmp_path, ok))
    assert "downstream.grid.lam[1] = -1 (nmtune): lam=-1.0 must be a finite number >= 0" in msg
    assert "downstream.grid.depth[1] = 0 (mlp): depth must be >= 1, got 0" in msg
    assert "downstream.grid.depth[1] = 0 (nmtune): depth must be >= 1, got 0" in msg
    assert "(3 problems, schema)" in msg


@pytest.mark.parametrize(
    "noise,objective,needle",
    [
        ({"kind": "symmetric"}, "clip", "does not apply to objective 'clip'"),
        ({"kind": "swap"}, "supervised", "'swap' applies only to objective 'clip'"),
        ({"kind": "asymmetric"}, "supervised", "needs noise.class_map"),
        ({"kind": "random"}, "supervised", "pretrain[0].noise.kind = 'random': must be one of"),
        ({"ratios": [0.1, 0.1]}, "supervised", "must not repeat values (repeated: 0.1)"),
    ],
)
def test_noise_rules(tmp_path, noise, objective, needle):
    data = {**MINIMAL, "pretrain": [{**MINIMAL["pretrain"][0], "objective": objective, "noise": noise}]}
    assert needle in problems(write(tmp_path, data))


def test_asymmetric_class_map_is_never_dropped(tmp_path):
    data = {
        **MINIMAL,
        "pretrain": [{**MINIMAL["pretrain"][0], "noise": {"kind": "asymmetric", "ratios": [0.2], "class_map": {3: 5}}}],
    }
    suite = load_suite(write(tmp_path, data), check_names=False)
    [job] = pretrain_jobs(suite)
    assert job.class_map == {3: 5} and job.noise_kind == "asymmetric"
    # the map is part of what the model learns, so it is part of the job's key
    other = load_suite(
        write(
            tmp_path,
            {
                **data,
                "pretrain": [
                    {**data["pretrain"][0], "noise": {"kind": "asymmetric", "ratios": [0.2], "class_map": {3: 6}}}
                ],
            },
            "other.yaml",
        ),
        check_names=False,
    )
    assert pretrain_jobs(other)[0].key != job.key


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = write(tmp_path, "name: x\ndownstream:\n  id: [mnist-5k\n  ood: []\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+, column \d+") as info:
        load_suite(p)
    assert str(p) in str(info.value)
    assert "the file is empty" in problems(write(tmp_path, "", "empty.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")


def test_whole_section_rules(tmp_path):
    msg = problems(write(tmp_path, {"name": "x", "downstream": {"id": []}}))
    assert "downstream: downstream needs at least one task" in msg
    two = {**MINIMAL, "backbones": [{"family": "timm", "arch": "test_resnet", "name": "test_resnet-supervised"}]}
    assert "display names must be unique, repeated: test_resnet-supervised" in problems(write(tmp_path, two))
    none = {"name": "x", "downstream": {"id": ["mnist-5k"]}}
    assert "at least one 'pretrain' block or one frozen 'backbones' entry" in problems(write(tmp_path, none))


def test_unknown_names_list_what_exists(tmp_path):
    data = {
        **MINIMAL,
        "pretrain": [{**MINIMAL["pretrain"][0], "corpus": "fashion-mnst"}],
        "backbones": [{"family": "keras", "arch": "x"}],
        "downstream": {"id": ["mnist-5k", "cifar-11"], "ood": ["digits-from-mars"]},
    }
    msg = problems(write(tmp_path, data), check_names=True)
    assert "(4 problems, unknown names)" in msg
    assert "pretrain[0].corpus = 'fashion-mnst': unknown dataset 'fashion-mnst'; known datasets:" in msg
    assert "downstream.id[1] = 'cifar-11'" in msg and "fashion-mnist" in msg and "sklearn-digits" in msg
    assert "downstream.ood[0] = 'digits-from-mars'" in msg and "digits-from-fonts" in msg
    assert "backbones[0].family = 'keras': unknown backbone family (known:" in msg and "timm" in msg


def test_known_but_absent_data_is_valid_yet_reported_before_running(tmp_path):
    suite = load_suite(SUITES / "paper-supervised.yaml").override(data_root=tmp_path)
    with pytest.raises(DatasetUnavailable) as info:
        check_data_available(suite)
    msg = str(info.value)
    # 1 corpus + 14 ID sets + DomainNet real/sketch/painting/clipart + ImageNet V2/Sketch/A/R
    assert "needs 23 data set(s)" in msg and str(tmp_path) in msg
    for name in ("imagenet", "cifar10", "country211", "domainnet-clipart", "imagenet-r"):
        assert f"  - {name}: " in msg
    check_data_available(load_suite(SUITES / "quick.yaml"))  # embedded: nothing missing
