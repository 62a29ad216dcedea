"""Suite files: the shipped suites validate and expand as documented; bad files fail loudly,
naming the file, the key path, the bad value and what is allowed, before anything runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from benchmark.config import check_data_available, load_suite, validate_suite
from benchmark.errors import ConfigError, DatasetUnavailable
from benchmark.pretrain import PretrainJob

SUITES = Path(__file__).resolve().parents[1] / "suites"
MINIMAL = {
    "name": "t",
    "pretrain": [{"objective": "supervised", "corpus": "fashion-mnist", "arch": "test_resnet",
                  "noise": {"ratios": [0.0, 0.1]}}],
    "downstream": {"id": ["mnist-5k"], "ood": ["digits-from-mnist"]},
}


def registries_or_skip() -> None:
    try:
        import benchmark.backbones  # noqa: F401
        import benchmark.data  # noqa: F401
    except ImportError as exc:  # pragma: no cover - only before the registries land
        pytest.skip(f"data/backbone registries not importable yet: {exc}")


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
    registries_or_skip()
    suite = load_suite(path)
    assert suite.source == str(path) and suite.name == path.stem
    assert suite.selection.split == "val"
    assert suite.tracking.uri.startswith("sqlite:///") and Path(suite.tracking.uri[10:]).is_absolute()
    assert suite.pretrain_jobs() or suite.frozen_backbones()
    jobs = suite.pretrain_jobs()
    assert len({j.key for j in jobs}) == len(jobs)  # every job has its own checkpoint dir


def test_quick_suite_expands_to_the_documented_grid():
    s = load_suite(SUITES / "quick.yaml", check_names=False)
    jobs = s.pretrain_jobs()
    sup = [j for j in jobs if j.objective == "supervised"]
    clip = [j for j in jobs if j.objective == "clip"]
    assert [j.noise_ratio for j in sup] == [0.0, 0.05, 0.1, 0.2, 0.3]
    assert {(j.arch, j.corpus, j.noise_kind, j.seed, j.epochs, j.train_subset, j.image_size) for j in sup} == {
        ("test_resnet", "fashion-mnist", "symmetric", 0, 2, 10000, 32)}
    assert [(j.arch, j.noise_kind, j.noise_ratio) for j in clip] == [
        ("nml-tiny-clip", "swap", 0.0), ("nml-tiny-clip", "swap", 0.3)]
    assert all(j.corpus == "fashion-mnist" for j in clip)
    d = s.downstream
    assert d.tasks() == [("fashion-mnist", "id"), ("mnist-5k", "id"), ("animal-mnist", "id"),
                         ("sklearn-digits", "id"), ("digits-from-mnist", "ood"), ("digits-from-fonts", "ood")]
    assert [len(d.grid(m)) for m in d.methods] == [1, 2, 4]  # LP; MLP depths; NMTune lambdas x depths
    assert d.grid("nmtune")[0] == {"lambda": 0.01, "depth": 1}
    assert (d.max_train, d.epochs, d.batch_size, d.seeds, d.fractions) == (2000, 15, 128, [0], [1.0])
    assert (s.selection.split, s.selection.val_fraction) == ("val", 0.2)
    head_fits = len(jobs) * len(d.tasks()) * sum(len(d.grid(m)) for m in d.methods)
    assert head_fits == 7 * 6 * 7


def test_study_and_mobilenet_suites():
    study = load_suite(SUITES / "embedded-study.yaml", check_names=False)
    assert len(study.pretrain_jobs()) == 3 * 7 and study.downstream.seeds == [0, 1]
    mob = load_suite(SUITES / "mobilenet.yaml", check_names=False)
    assert mob.pretrain_jobs() == []
    assert mob.frozen_backbones() == [{"name": "mobilenet_v2-in1k", "family": "torchvision",
                                       "arch": "mobilenet_v2", "weights": "imagenet", "image_size": 64}]


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
    assert all(j.data_root == str(tmp_path / "data") for j in moved.pretrain_jobs())
    clip = validate_suite({**MINIMAL, "pretrain": [{"objective": "clip", "corpus": "fashion-mnist",
                                                    "arch": "nml-tiny-clip"}]}, check_names=False)
    assert [j.noise_kind for j in clip.pretrain_jobs()] == ["swap"]  # clip's default noise


def test_schema_errors_name_path_value_and_allowed(tmp_path):
    bad = {
        "name": "bad", "colour": "red",
        "pretrain": [{"objective": "supervised", "corpus": "fashion-mnist", "arch": "x",
                      "noise": {"kind": "symmetric", "ratios": [0.1, 1.5]}, "epochs": 0, "lrr": 1}],
        "downstream": {"id": ["mnist-5k"], "methods": ["lp", "svm"], "lambdas": [0.0],
                       "depths": [0], "fractions": [0.0], "lr": {"xgb": 1.0}},
        "selection": {"split": "oracle", "val_fraction": 0.7},
    }
    msg = problems(write(tmp_path, bad))
    for expected in [
        "pretrain[0].noise.ratios[1] = 1.5: must be in [0, 1)",
        "pretrain[0].epochs = 0: must be >= 1",
        "pretrain[0]: unknown key 'lrr' (allowed: name, objective, corpus, arch, model_kwargs, noise, seeds,",
        "<top level>: unknown key 'colour' (allowed: name, work_dir, data_root, pretrain, backbones, downstream,",
        "downstream.methods[1] = 'svm': must be one of 'lp', 'mlp' or 'nmtune'",
        "downstream.lambdas[0] = 0.0: must be > 0",
        "downstream.depths[0] = 0: must be >= 1",
        "downstream.fractions[0] = 0.0: must be in (0, 1]",
        "downstream.lr: unknown key 'xgb'",
        "selection.split = 'oracle': only 'val' is allowed",
        "the test set is never used for selection",
        "selection.val_fraction = 0.7: must be in (0, 0.5]",
    ]:
        assert expected in msg, (expected, msg)
    assert "(11 problems, schema)" in msg


@pytest.mark.parametrize("noise,objective,needle", [
    ({"kind": "symmetric"}, "clip", "does not apply to objective 'clip'"),
    ({"kind": "swap"}, "supervised", "'swap' applies only to objective 'clip'"),
    ({"kind": "asymmetric"}, "supervised", "needs noise.class_map"),
    ({"kind": "random"}, "supervised", "pretrain[0].noise.kind = 'random': must be one of"),
    ({"ratios": [0.1, 0.1]}, "supervised", "must not repeat values (repeated: 0.1)"),
])
def test_noise_rules(tmp_path, noise, objective, needle):
    data = {**MINIMAL, "pretrain": [{**MINIMAL["pretrain"][0], "objective": objective, "noise": noise}]}
    assert needle in problems(write(tmp_path, data))


def test_asymmetric_class_map_is_never_dropped(tmp_path):
    data = {**MINIMAL, "pretrain": [{**MINIMAL["pretrain"][0],
                                     "noise": {"kind": "asymmetric", "ratios": [0.2], "class_map": {3: 5}}}]}
    suite = load_suite(write(tmp_path, data), check_names=False)
    if "class_map" in {f.name for f in dataclasses.fields(PretrainJob)}:
        assert suite.pretrain_jobs()[0].class_map == {3: 5}
    else:
        with pytest.raises(ConfigError, match=r"pretrain\[0\].noise.class_map cannot be passed on"):
            suite.pretrain_jobs()


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
    registries_or_skip()
    data = {**MINIMAL,
            "pretrain": [{**MINIMAL["pretrain"][0], "corpus": "fashion-mnst"}],
            "backbones": [{"family": "keras", "arch": "x"}],
            "downstream": {"id": ["mnist-5k", "cifar-11"], "ood": ["digits-from-mars"]}}
    msg = problems(write(tmp_path, data), check_names=True)
    assert "(4 problems, unknown names)" in msg
    assert "pretrain[0].corpus = 'fashion-mnst': unknown dataset 'fashion-mnst'; known datasets:" in msg
    assert "downstream.id[1] = 'cifar-11'" in msg and "fashion-mnist" in msg and "sklearn-digits" in msg
    assert "downstream.ood[0] = 'digits-from-mars'" in msg and "digits-from-fonts" in msg
    assert "backbones[0].family = 'keras': unknown backbone family (known:" in msg and "timm" in msg


def test_known_but_absent_data_is_valid_yet_reported_before_running(tmp_path):
    registries_or_skip()
    suite = load_suite(SUITES / "paper-supervised.yaml").override(data_root=tmp_path)
    with pytest.raises(DatasetUnavailable) as info:
        check_data_available(suite)
    msg = str(info.value)
    # 1 corpus + 14 ID sets + DomainNet real/sketch/painting/clipart + ImageNet V2/Sketch/A/R
    assert "needs 23 data set(s)" in msg and str(tmp_path) in msg
    for name in ("imagenet", "cifar10", "country211", "domainnet-clipart", "imagenet-r"):
        assert f"  - {name}: " in msg
    check_data_available(load_suite(SUITES / "quick.yaml"))  # embedded: nothing missing
