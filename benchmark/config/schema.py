"""The suite schema: one YAML file describes a whole study, and nothing runs unless all of it is valid.

A suite names the noisy pre-training runs (blocks that the plan expands over noise ratios and
seeds), frozen backbones used as they are, the downstream tasks and heads, the model selection
rule, where results are tracked and where Ray runs. Every section rejects unknown keys
(``extra="forbid"``), so a typo is an error, not a default. Each default lives here, once.

The ``downstream:`` section (tasks, heads and their grids, downstream label noise) is in
``downstream.py``, the shared scalars and the ``Section`` base in ``fields.py``.
``benchmark.config.messages`` turns pydantic's errors
into lines that name the key path, the bad value and what is allowed; ``benchmark.config.load``
reads files and checks names against the data and backbone registries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, PrivateAttr, model_validator

from benchmark.config.downstream import Downstream
from benchmark.config.fields import (
    NoiseRatio,
    NonEmpty,
    NonNegFloat,
    NonNegInt,
    PositiveFloat,
    PositiveInt,
    Section,
    UniqueList,
    ValFraction,
)
from benchmark.heads.finetune import check_image_heads
from benchmark.pretrain.job import AUGMENTS, PRECISIONS, default_noise_kind, job_default, noise_problem, recipe_problem


# -- pre-training ------------------------------------------------------------------------------
def _known_noise_kind(kind: str) -> str:
    from benchmark.noise import noise_kinds

    if kind not in noise_kinds():
        raise ValueError(
            f"must be one of {', '.join(noise_kinds())} (the registered noise kinds; "
            "plugins register under the entry-point group 'nmlbench.noise')"
        )
    return kind


def _known_objective(objective: str) -> str:
    from benchmark.pretrain.objectives import objective_names

    if objective not in objective_names():
        raise ValueError(
            f"must be one of {', '.join(objective_names())} (the registered "
            "objectives; plugins register under the entry-point group "
            "'nmlbench.objectives')"
        )
    return objective


def _one_of(allowed: tuple[str, ...], what: str):
    def check(v: str) -> str:
        if v not in allowed:
            raise ValueError(f"{what} {v!r} is unknown; use one of {list(allowed)}")
        return v

    return AfterValidator(check)


class NoiseSpec(Section):
    """How labels (supervised) or captions (CLIP) are corrupted before pre-training."""

    kind: Annotated[str, AfterValidator(_known_noise_kind)] | None = None  # a registered kind
    ratios: Annotated[list[NoiseRatio], NonEmpty, UniqueList] = Field(default_factory=lambda: [0.0])
    class_map: dict[int, int] | None = None


class PretrainBlock(Section):
    """One recipe expanded over ``noise.ratios`` x ``seeds`` into pre-training jobs.

    ``batch_size`` is per worker: each of the ``workers`` data-parallel workers takes
    ``batch_size`` images per micro-batch and ``grad_accum`` micro-batches per step, so one
    optimiser step sees ``batch_size * workers * grad_accum`` (gradients are averaged across
    workers). The recipe keys for real corpora (``augment``, ``crop_scale``, ``warmup_epochs``,
    ``grad_accum``, ``precision``, ``channels_last``) default to the embedded suites' recipe;
    ``cpus_per_worker`` and ``loader_workers`` only say how fast it runs. The noise and recipe
    rules live in ``benchmark.pretrain.job``.
    """

    name: str | None = None
    objective: Annotated[str, AfterValidator(_known_objective)]  # a registered objective
    corpus: str
    arch: str
    # The recipe: keys named as ``PretrainJob``'s fields, defaults read from there (declared
    # once); the plan copies each to the job (``plan._job``). Only the value checks live here.
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    seeds: Annotated[list[NonNegInt], NonEmpty, UniqueList] = Field(default_factory=lambda: [0])
    epochs: PositiveInt = job_default("epochs")
    batch_size: PositiveInt = job_default("batch_size")
    lr: PositiveFloat = job_default("lr")
    weight_decay: NonNegFloat = job_default("weight_decay")
    image_size: PositiveInt = job_default("image_size")
    train_subset: PositiveInt | None = job_default("train_subset")
    workers: PositiveInt = job_default("workers")
    gpus_per_worker: NonNegFloat = job_default("gpus_per_worker")
    augment: Annotated[str, _one_of(AUGMENTS, "augment")] = job_default("augment")
    crop_scale: tuple[PositiveFloat, PositiveFloat] = job_default("crop_scale")
    warmup_epochs: NonNegFloat = job_default("warmup_epochs")
    grad_accum: PositiveInt = job_default("grad_accum")
    precision: Annotated[str, _one_of(PRECISIONS, "precision")] = job_default("precision")
    channels_last: bool = job_default("channels_last")
    cpus_per_worker: PositiveFloat = job_default("cpus_per_worker")
    loader_workers: NonNegInt | None = job_default("loader_workers")
    #: Evaluate the same runs after each of these epochs (1-based; the last may be ``epochs``):
    #: each becomes a backbone row ``<name>@e<epoch>``, with no re-training. None: the final
    #: weights only, named ``<name>``.
    checkpoint_epochs: Annotated[list[PositiveInt], NonEmpty, UniqueList] | None = None

    @model_validator(mode="after")
    def _noise_matches_objective(self) -> PretrainBlock:
        if self.noise.kind is None:  # the only sensible default differs by objective
            self.noise.kind = default_noise_kind(self.objective)
        problem = noise_problem(self.objective, self.noise.kind, self.noise.class_map)
        if problem is None:
            problem = recipe_problem(self.augment, self.crop_scale, self.precision, self.warmup_epochs, self.epochs)
        if problem is not None:
            raise ValueError(problem)
        late = [e for e in self.checkpoint_epochs or [] if e > self.epochs]
        if late:
            raise ValueError(
                f"checkpoint_epochs {late} lie after the last epoch ({self.epochs}); list epochs in 1..{self.epochs}"
            )
        if self.checkpoint_epochs:
            self.checkpoint_epochs = sorted(self.checkpoint_epochs)
        if self.name is None:
            self.name = f"{self.arch}-{self.objective}"
        return self


# -- frozen backbones --------------------------------------------------------------------------
class FrozenBackbone(Section):
    """A backbone used as it is: the spec handed to ``benchmark.backbones.create_backbone``.

    Built-in families take exactly the keys below; a plugin family may take keys of its own
    (its factory validates them), so those are passed through unchanged.
    """

    model_config = ConfigDict(extra="allow", validate_default=True)

    name: str | None = None  # display name in tables; defaults to arch (or family)
    family: str
    arch: str | None = None
    weights: str | None = None
    checkpoint: str | None = None
    image_size: PositiveInt | None = None
    target: str | None = None  # blackbox: "module:function"
    version: str | int | None = None  # blackbox: the identity the user vouches for
    input: Literal["pil", "array"] | None = None  # blackbox: what the function receives
    seed: NonNegInt | None = None  # random-init weights
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _builtin_keys_only(self) -> FrozenBackbone:
        extra = sorted((self.model_extra or {}).keys())
        if extra:
            from benchmark.backbones.registry import BUILTIN_FAMILIES

            if self.family in BUILTIN_FAMILIES:
                allowed = ", ".join(sorted(type(self).model_fields))
                raise ValueError(
                    f"unknown key(s) {', '.join(map(repr, extra))} for built-in family "
                    f"{self.family!r} (allowed: {allowed}; plugin families may take their own keys)"
                )
        return self

    def spec(self) -> dict[str, Any]:
        """The dict for ``create_backbone``: unset keys left out, display ``name`` always set."""
        d = self.model_dump(exclude_none=True)
        if not d.get("kwargs"):
            d.pop("kwargs", None)
        d["name"] = self.name or self.arch or self.family
        return d


def _never_test(split: str) -> str:
    if split != "val":
        raise ValueError(
            "only 'val' is allowed: hyper-parameters are chosen on a validation split carved from "
            "the downstream training data; the test set is never used for selection (use split: val)"
        )
    return split


class Selection(Section):
    """Model selection rule. Only a validation split carved from the training data is allowed."""

    split: Annotated[str, AfterValidator(_never_test)] = "val"
    val_fraction: ValFraction = 0.2


def default_tracking_uri(work_dir: str | Path) -> str:
    """``sqlite:///<absolute work_dir>/mlflow.db``: the one place the default store is named."""
    return f"sqlite:///{Path(work_dir).expanduser().resolve() / 'mlflow.db'}"


class Tracking(Section):
    """MLflow location. ``uri`` defaults to :func:`default_tracking_uri` of the work dir."""

    uri: str | None = None
    experiment: str | None = None


class RaySpec(Section):
    """Where Ray runs and how head fits are batched into Tune trials.

    ``address``: a running cluster (``auto``, ``HOST:6379``, ``ray://HOST:10001``); empty means
    a private local Ray. ``--address`` on the command line and ``RAY_ADDRESS`` win over it.
    """

    address: str | None = None
    max_concurrent_trials: PositiveInt = 2
    fits_per_trial: PositiveInt = 16


class Suite(Section):
    """A whole study. ``source`` (the file it came from) is set by ``load_suite``."""

    name: str
    work_dir: str = ".nmlbench"
    data_root: str | None = None
    pretrain: list[PretrainBlock] = Field(default_factory=list)
    backbones: list[FrozenBackbone] = Field(default_factory=list)
    downstream: Downstream
    selection: Selection = Field(default_factory=Selection)
    tracking: Tracking = Field(default_factory=Tracking)
    ray: RaySpec = Field(default_factory=RaySpec)
    source: str | None = Field(default=None, exclude=True)
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _resolve(self) -> Suite:
        if not self.pretrain and not self.backbones:
            raise ValueError("a suite needs at least one 'pretrain' block or one frozen 'backbones' entry")
        names = [b.name for b in self.pretrain] + [b.spec()["name"] for b in self.backbones]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(
                f"backbone display names must be unique, repeated: {', '.join(dup)} "
                "(set a distinct 'name' on each pretrain block / backbones entry)"
            )
        check_image_heads(self.downstream.heads, [(b.spec()["name"], b.spec()) for b in self.backbones])
        self.work_dir = str(Path(self.work_dir).expanduser().resolve())
        if self.tracking.uri is None:
            self.tracking.uri = default_tracking_uri(self.work_dir)
        if self.tracking.experiment is None:
            self.tracking.experiment = self.name
        return self

    def override(self, *, work_dir: str | Path | None = None, data_root: str | Path | None = None) -> Suite:
        """The same suite with another work dir / data root (command-line overrides).

        Defaults derived from them are derived again: a tracking URI that the file did not set
        follows the new work dir. ``model_copy(update=...)`` would keep the old derived values.
        """
        from benchmark.config.load import validate_suite

        if work_dir is None and data_root is None:
            return self
        raw = dict(self._raw) or self.model_dump(mode="json")
        if work_dir is not None:
            raw["work_dir"] = str(work_dir)
        if data_root is not None:
            raw["data_root"] = str(data_root)
        return validate_suite(raw, source=self.source or "<suite>", check_names=False)

    def dataset_names(self) -> list[str]:
        """Data sets the suite reads directly (pre-training corpora and ID tasks), no repeats."""
        seen = [b.corpus for b in self.pretrain] + list(self.downstream.id)
        return list(dict.fromkeys(seen))
