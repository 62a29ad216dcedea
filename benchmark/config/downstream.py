"""The suite's ``downstream:`` section: tasks, heads, their grids and fixed values, and the noise
on the downstream training labels. Head grids are checked against the head registry: a ``grid``
axis or a fixed ``hparams`` entry must be a hyper-parameter some listed head takes, and every
value must resolve for every head that takes it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, model_validator

from benchmark.config.fields import Fraction, NoiseRatio, NonEmpty, NonNegInt, PositiveInt, Section, UniqueList
from benchmark.config.messages import SectionProblems
from benchmark.errors import ConfigError
from benchmark.heads.finetune import image_heads
from benchmark.heads.registry import (
    HPARAM_NAMES,
    default_heads,
    get_head,
    head_names,
    heads_taking,
    resolve_hparams,
)


# -- downstream --------------------------------------------------------------------------------
def _known_heads(values: list[str]) -> list[str]:
    unknown = [m for m in values if m not in head_names()]
    if unknown:
        raise ValueError(
            f"unknown head(s) {', '.join(map(repr, unknown))} (registered heads: {', '.join(head_names())})"
        )
    return values


def _known_label_kind(kind: str) -> str:
    from benchmark.noise import noise_kinds

    labels = [n for n, k in noise_kinds().items() if k.data == "labels"]
    if kind not in labels:
        what = (
            f"{kind!r} corrupts {noise_kinds()[kind].data}, not labels"
            if kind in noise_kinds()
            else f"{kind!r} is not a registered noise kind"
        )
        raise ValueError(f"{what}; downstream label noise is one of {', '.join(labels)}")
    return kind


class LabelNoise(Section):
    """Noise on the downstream training labels (the paper's Sec. 4.3); see ``benchmark.noise.downstream``.

    ``ratios`` is an axis: every fit is made once per ratio (0.0: clean labels, the fits a suite
    without ``label_noise`` makes). ``ratio: 0.2`` is read as ``ratios: [0.2]``. ``validation``:
    ``noisy`` (default: a practitioner selects hyper-parameters on noisy labels) or ``clean``.
    Test labels are never corrupted. A kind's own options (``class_map`` for ``asymmetric``) are
    keys of this section.
    """

    model_config = ConfigDict(extra="allow", validate_default=True)

    kind: Annotated[str, AfterValidator(_known_label_kind)] = "symmetric"
    ratios: Annotated[list[NoiseRatio], NonEmpty, UniqueList]
    validation: Literal["noisy", "clean"] = "noisy"
    seed: NonNegInt = 0
    class_map: dict[int, int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _singular_ratio(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ratio" in data:
            if "ratios" in data:
                raise ValueError("give either ratio or ratios, not both (ratios: [0.0, 0.2] makes every fit twice)")
            data = {**{k: v for k, v in data.items() if k != "ratio"}, "ratios": [data["ratio"]]}
        return data

    @model_validator(mode="after")
    def _kind_options(self) -> LabelNoise:
        from benchmark.noise import get_noise_kind, option_problem

        problem = option_problem(get_noise_kind(self.kind), self.options())
        if problem is not None:
            raise ValueError(problem.replace("noise.", "label_noise."))
        return self

    def options(self) -> dict[str, Any]:
        """The kind's options given in this section: ``class_map`` and any plugin kind's own keys."""
        given = {"class_map": self.class_map} if self.class_map else {}
        return {**given, **(self.model_extra or {})}


class Downstream(Section):
    """Tasks, heads and their hyper-parameters.

    ``grid`` maps a hyper-parameter name to the values swept (chosen per task and seed on the
    validation split); each axis applies to the heads that take it (``lam``: NMTune; ``depth``:
    MLP and NMTune; ``epochs``: all). ``hparams`` fixes values for every head that takes them,
    or, under a head's name, for that head alone (``hparams: {epochs: 15, lp: {lr: 0.1}}``).
    Anything not given is the head registry's default. ``heads`` was ``methods`` and ``width``
    was ``ratio`` in older suite files; those still load (``config.renames``).
    ``label_noise`` corrupts the training labels of every task (:class:`LabelNoise`).
    """

    id: Annotated[list[str], UniqueList] = Field(default_factory=list)
    ood: Annotated[list[str], UniqueList] = Field(default_factory=list)
    heads: Annotated[list[str], NonEmpty, UniqueList, AfterValidator(_known_heads)] = Field(
        default_factory=lambda: list(default_heads())
    )
    grid: dict[str, Annotated[list[Any], NonEmpty, UniqueList]] = Field(default_factory=dict)
    hparams: dict[str, Any] = Field(default_factory=dict)
    seeds: Annotated[list[NonNegInt], NonEmpty, UniqueList] = Field(default_factory=lambda: [0])
    fractions: Annotated[list[Fraction], NonEmpty, UniqueList] = Field(default_factory=lambda: [1.0])
    max_train: PositiveInt | None = None
    normalize_features: bool = True
    label_noise: LabelNoise | None = None

    @model_validator(mode="after")
    def _tasks_and_heads(self) -> Downstream:
        if not self.id and not self.ood:
            raise ValueError("downstream needs at least one task in 'id' or 'ood'")
        problems = [*self._axis_problems(), *self._value_problems(), *self._image_noise_problems()]
        if problems:
            raise SectionProblems(problems)
        return self

    def _image_noise_problems(self) -> list[str]:
        """A label-noise kind that reads each sample's features cannot corrupt the labels of a
        head that trains on images (``finetune``): it has no frozen features to read."""
        from benchmark.noise import get_noise_kind

        if self.label_noise is None or "features" not in get_noise_kind(self.label_noise.kind).inputs:
            return []
        return [
            f"label_noise.kind {self.label_noise.kind!r} draws its flips from the frozen features, which "
            f"head {h!r} (it trains on images) does not have: use a kind without per-sample inputs "
            "(symmetric, pairflip, asymmetric) or remove the head"
            for h in image_heads(self.heads)
        ]

    def fixed_hparams(self, name: str) -> dict[str, Any]:
        """The fixed values head ``name`` takes: shared entries, then its own section over them."""
        head = get_head(name)
        shared = {k: v for k, v in self.hparams.items() if k not in head_names() and head.takes(k)}
        own = self.hparams.get(name) or {}
        return {**shared, **own}

    def axes(self, name: str) -> dict[str, list[Any]]:
        """The grid axes head ``name`` sweeps (in the order the suite lists them)."""
        head = get_head(name)
        return {k: list(v) for k, v in self.grid.items() if head.takes(k)}

    def _axis_problems(self) -> list[str]:
        out = []
        for where, keys in (("grid", list(self.grid)), ("hparams", [k for k in self.hparams if k not in head_names()])):
            for k in keys:
                if k not in HPARAM_NAMES:
                    out.append(f"{where}.{k}: unknown hyper-parameter (known: {', '.join(HPARAM_NAMES)})")
                elif not any(get_head(m).takes(k) for m in self.heads):
                    out.append(
                        f"{where}.{k}: no listed head takes it (it applies to "
                        f"{', '.join(heads_taking(k)) or 'none'}; heads: {', '.join(self.heads)})"
                    )
        for k in sorted(set(self.grid) & set(self.hparams)):
            out.append(f"{k}: given both in grid and in hparams; keep one")
        for m in (k for k in self.hparams if k in head_names()):
            section = self.hparams[m]
            if not isinstance(section, dict):
                out.append(f"hparams.{m} = {section!r}: must be a mapping of {m}'s hyper-parameters")
            elif m not in self.heads:
                out.append(f"hparams.{m}: head {m!r} is not in heads ({', '.join(self.heads)})")
        return out

    def _value_problems(self) -> list[str]:
        """Resolve every head with its fixed values and each grid value alone: bad values fail here."""
        out: list[str] = []
        for m in self.heads:
            fixed = self.fixed_hparams(m) if isinstance(self.hparams.get(m, {}), dict) else {}
            try:
                resolve_hparams(m, **fixed)
            except ConfigError as e:
                out.append(f"hparams ({m}): {e}")
                continue
            for axis, values in self.axes(m).items():
                for i, v in enumerate(values):
                    try:
                        resolve_hparams(m, **{**fixed, axis: v})
                    except ConfigError as e:
                        out.append(f"grid.{axis}[{i}] = {v!r} ({m}): {e}")
        return list(dict.fromkeys(out))
