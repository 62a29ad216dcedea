"""Pre-training job rules: one set, shared by the suite loader and the launcher, importable
without torch or Ray."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from benchmark.config import validate_suite
from benchmark.errors import ConfigError
from benchmark.pretrain import (
    NOISE_KINDS,
    OBJECTIVES,
    PretrainJob,
    check_job,
    default_noise_kind,
    noise_problem,
)

SUP = PretrainJob(
    objective="supervised",
    corpus="fashion-mnist",
    arch="test_resnet",
    noise_kind="symmetric",
    noise_ratio=0.2,
    batch_size=64,
    train_subset=1000,
)
CLIP = PretrainJob(
    objective="clip",
    corpus="fashion-mnist",
    arch="nml-tiny-clip",
    noise_kind="swap",
    noise_ratio=0.3,
    batch_size=100,
    train_subset=1000,
)


def test_bad_jobs_are_rejected_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match="does not apply to objective 'clip'"):
        check_job(replace(CLIP, noise_kind="symmetric"))
    with pytest.raises(ConfigError, match="objective"):
        check_job(replace(SUP, objective="mae"))
    with pytest.raises(ConfigError, match="noise_ratio"):
        check_job(replace(SUP, noise_ratio=1.5))
    with pytest.raises(ConfigError, match="needs noise.class_map"):
        check_job(replace(SUP, noise_kind="asymmetric"))
    with pytest.raises(ConfigError, match="used only by noise.kind 'asymmetric'"):
        check_job(replace(SUP, class_map={3: 5}))
    with pytest.raises(ConfigError, match="'random' is unknown; supervised noise is one of"):
        check_job(replace(SUP, noise_kind="random"))
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        check_job(replace(SUP, workers=0))
    with pytest.raises(ConfigError, match="train_subset must be >= 2"):
        check_job(replace(SUP, train_subset=1))
    check_job(replace(SUP, noise_kind="asymmetric", class_map={3: 5}))  # a valid one passes


@pytest.mark.parametrize(
    "objective,kind,class_map",
    [
        ("clip", "symmetric", None),
        ("supervised", "swap", None),
        ("supervised", "asymmetric", None),
        ("supervised", "pairflip", {3: 5}),
    ],
)
def test_suite_loader_and_launcher_say_the_same(objective, kind, class_map) -> None:
    """The suite file and a hand-built job fail with the one message of ``noise_problem``."""
    problem = noise_problem(objective, kind, class_map)
    assert problem
    block = {
        "objective": objective,
        "corpus": "fashion-mnist",
        "arch": "a",
        "noise": {"kind": kind, **({"class_map": class_map} if class_map else {})},
    }
    with pytest.raises(ConfigError) as suite_err:
        validate_suite({"name": "t", "pretrain": [block], "downstream": {"id": ["mnist-5k"]}}, check_names=False)
    assert f"pretrain[0]: {problem}" in str(suite_err.value)
    job = replace(SUP, objective=objective, noise_kind=kind, class_map=class_map)
    with pytest.raises(ConfigError) as job_err:
        check_job(job)
    assert str(job_err.value) == f"pretrain job {job.name}: {problem}"


def test_defaults_and_kinds_per_objective() -> None:
    assert OBJECTIVES == ("supervised", "clip") and set(NOISE_KINDS) == set(OBJECTIVES)
    assert default_noise_kind("supervised") == "symmetric"
    assert default_noise_kind("clip") == "swap"
    assert NOISE_KINDS["clip"] == ("swap",)
    for objective, kinds in NOISE_KINDS.items():
        for kind in kinds:
            cmap = {0: 1} if kind == "asymmetric" else None
            assert noise_problem(objective, kind, cmap) is None, (objective, kind)
    with pytest.raises(ConfigError, match="objective 'mae' is unknown"):
        default_noise_kind("mae")


def test_key_holds_what_changes_the_weights() -> None:
    """The worker count changes the global batch (batch_size is per worker), so it is in the key;
    where a job runs and what it is called are not."""
    assert replace(SUP, gpus_per_worker=1.0, display="x", data_root="/elsewhere").key == SUP.key
    assert replace(SUP, workers=4).key != SUP.key
    assert replace(SUP, batch_size=32).key != SUP.key


def test_recipe_keys_enter_the_key_only_when_they_change_the_recipe() -> None:
    """Jobs on the embedded recipe keep the keys they had before the real-corpus recipe keys
    existed (their finished checkpoints stay valid); a changed recipe is a new job; how fast a
    job runs is not part of it."""
    from dataclasses import asdict

    from benchmark.hashing import config_hash
    from benchmark.pretrain import RECIPE_DEFAULTS

    fast = ("channels_last", "cpus_per_worker", "loader_workers")
    before = {
        k: v
        for k, v in asdict(SUP).items()
        if k not in ("gpus_per_worker", "display", "data_root", *RECIPE_DEFAULTS, *fast)
    }
    assert SUP.key == config_hash({"kind": "pretrain", **before})
    assert SUP.key == "586dda2d70a7cae7"  # pinned: the key main gave this job before
    for name, value in (
        ("augment", "crop_flip"),
        ("crop_scale", (0.35, 1.0)),
        ("warmup_epochs", 1.0),
        ("grad_accum", 2),
        ("precision", "bf16"),
    ):
        assert replace(SUP, **{name: value}).key != SUP.key, name
    assert replace(SUP, crop_scale=[0.08, 1.0]).key == SUP.key  # a YAML list, same values
    assert replace(SUP, channels_last=False, cpus_per_worker=4.0, loader_workers=3).key == SUP.key
    assert replace(SUP, grad_accum=4, workers=2).global_batch == 64 * 2 * 4
    assert replace(SUP, cpus_per_worker=4.0).loader_processes == 3
    assert SUP.loader_processes == 1 and replace(SUP, loader_workers=0).loader_processes == 0


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("augment", "mixup", "augment 'mixup' is unknown"),
        ("precision", "fp16", "precision 'fp16' is unknown"),
        ("crop_scale", (0.5, 0.2), "crop_scale [0.5, 0.2] must be two area shares"),
        ("warmup_epochs", 3.0, "warmup_epochs 3.0 must be >= 0 and below epochs (3)"),
    ],
)
def test_recipe_rules_say_the_same_in_suite_and_job(field, value, message) -> None:
    job = replace(SUP, epochs=3, **{field: value})
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        check_job(job)
    if field in ("augment", "precision"):
        return  # the schema's Literal rejects these itself, naming the allowed values
    block = {
        "objective": "supervised",
        "corpus": "fashion-mnist",
        "arch": "a",
        "epochs": 3,
        field: list(value) if isinstance(value, tuple) else value,
    }
    with pytest.raises(ConfigError) as err:
        validate_suite({"name": "t", "pretrain": [block], "downstream": {"id": ["mnist-5k"]}}, check_names=False)
    assert f"pretrain[0]: {message}" in str(err.value)


def test_job_rules_import_without_torch_or_ray() -> None:
    """``nmlbench validate`` and the suite loader stay light: no torch, no Ray."""
    code = (
        "import sys; import benchmark.pretrain.job; import benchmark.config; "
        "from benchmark.pretrain import PretrainJob, check_job, noise_problem; "
        "heavy = sorted(m for m in ('torch', 'ray') if m in sys.modules); "
        "print(','.join(heavy) or 'light')"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": ""},
        check=True,
    )
    assert out.stdout.strip() == "light", out.stdout + out.stderr


#: Every shipped suite's pre-training keys (jobs, then the backbones they make), hashed: computed
#: on the tree before the recipe was defined once (issue 24), so finished checkpoints stay valid.
PINNED_SUITE_KEYS = {
    "quick": ("d7add5644a764281", 14),
    "embedded-study": ("f12f1d417c44525a", 132),  # checkpoint_epochs -> snapshot_epochs
    "paper-clip": ("6d7447e8dc4893e2", 10),
    "paper-supervised": ("69d0dcf95efff704", 10),
    "paper-rehearsal": ("416f38e1c20cc0ae", 10),
    "gpu-check": ("a525a5189655d67e", 4),
}


@pytest.mark.parametrize("suite", sorted(PINNED_SUITE_KEYS))
def test_suite_job_keys_are_those_of_before(suite: str) -> None:
    import hashlib

    from benchmark.config import load_suite
    from benchmark.plan import pretrain_jobs, pretrained_backbones

    root = Path(__file__).resolve().parents[1]
    s = load_suite(root / "suites" / f"{suite}.yaml")
    keys = [j.key for j in pretrain_jobs(s)] + [b.key for b in pretrained_backbones(s)]
    digest = hashlib.sha256(" ".join(keys).encode()).hexdigest()[:16]
    assert (digest, len(keys)) == PINNED_SUITE_KEYS[suite]
    if suite == "quick":
        assert [j.key for j in pretrain_jobs(s)][:3] == ["05675135b9fe36fa", "09047ba622b0006f", "aef531d2600b7d9d"]


def test_the_recipe_is_declared_once() -> None:
    """Every recipe key of a suite block is a job field of the same name and default (the block
    reads its defaults from the job), the plan copies each, and the workers get each field
    declared for them; a job built from a block equals one built by hand."""
    from dataclasses import fields

    from benchmark.config.schema import PretrainBlock
    from benchmark.plan import pretrain_jobs
    from benchmark.pretrain.job import BLOCK_FIELDS, job_default

    block_fields = PretrainBlock.model_fields
    for name in BLOCK_FIELDS:
        assert name in block_fields, name
        if name not in ("objective", "corpus", "arch"):
            assert block_fields[name].get_default(call_default_factory=True) == job_default(name), name
    block = {
        "objective": "supervised",
        "corpus": "fashion-mnist",
        "arch": "test_resnet",
        "batch_size": 64,
        "train_subset": 1000,
        "noise": {"ratios": [0.2]},
    }
    suite = validate_suite({"name": "t", "pretrain": [block], "downstream": {"id": ["mnist-5k"]}}, check_names=False)
    (job,) = pretrain_jobs(suite)
    assert job == replace(SUP, display="test_resnet-supervised") and job.key == SUP.key
    cfg = SUP.worker_config()
    sent = {f.name for f in fields(PretrainJob) if f.metadata.get("worker")}
    assert sent | {"key", "name", "loader_workers"} == set(cfg)
    assert cfg["crop_scale"] == (0.08, 1.0) and cfg["snapshot_epochs"] == []
