"""Deterministic renderer of MNIST-like digits from TrueType fonts.

Why: printed and handwriting-font digits are a real, offline domain shift against MNIST (an
MNIST-trained CNN scores about 0.97 on them against 0.997 on MNIST), which gives the suite an OOD
axis with no download. The renderer mimics MNIST's preprocessing: white digit on black, the digit
scaled so its longer side is about 20 px (anti-aliased), then placed in a 28x28 frame so that its
centre of mass is at the centre. Per image a seeded generator draws the font, rotation
(+-10 degrees), scale, shift and stroke (stroke width plus a slight blur), so the same seed yields
identical pixels. Changing anything here that alters pixels must bump ``RENDERER_VERSION``: it
keys the on-disk cache and the splits' fingerprints.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from benchmark.errors import DatasetUnavailable

RENDERER_VERSION = "1"

#: Side of the high-resolution canvas a glyph is drawn on before shrinking to 28x28.
_CANVAS = 128
_GLYPH_PX = 88
_FRAME = 28
_BOX = 20.0


@dataclass(frozen=True)
class FontSpec:
    """One font file, with an optional weight for variable fonts (e.g. Caveat[wght])."""

    path: Path
    weight: int | None = None

    @property
    def label(self) -> str:
        return self.path.name + (f"@{self.weight}" if self.weight else "")


# matplotlib ships these TTFs in every install; they give sans, serif and monospace printing.
PRINTED_FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
)

# Google handwriting fonts shipped as pip packages (pyproject depends on them).
HANDWRITING_PACKAGES = ("fontpkg_caveat", "fontpkg_kalam", "fontpkg_indie_flower")


def printed_fonts() -> list[FontSpec]:
    """matplotlib's DejaVu Sans/Serif/Mono (regular and bold) and STIX (regular and bold)."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [f for f in PRINTED_FONT_FILES if not (folder / f).is_file()]
    if missing:
        raise DatasetUnavailable(
            f"digits-printed: font files {missing} not found in {folder} (expected matplotlib's "
            f"bundled TTFs there). Install with: pip install --force-reinstall matplotlib"
        )
    return [FontSpec(folder / f) for f in PRINTED_FONT_FILES]


def handwriting_fonts() -> list[FontSpec]:
    """Every .ttf inside the fontpkg-caveat, fontpkg-kalam and fontpkg-indie-flower packages.

    Caveat is a variable font: it is drawn at weight 400 and 700, as two styles.
    """
    specs: list[FontSpec] = []
    for package in HANDWRITING_PACKAGES:
        if importlib.util.find_spec(package) is None:
            raise DatasetUnavailable(
                f"digits-handwriting: Python package {package} is not installed (it ships the "
                f"font files the digits are drawn with). Install with: "
                f"pip install {package.replace('_', '-')}"
            )
        files = sorted(Path(str(importlib.resources.files(package))).rglob("*.ttf"))
        if not files:
            raise DatasetUnavailable(
                f"digits-handwriting: no .ttf file inside package {package} "
                f"({importlib.resources.files(package)}). Reinstall with: "
                f"pip install --force-reinstall {package.replace('_', '-')}"
            )
        for f in files:
            font = ImageFont.truetype(str(f), 10)
            try:
                axes = font.get_variation_axes()
            except OSError:  # not a variable font
                axes = []
            weight_axes = [a for a in axes if a.get("name") in (b"Weight", "Weight")]
            if len(axes) == 1 and weight_axes:
                lo, hi = (int(cast(int, weight_axes[0][k])) for k in ("minimum", "maximum"))
                specs += [FontSpec(f, max(lo, 400)), FontSpec(f, min(hi, 700))]
            else:
                specs.append(FontSpec(f))
    return specs


def fonts_identity(fonts: list[FontSpec]) -> list[tuple[str, int, int | None]]:
    """(file name, file size, weight) per font: part of the cache key, so a changed font file
    (a new package version) renders afresh instead of reusing stale pixels."""
    return [(f.path.name, f.path.stat().st_size, f.weight) for f in fonts]


def _load_font(spec: FontSpec) -> ImageFont.FreeTypeFont:
    font = ImageFont.truetype(str(spec.path), _GLYPH_PX)
    if spec.weight is not None:
        font.set_variation_by_axes([spec.weight])
    return font


def _place_by_centre_of_mass(glyph: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    """Paste ``glyph`` (float, <= 20x20) into a 28x28 frame with its centre of mass at the
    centre plus ``shift`` (rows, cols), kept inside the frame."""
    h, w = glyph.shape
    total = glyph.sum()
    rows, cols = np.arange(h), np.arange(w)
    com_r = (glyph.sum(1) @ rows) / total if total > 0 else (h - 1) / 2
    com_c = (glyph.sum(0) @ cols) / total if total > 0 else (w - 1) / 2
    centre = (_FRAME - 1) / 2
    top = int(np.clip(round(centre + shift[0] - com_r), 0, _FRAME - h))
    left = int(np.clip(round(centre + shift[1] - com_c), 0, _FRAME - w))
    frame = np.zeros((_FRAME, _FRAME), dtype=np.float32)
    frame[top : top + h, left : left + w] = glyph
    return frame


def render_digit(digit: int, font: ImageFont.FreeTypeFont, rng: np.random.Generator) -> np.ndarray:
    """One 28x28 uint8 image of ``digit``; every random choice is drawn from ``rng``."""
    angle = rng.uniform(-10.0, 10.0)
    scale = rng.uniform(0.8, 1.05)
    shift = tuple(rng.uniform(-1.5, 1.5, size=2))
    stroke = int(rng.integers(0, 4))  # extra stroke width on the 128 px canvas (0..3 px)
    blur = rng.uniform(0.0, 1.5)

    canvas = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(canvas).text(
        (_CANVAS / 2, _CANVAS / 2), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    canvas = canvas.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=0)
    if blur > 0.05:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    box = canvas.point(lambda v: 255 if v > 24 else 0).getbbox()
    if box is None:  # a font without this glyph: never silently emit a blank image
        raise DatasetUnavailable(f"font {getattr(font, 'path', font)!r} has no glyph for digit {digit}")
    glyph = canvas.crop(box)
    side = _BOX * scale
    factor = side / max(glyph.size)
    size = (max(1, round(glyph.size[0] * factor)), max(1, round(glyph.size[1] * factor)))
    small = np.asarray(glyph.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    frame = _place_by_centre_of_mass(np.clip(small, 0, 255), shift)
    peak = frame.max()
    if peak > 0:  # MNIST digits reach full white; normalise the anti-aliased peak to 255
        frame = frame * (255.0 / peak)
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


def render_digit_set(fonts: list[FontSpec], per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of each digit 0-9, cycling through ``fonts``.

    Returns (images uint8 [10 * per_class, 28, 28], labels int64), ordered by class. Image k of
    digit d is drawn with font (d + k) % len(fonts) and a generator seeded by (seed, d, k), so an
    image does not depend on how many others are rendered.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    loaded = [_load_font(f) for f in fonts]
    images = np.empty((10 * per_class, _FRAME, _FRAME), dtype=np.uint8)
    labels = np.repeat(np.arange(10, dtype=np.int64), per_class)
    for digit in range(10):
        for k in range(per_class):
            rng = np.random.default_rng([seed, digit, k])
            images[digit * per_class + k] = render_digit(digit, loaded[(digit + k) % len(loaded)], rng)
    return images, labels
