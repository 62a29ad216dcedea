"""Stand-in pictures for the rehearsal root: class-conditional images drawn from embedded sets.

Class k of a miniature set shows images of class ``k % 10`` of an embedded 10-class set, coloured
with palette ``k // 10``, so up to a hundred-odd classes stay learnable and a backbone trained on
the rehearsal root scores above chance. Images are drawn without replacement from the embedded
set's own train (for miniature train splits) or test split (for test splits), so no picture sits
on both sides of a miniature split. Styles give the OOD sets a real shift: ``sketch`` keeps only
the contours, ``rendition`` flattens colours, ``hard`` crops and adds noise.
"""

from __future__ import annotations

import colorsys
import io
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from benchmark.data.registry import get_dataset

STYLES = ("photo", "sketch", "rendition", "hard")


def palette(p: int) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, background) RGB colours of palette ``p``: hues spread by the golden ratio."""
    hue = (p * 0.6180339887) % 1.0
    fg = np.array(colorsys.hsv_to_rgb(hue, 0.65, 1.0)) * 255
    bg = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.55, 0.22)) * 255
    return fg, bg


class StandInImages:
    """Draws class-conditional pictures from one embedded data set (seeded, no repeats)."""

    def __init__(self, source: str, seed: int = 0) -> None:
        self.source = source
        self.rng = np.random.default_rng([seed, sum(source.encode())])
        self._pools: dict[str, tuple[np.ndarray, dict[int, np.ndarray], dict[int, int]]] = {}

    def _pool(self, split: str) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, int]]:
        if split not in self._pools:
            embedded: Any = get_dataset(self.source).split(split)  # an embedded set: arrays in memory
            images, labels = embedded.arrays()
            order = {int(c): self.rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
            self._pools[split] = (images, order, {c: 0 for c in order})
        return self._pools[split]

    def grey(self, base_class: int, n: int, split: str) -> np.ndarray:
        """``n`` unused grey images (uint8 [n, 28, 28]) of embedded class ``base_class``."""
        images, order, used = self._pool(split)
        idx = order[base_class]
        start = used[base_class]
        if start + n > len(idx):
            raise ValueError(
                f"{self.source}/{split} has {len(idx)} images of class {base_class}; "
                f"{start + n} requested: lower per_class"
            )
        used[base_class] = start + n
        return images[idx[start : start + n]]

    def draw(self, cls: int, n: int, split: str, size: int = 32, style: str = "photo") -> np.ndarray:
        """``n`` pictures (uint8 [n, size, size, 3]) for class ``cls`` of a miniature set."""
        grey = self.grey(cls % 10, n, split)
        fg, bg = palette(cls // 10 + (3 if style == "rendition" else 0))
        out = np.empty((n, size, size, 3), np.uint8)
        for i, g in enumerate(grey):
            out[i] = self._styled(g, fg, bg, size, style)
        return out

    def _styled(self, g: np.ndarray, fg: np.ndarray, bg: np.ndarray, size: int, style: str) -> np.ndarray:
        img = Image.fromarray(g)
        if style == "sketch":  # dark contour lines on white paper
            edges = img.filter(ImageFilter.FIND_EDGES)
            return np.asarray(ImageOps.invert(edges).resize((size, size), Image.Resampling.BILINEAR).convert("RGB"))
        if style == "rendition":  # flat poster colours
            img = ImageOps.posterize(img.convert("RGB"), 2).convert("L")
        if style == "hard":  # off-centre crop and sensor noise
            x, y = self.rng.integers(0, 7, size=2)
            img = img.crop((int(x), int(y), int(x) + 22, int(y) + 22))
        a = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)[..., None] / 255.0
        rgb = a * fg + (1.0 - a) * bg
        if style == "hard":
            rgb = rgb + self.rng.normal(0.0, 25.0, size=rgb.shape)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "JPEG") -> bytes:
    """An image array as file bytes (JPEG quality 90, or PNG)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()
