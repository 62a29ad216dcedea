"""Job descriptions as plain data: what the suite file expands into and what gets hashed.

Kept apart from ``config.py`` (validation of files) and ``pretrain.py`` (execution with Ray) so
each side can be tested alone, and so a job's key depends only on what changes its output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from benchmark.hashing import config_hash


@dataclass(frozen=True)
class PretrainJob:
    """One noisy pre-training run: (objective, backbone, noise ratio, seed) and its recipe.

    ``workers``, ``gpus_per_worker`` and ``display`` describe where and how it runs, not what it
    learns, so they are left out of the key: the same job on 1 or 4 workers reuses its checkpoint.
    """

    objective: str                 # "supervised" | "clip"
    corpus: str                    # data set name, e.g. "fashion-mnist"
    arch: str                      # timm model name or open_clip config name
    noise_kind: str = "symmetric"  # supervised: flip kind; clip: "swap"
    noise_ratio: float = 0.0
    class_map: dict[int, int] | None = None  # asymmetric noise: {true class: noisy class}
    seed: int = 0
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    image_size: int = 32
    train_subset: int | None = None  # first-N of a seeded shuffle of the corpus' train split
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    display: str = ""

    _UNKEYED = ("workers", "gpus_per_worker", "display", "data_root")

    @property
    def key(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in self._UNKEYED}
        return config_hash({"kind": "pretrain", **d})

    @property
    def name(self) -> str:
        """Human-readable label: arch, objective, noise, seed."""
        base = self.display or f"{self.arch}-{self.objective}"
        return f"{base}@{self.noise_kind}{self.noise_ratio:g}-s{self.seed}"
