"""Suite files: one YAML file describes a whole study, and nothing runs unless all of it is valid.

A suite names the noisy pre-training runs (blocks expanded over noise ratios and seeds into
``PretrainJob``s), frozen backbones used as they are, the downstream tasks and heads, the model
selection rule and where results are tracked. Validation has two stages:

1. the schema (pydantic, ``extra="forbid"`` everywhere, so a typo is an error, not a default);
2. names (data sets, OOD groups, backbone families) looked up in the plugin registries.

Both stages collect *every* problem and raise one ``ConfigError`` whose lines name the file, the
key path (``pretrain[0].noise.ratios[1]``), the bad value and what is allowed. Whether a known data
set's files are present is a separate question, answered by ``check_data_available`` just before
running: a suite stays valid on a machine that lacks the data.
"""

from __future__ import annotations

import dataclasses
import itertools
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from benchmark.errors import ConfigError, DatasetUnavailable, UnknownNameError
from benchmark.pretrain.job import PretrainJob, default_noise_kind, noise_problem

METHODS = ("lp", "mlp", "nmtune")


# -- constrained scalars: custom messages say the allowed range in interval notation -------------
def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool):
    text = f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}" if (
        lo is not None and hi is not None
    ) else (f"must be {'>' if lo_open else '>='} {lo:g}" if lo is not None else f"must be <= {hi:g}")

    def check(v: float) -> float:
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise ValueError(text)
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise ValueError(text)
        return v

    return AfterValidator(check)


NoiseRatio = Annotated[float, _interval(0.0, 1.0, False, True)]
Fraction = Annotated[float, _interval(0.0, 1.0, True, False)]
ValFraction = Annotated[float, _interval(0.0, 0.5, True, False)]
PositiveFloat = Annotated[float, _interval(0.0, None, True, False)]
NonNegFloat = Annotated[float, _interval(0.0, None, False, False)]
PositiveInt = Annotated[int, _interval(1, None, False, False)]
NonNegInt = Annotated[int, _interval(0, None, False, False)]


def _unique(values: list) -> list:
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    if dup:
        raise ValueError(f"must not repeat values (repeated: {', '.join(dup)})")
    return values


def _nonempty(values: list) -> list:
    if not values:
        raise ValueError("must list at least one value")
    return values


UniqueList = AfterValidator(_unique)
NonEmpty = AfterValidator(_nonempty)


class _Model(BaseModel):
    """Every section rejects unknown keys: a misspelt option must not silently become a default."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


# -- pre-training ------------------------------------------------------------------------------
class NoiseSpec(_Model):
    """How labels (supervised) or captions (CLIP) are corrupted before pre-training."""

    kind: Literal["symmetric", "pairflip", "asymmetric", "instance", "swap"] | None = None
    ratios: Annotated[list[NoiseRatio], NonEmpty, UniqueList] = Field(default_factory=lambda: [0.0])
    class_map: dict[int, int] | None = None


class PretrainBlock(_Model):
    """One recipe expanded over ``noise.ratios`` x ``seeds`` into pre-training jobs.

    ``batch_size`` is per worker: each of the ``workers`` data-parallel workers takes
    ``batch_size`` images per step, so one optimiser step sees ``batch_size * workers``
    (gradients are averaged across workers). The noise rules live in ``benchmark.pretrain.job``.
    """

    name: str | None = None
    objective: Literal["supervised", "clip"]
    corpus: str
    arch: str
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    seeds: Annotated[list[NonNegInt], NonEmpty, UniqueList] = Field(default_factory=lambda: [0])
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegFloat = 0.05
    image_size: PositiveInt = 32
    train_subset: PositiveInt | None = None
    workers: PositiveInt = 1
    gpus_per_worker: NonNegFloat = 0.0

    @model_validator(mode="after")
    def _noise_matches_objective(self) -> PretrainBlock:
        if self.noise.kind is None:  # the only sensible default differs by objective
            self.noise.kind = default_noise_kind(self.objective)
        problem = noise_problem(self.objective, self.noise.kind, self.noise.class_map)
        if problem is not None:
            raise ValueError(problem)
        if self.name is None:
            self.name = f"{self.arch}-{self.objective}"
        return self


# -- frozen backbones --------------------------------------------------------------------------
class FrozenBackbone(_Model):
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
    def _builtin_keys_only(self) -> "FrozenBackbone":
        extra = sorted((self.model_extra or {}).keys())
        if extra:
            from benchmark.backbones.registry import BUILTIN_FAMILIES

            if self.family in BUILTIN_FAMILIES:
                allowed = ", ".join(sorted(type(self).model_fields))
                raise ValueError(f"unknown key(s) {', '.join(map(repr, extra))} for built-in family "
                                 f"{self.family!r} (allowed: {allowed}; plugin families may take their own keys)")
        return self

    def spec(self) -> dict[str, Any]:
        """The dict for ``create_backbone``: unset keys left out, display ``name`` always set."""
        d = self.model_dump(exclude_none=True)
        if not d.get("kwargs"):
            d.pop("kwargs", None)
        d["name"] = self.name or self.arch or self.family
        return d


# -- downstream --------------------------------------------------------------------------------
class Downstream(_Model):
    """Tasks, heads and their grids. ``epochs``/``batch_size``/``lr`` override the probe defaults."""

    id: Annotated[list[str], UniqueList] = Field(default_factory=list)
    ood: Annotated[list[str], UniqueList] = Field(default_factory=list)
    methods: Annotated[list[Literal["lp", "mlp", "nmtune"]], NonEmpty, UniqueList] = Field(
        default_factory=lambda: list(METHODS)
    )
    lambdas: Annotated[list[PositiveFloat], NonEmpty, UniqueList] = Field(default_factory=lambda: [0.01])
    depths: Annotated[list[PositiveInt], NonEmpty, UniqueList] = Field(default_factory=lambda: [1])
    preset: Literal["paper", "reference"] = "paper"
    seeds: Annotated[list[NonNegInt], NonEmpty, UniqueList] = Field(default_factory=lambda: [0])
    fractions: Annotated[list[Fraction], NonEmpty, UniqueList] = Field(default_factory=lambda: [1.0])
    max_train: PositiveInt | None = None
    epochs: PositiveInt | None = None
    batch_size: PositiveInt | None = None
    lr: dict[Literal["lp", "mlp", "nmtune"], PositiveFloat] = Field(default_factory=dict)
    normalize_features: bool = True

    @model_validator(mode="after")
    def _some_task(self) -> Downstream:
        if not self.id and not self.ood:
            raise ValueError("downstream needs at least one task in 'id' or 'ood'")
        return self

    def tasks(self) -> list[tuple[str, str]]:
        """``(name, kind)`` pairs, kind ``"id"`` (a data set) or ``"ood"`` (an OOD group)."""
        return [(t, "id") for t in self.id] + [(t, "ood") for t in self.ood]

    def grid(self, method: str) -> list[dict[str, Any]]:
        """Hyper-parameter points swept for one method (LP has none; MLP depth; NMTune both)."""
        if method == "lp":
            return [{}]
        if method == "mlp":
            return [{"depth": d} for d in self.depths]
        if method == "nmtune":
            return [{"lambda": lam, "depth": d} for lam, d in itertools.product(self.lambdas, self.depths)]
        raise ConfigError(f"unknown method {method!r} (allowed: {', '.join(METHODS)})")


def _never_test(split: str) -> str:
    if split != "val":
        raise ValueError(
            "only 'val' is allowed: hyper-parameters are chosen on a validation split carved from "
            "the downstream training data; the test set is never used for selection (use split: val)"
        )
    return split


class Selection(_Model):
    """Model selection rule. Only a validation split carved from the training data is allowed."""

    split: Annotated[str, AfterValidator(_never_test)] = "val"
    val_fraction: ValFraction = 0.2


class Tracking(_Model):
    """MLflow location. ``uri`` defaults to ``sqlite:///<work_dir>/mlflow.db`` (absolute)."""

    uri: str | None = None
    experiment: str | None = None


class RaySpec(_Model):
    """Where Ray runs and how head fits are batched into Tune trials."""

    address: str | None = None
    max_concurrent_trials: PositiveInt = 2
    fits_per_trial: PositiveInt = 16


class Suite(_Model):
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
        self.work_dir = str(Path(self.work_dir).expanduser().resolve())
        if self.tracking.uri is None:
            self.tracking.uri = f"sqlite:///{Path(self.work_dir) / 'mlflow.db'}"
        if self.tracking.experiment is None:
            self.tracking.experiment = self.name
        return self

    def override(self, *, work_dir: str | Path | None = None, data_root: str | Path | None = None) -> Suite:
        """The same suite with another work dir / data root (command-line overrides).

        Defaults derived from them are derived again: a tracking URI that the file did not set
        follows the new work dir. ``model_copy(update=...)`` would keep the old derived values.
        """
        raw = dict(self._raw) or self.model_dump(mode="json")
        if work_dir is not None:
            raw["work_dir"] = str(work_dir)
        if data_root is not None:
            raw["data_root"] = str(data_root)
        return validate_suite(raw, source=self.source or "<suite>", check_names=False)

    def pretrain_jobs(self) -> list[PretrainJob]:
        """Every pre-training run: blocks x noise ratios x seeds, in file order."""
        fields = {f.name for f in dataclasses.fields(PretrainJob)}
        jobs = []
        for i, b in enumerate(self.pretrain):
            extra: dict[str, Any] = {}
            if b.noise.class_map:
                if "class_map" not in fields:  # never silently drop a map: the noise would differ
                    raise ConfigError(
                        f"{self.source or '<suite>'}: pretrain[{i}].noise.class_map cannot be passed "
                        "on: this version's PretrainJob has no class_map field"
                    )
                extra["class_map"] = dict(b.noise.class_map)
            for ratio, seed in itertools.product(b.noise.ratios, b.seeds):
                jobs.append(
                    PretrainJob(
                        objective=b.objective, corpus=b.corpus, arch=b.arch,
                        noise_kind=b.noise.kind, noise_ratio=float(ratio), seed=seed,
                        epochs=b.epochs, batch_size=b.batch_size, lr=b.lr,
                        weight_decay=b.weight_decay, image_size=b.image_size,
                        train_subset=b.train_subset, model_kwargs=dict(b.model_kwargs),
                        data_root=self.data_root, workers=b.workers,
                        gpus_per_worker=b.gpus_per_worker, display=b.name, **extra,
                    )
                )
        return jobs

    def frozen_backbones(self) -> list[dict[str, Any]]:
        """Specs for ``create_backbone``, each with its display ``name``."""
        return [b.spec() for b in self.backbones]

    def dataset_names(self) -> list[str]:
        """Data sets the suite reads directly (pre-training corpora and ID tasks), no repeats."""
        seen = [b.corpus for b in self.pretrain] + list(self.downstream.id)
        return list(dict.fromkeys(seen))


# -- error translation -------------------------------------------------------------------------
def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _unwrap(tp: Any) -> Any:
    """Strip Annotated / Optional so the model class (or list/dict) underneath shows."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            field = tp.model_fields.get(part)
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) is list and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


_TYPE_WORDS = {
    "float": "a number", "int": "an integer", "bool": "true or false", "string": "a string",
    "list": "a list", "dict": "a mapping", "model": "a mapping", "int_from_float": "a whole number",
}


def _describe(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    loc = tuple(err["loc"])
    kind, value = err["type"], err.get("input")
    where = _path(loc)
    if kind == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = ", ".join(n for n, f in model.model_fields.items() if not f.exclude) if model else "?"
        parent = _path(loc[:-1])
        return f"{parent}: unknown key {loc[-1]!r} (allowed: {allowed})"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "value_error":
        msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        if isinstance(value, Mapping):  # a whole-section check: the path is the section
            return f"{where}: {msg}"
        return f"{where} = {value!r}: {msg}"
    if kind == "literal_error" and loc and loc[-1] == "[key]":  # a mapping's key, not a value
        return f"{_path(loc[:-2])}: unknown key {value!r} (allowed: {err['ctx']['expected']})"
    if kind == "literal_error":
        return f"{where} = {value!r}: must be one of {err['ctx']['expected']}"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float":
        word = kind if kind == "int_from_float" else kind.rsplit("_", 1)[0]
        expected = _TYPE_WORDS.get(word, word.replace("_", " "))
        return f"{where} = {value!r}: must be {expected}"
    return f"{where} = {value!r}: {err['msg']}"


def _raise(source: str, problems: list[str], stage: str) -> typing.NoReturn:
    n = len(problems)
    head = f"invalid suite file {source} ({n} problem{'s' if n != 1 else ''}, {stage}); nothing was run:"
    raise ConfigError("\n".join([head] + [f"  - {p}" for p in problems]))


# -- name checks against the registries -------------------------------------------------------
def _check_names(suite: Suite) -> list[str]:
    """Registry lookups; imported here so this module loads before the registries exist."""
    from benchmark.backbones import list_backbones
    from benchmark.data import get_dataset, get_ood_group

    problems: list[str] = []

    def dataset(where: str, name: str) -> None:
        try:
            get_dataset(name, data_root=suite.data_root)
        except UnknownNameError as e:
            problems.append(f"{where} = {name!r}: {e}")
        except DatasetUnavailable:
            pass  # known but not installed: check_data_available reports it before running

    for i, b in enumerate(suite.pretrain):
        dataset(f"pretrain[{i}].corpus", b.corpus)
    for i, name in enumerate(suite.downstream.id):
        dataset(f"downstream.id[{i}]", name)
    for i, name in enumerate(suite.downstream.ood):
        try:
            get_ood_group(name)
        except UnknownNameError as e:
            problems.append(f"downstream.ood[{i}] = {name!r}: {e}")
    families = list_backbones()
    for i, b in enumerate(suite.backbones):
        if b.family not in families:
            problems.append(
                f"backbones[{i}].family = {b.family!r}: unknown backbone family "
                f"(known: {', '.join(sorted(families))}; plugins register under entry-point group "
                "'nmlbench.backbones')"
            )
    return problems


def validate_suite(data: Any, source: str | Path = "<suite>", *, check_names: bool = True) -> Suite:
    """Schema and name checks of a parsed suite; raise one ``ConfigError`` listing every problem.

    ``check_names=False`` skips the registry lookups (for tools that only need the structure).
    """
    source = str(source)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        _raise(source, [f"<top level>: the file is {kind}; a suite is a mapping with keys "
                        f"{', '.join(n for n, f in Suite.model_fields.items() if not f.exclude)}"], "schema")
    try:
        suite = Suite.model_validate(dict(data))
    except ValidationError as e:
        _raise(source, [_describe(err, Suite) for err in e.errors()], "schema")
    suite.source = source
    suite._raw = dict(data)
    if check_names:
        problems = _check_names(suite)
        if problems:
            _raise(source, problems, "unknown names")
    return suite


def load_suite(path: str | Path, *, check_names: bool = True) -> Suite:
    """Read and validate a suite file; YAML syntax errors name the line and column."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"suite file {p} does not exist (suites ship in the repository's suites/ folder)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"invalid suite file {p}: YAML syntax error at {where}: {problem}; nothing was run") from None
    return validate_suite(data, source=p, check_names=check_names)


def check_data_available(suite: Suite) -> None:
    """Raise ``DatasetUnavailable`` naming every data set the suite needs whose files are absent.

    Called by the CLI before running, so a long study does not fail an hour in. OOD groups count
    with their training set and all their test domains.
    """
    from benchmark.data import get_ood_group, list_datasets

    needed = suite.dataset_names()
    for name in suite.downstream.ood:
        g = get_ood_group(name)
        needed += [g.train, *g.tests]
    needed = list(dict.fromkeys(needed))
    status = {s.name: s for s in list_datasets(data_root=suite.data_root)}
    missing = [status[n] for n in needed if n in status and not status[n].available]
    if missing:
        root = suite.data_root or "(no data_root set in the suite)"
        lines = [f"  - {s.name}: {s.how_to_get}" for s in missing]
        raise DatasetUnavailable(
            f"suite {suite.name!r} needs {len(missing)} data set(s) whose files are absent under "
            f"data_root {root}:\n" + "\n".join(lines)
            + "\nInstall them there (or set data_root in the suite), then run again."
        )
