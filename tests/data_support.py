"""Helpers shared by the tests/test_data*.py modules (imported, not collected)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.data import clear_cache


def isolated_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private render/index cache for one test module, no data root from the environment, and
    empty in-process caches before and after. Use as ``pytest.fixture(scope="module", autouse=True)``."""
    home = tmp_path_factory.mktemp("nmlbench-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("NMLBENCH_DATA_HOME", str(home))
    mp.delenv("NMLBENCH_DATA_ROOT", raising=False)
    clear_cache()
    yield home
    clear_cache()
    mp.undo()


def write_png(path: Path, value: int, size: tuple[int, int] = (5, 6)) -> None:
    """A flat RGB image (width, height = ``size``) of grey level ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


# -- a Python 2 pickle written opcode by opcode, as the CIFAR python batches are ---------------

def _py2_str(raw: bytes | str) -> bytes:
    raw = raw if isinstance(raw, bytes) else raw.encode("latin1")
    return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    return b"J" + struct.pack("<i", n)


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _uint8_array(a: np.ndarray) -> bytes:
    """numpy 1.x's reduction of a uint8 array under Python 2 (module numpy.core, str buffers)."""
    dtype = (_global("numpy", "dtype") + _py2_str("u1") + _int(0) + _int(1) + b"\x87R"
             + b"(" + _int(3) + _py2_str("|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb")
    shape = b"(" + b"".join(_int(d) for d in a.shape) + b"t"
    return (_global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray") + _int(0)
            + b"\x85" + _py2_str("b") + b"\x87R" + b"(" + _int(1) + shape + dtype + b"\x89"
            + _py2_str(np.ascontiguousarray(a).tobytes()) + b"tb")


def _value(v: object) -> bytes:
    if isinstance(v, np.ndarray):
        return _uint8_array(v)
    if isinstance(v, str):
        return _py2_str(v)
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, list):
        return b"](" + b"".join(_value(x) for x in v) + b"e"
    raise TypeError(type(v))


def python2_pickle(d: dict[str, object]) -> bytes:
    """Protocol-2 bytes of a dict of str / int / list / uint8-array values as Python 2 wrote them."""
    return (b"\x80\x02}(" + b"".join(_py2_str(k) + _value(v) for k, v in d.items()) + b"u.")
