"""Reading pickled data files (Animal-MNIST, CIFAR python batches) without running their code.

A pickle names the functions that rebuild its objects, so unpickling an untrusted file can run
anything. Data files need only containers, strings, numbers and numpy arrays; this unpickler
resolves numpy's own names and a few constructors of plain values, and refuses everything else.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

#: Non-numpy names a data pickle may use: value constructors that cannot reach the system.
#: (``_codecs.encode`` is how protocol-2 pickles written by Python 3 store ``bytes``.)
ALLOWED_NAMES = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "bytes"),
        ("builtins", "complex"),
        ("builtins", "slice"),
        ("builtins", "range"),
        ("_codecs", "encode"),
    }
)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays and nothing else.

    Files written by numpy 1.x name the module ``numpy.core``, which numpy 2 calls ``numpy._core``.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == "numpy.core" or module.startswith("numpy.core."):
            module = "numpy._core" + module[len("numpy.core") :]
        if module == "__builtin__":  # Python 2's name, when fix_imports is off
            module = "builtins"
        if (module, name) in ALLOWED_NAMES:
            return super().find_class(module, name)
        if module != "numpy" and not module.startswith("numpy."):
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy objects and plain values are allowed in a data file"
            )
        return super().find_class(module, name)


def load_data_pickle(source: bytes | Path | str, encoding: str = "latin1") -> Any:
    """Unpickle a data file (a path or its bytes) with ``NumpyOnlyUnpickler``.

    ``encoding="latin1"`` reads Python 2 pickles (CIFAR's) with their byte strings as ``str``
    and their numpy buffers intact, exactly as ``pickle.load(f, encoding="latin1")`` would.
    """
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    return NumpyOnlyUnpickler(io.BytesIO(raw), encoding=encoding).load()
