"""Family ``nmlbench``: backbones pre-trained by the suite itself (``benchmark.pretrain``).

A checkpoint ``model.pt`` is self-describing: it holds the family (``timm`` | ``open_clip``), the
architecture and its constructor kwargs, the weights, and the exact preprocessing (image size,
mean, std) used in pre-training, so feature extraction sees the same pixels the model learnt
from. Its identity is the sha256 of the file: retraining with another seed or noise ratio gives
another file and therefore another cache key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from benchmark.atomic import atomic_write
from benchmark.backbones.base import TorchBackbone, file_sha256
from benchmark.backbones.spec import check_spec, existing_file
from benchmark.errors import ConfigError

CHECKPOINT_FAMILIES = ("timm", "open_clip")
_REQUIRED = ("family", "arch", "model_cfg", "state_dict", "image_size", "mean", "std", "job")


def save_pretrain_checkpoint(
    path: str | Path,
    *,
    family: str,
    arch: str,
    model: torch.nn.Module,
    image_size: int,
    mean: Any,
    std: Any,
    job: dict[str, Any],
    model_cfg: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.pt`` atomically (temp file + ``os.replace``): never a half-written file.

    ``model_cfg`` defaults to the ``nmlbench_model_cfg`` that :func:`create_timm_classifier` and
    :func:`create_open_clip_model` attach to the model; for timm it must include
    ``num_classes`` (filled from the model when absent). ``job`` must be JSON-like plain data.
    """
    if family not in CHECKPOINT_FAMILIES:
        raise ConfigError(f"checkpoint family must be one of {CHECKPOINT_FAMILIES}, got {family!r}")
    cfg = dict(model_cfg if model_cfg is not None else getattr(model, "nmlbench_model_cfg", {}))
    if family == "timm" and "num_classes" not in cfg:
        cfg["num_classes"] = int(getattr(model, "num_classes"))  # noqa: B009 - a timm attribute torch types as Tensor | Module
    module = getattr(model, "module", model)  # unwrap DDP
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {
        "family": family,
        "arch": arch,
        "model_cfg": cfg,
        "state_dict": state,
        "image_size": int(image_size),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "job": dict(job),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def load_pretrain_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_pretrain_checkpoint`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle errors ...
        raise ConfigError(
            f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); delete it and re-run the pre-training job"
        ) from None
    missing = [k for k in _REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ConfigError(
            f"{path}: not an nml-bench pre-training checkpoint (missing {missing}); "
            "use family timm/open_clip with 'checkpoint' for plain state dicts"
        )
    if ckpt["family"] not in CHECKPOINT_FAMILIES:
        raise ConfigError(f"{path}: checkpoint family {ckpt['family']!r} is not one of {CHECKPOINT_FAMILIES}")
    return ckpt


def create_nmlbench_backbone(spec: dict[str, Any]) -> TorchBackbone:
    """Build a backbone from a suite pre-training checkpoint (``spec['checkpoint']``)."""
    spec = check_spec(spec, "nmlbench", allowed={"family", "checkpoint", "arch", "name"}, required=("checkpoint",))
    path = existing_file(spec["checkpoint"], "nmlbench checkpoint")
    ckpt = load_pretrain_checkpoint(path)
    family, arch, cfg = ckpt["family"], ckpt["arch"], dict(ckpt["model_cfg"])
    if spec.get("arch") and spec["arch"] != arch:
        raise ConfigError(f"{path} holds arch {arch!r} but the spec says {spec['arch']!r}")
    if family == "timm":
        from benchmark.backbones.timm_family import build_timm_module, timm_features

        module, feature_fn = build_timm_module(arch, cfg), timm_features
    else:
        from benchmark.backbones.open_clip_family import build_open_clip_module, encode_image_features

        module, feature_fn = build_open_clip_module(arch, cfg), encode_image_features
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ConfigError(f"{path}: weights do not fit {family} {arch!r} with {cfg}: {e}") from None
    digest = file_sha256(path)
    job = ckpt.get("job") or {}
    backbone = TorchBackbone(
        name=spec.get("name") or job.get("name") or f"nmlbench/{arch}/{digest[:8]}",
        identity=f"nmlbench:{digest}",
        module=module,
        feature_fn=feature_fn,
        image_size=ckpt["image_size"],
        mean=ckpt["mean"],
        std=ckpt["std"],
        family="nmlbench",
        arch=arch,
    )
    backbone.checkpoint_meta = {"family": family, "arch": arch, "model_cfg": cfg, "job": job, "path": str(path)}
    return backbone
