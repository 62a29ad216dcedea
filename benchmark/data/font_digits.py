"""Digits rendered from font files, cached on disk as .npz: the pixels of ``digits-printed`` and
``digits-handwriting`` (embedded.py registers them).

Apart from the loaders because the cache has its own rules: its file name is a digest of
everything that decides the pixels (renderer version, font files, counts, seed), a file that
cannot be read is rendered again with a warning, and a folder that cannot be written costs only
a re-render in the next process.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_write
from benchmark.data import fonts as font_renderer
from benchmark.data.base import data_home

#: Images rendered per digit class for each font set (300 x 10 = 3,000 images, under 2 s).
FONT_PER_CLASS = 300
FONT_SEED = 0


def font_set_digest(fonts: list[font_renderer.FontSpec]) -> str:
    """Digest of everything that determines a rendered set's pixels (renderer, fonts, counts, seed)."""
    key = json.dumps(
        {
            "renderer": font_renderer.RENDERER_VERSION,
            "fonts": font_renderer.fonts_identity(fonts),
            "per_class": FONT_PER_CLASS,
            "seed": FONT_SEED,
        },
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _font_cache_path(name: str, fonts: list[font_renderer.FontSpec]) -> Path:
    return data_home() / "rendered" / f"{name}-r{font_renderer.RENDERER_VERSION}-{font_set_digest(fonts)}.npz"


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle


def cached_font_digits(name: str, fonts: list[font_renderer.FontSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Rendered (images, labels) for a font set: from the .npz cache, else rendered and cached.

    A cache file that cannot be read is re-rendered with a warning; a cache folder that cannot be
    written only costs the next process a re-render.
    """
    path = _font_cache_path(name, fonts)
    if path.is_file():
        try:
            with np.load(path) as z:
                images, labels = z["images"], z["labels"]
            if images.shape == (10 * FONT_PER_CLASS, 28, 28) and len(labels) == len(images):
                return images, labels.astype(np.int64)
            warnings.warn(f"{path} holds arrays of unexpected shape {images.shape}; re-rendering", stacklevel=2)
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt
            warnings.warn(f"unreadable render cache {path} ({exc}); re-rendering", stacklevel=2)
    images, labels = font_renderer.render_digit_set(fonts, FONT_PER_CLASS, FONT_SEED)
    try:
        _atomic_save_npz(path, images=images, labels=labels)
    except OSError as exc:
        warnings.warn(
            f"could not write render cache {path} ({exc}); set NMLBENCH_DATA_HOME to a "
            f"writable folder to avoid re-rendering in every process",
            stacklevel=2,
        )
    return images, labels
