"""The suite schema's building blocks: constrained scalars whose messages state the allowed range
in interval notation, list rules, and ``Section``, the base of every section (unknown keys are errors).

Shared by the section modules (``schema.py``, ``downstream.py``) so a rule is written once.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


# -- constrained scalars: custom messages say the allowed range in interval notation -------------
def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool):
    text = (
        f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        if (lo is not None and hi is not None)
        else (f"must be {'>' if lo_open else '>='} {lo:g}" if lo is not None else f"must be <= {hi:g}")
    )

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


class Section(BaseModel):
    """Every section rejects unknown keys: a misspelt option must not silently become a default."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
