"""The flat data-set registry: every set, embedded or real, looked up by name.

``get_dataset(name, data_root)`` returns a ``DatasetSource`` whose splits are built on first use
and kept for the life of the process (per name and data root), so a sweep that asks for the same
split many times pays for loading once. ``list_datasets`` reports every entry without loading
any image, for ``nmlbench datasets``.
"""

from __future__ import annotations

import functools
import io
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path

from benchmark.data import embedded, real
from benchmark.data.base import DatasetInfo, DatasetStatus, ImageSplit
from benchmark.errors import ConfigError, DatasetUnavailable, UnknownNameError

DATA_ROOT_ENV = "NMLBENCH_DATA_ROOT"


class DatasetSource(ABC):
    """A registry entry bound to a data root: its info, and its splits on demand."""

    def __init__(self) -> None:
        self._splits: dict[str, ImageSplit] | None = None
        self._lock = threading.Lock()

    @property
    @abstractmethod
    def info(self) -> DatasetInfo: ...

    @property
    @abstractmethod
    def split_names(self) -> tuple[str, ...]: ...

    @abstractmethod
    def _load_all(self) -> dict[str, ImageSplit]: ...

    @abstractmethod
    def status(self) -> DatasetStatus: ...

    def split(self, split: str) -> ImageSplit:
        """The named split ("train" or "test"), loaded once per process."""
        if split not in self.split_names:
            raise ConfigError(f"{self.info.name} has no split {split!r}; it has: {', '.join(self.split_names)}")
        with self._lock:
            if self._splits is None:
                self._splits = self._load_all()
        if split not in self._splits:
            raise DatasetUnavailable(
                f"{self.info.name}: split {split!r} is missing from the files found "
                f"(found: {', '.join(self._splits) or 'none'})"
            )
        return self._splits[split]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r})"


class EmbeddedSource(DatasetSource):
    def __init__(self, spec: embedded.EmbeddedSpec) -> None:
        super().__init__()
        self.spec = spec

    @property
    def info(self) -> DatasetInfo:
        return self.spec.info

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.spec.sizes)

    def _load_all(self) -> dict[str, ImageSplit]:
        return dict(self.spec.splits())

    def status(self) -> DatasetStatus:
        missing = self.spec.missing()
        return DatasetStatus(
            self.info.name,
            self.info.num_classes,
            self.info.domain,
            dict(self.spec.sizes),
            available=missing is None,
            embedded=True,
            how_to_get="embedded" if missing is None else missing,
        )


class RealSource(DatasetSource):
    """A set read from the data root; its info's class names come from the files once present."""

    def __init__(self, spec: real.RealSpec, data_root: Path | None) -> None:
        super().__init__()
        self.spec = spec
        self.data_root = data_root

    def _root(self) -> Path:
        if self.data_root is None:
            raise DatasetUnavailable(
                f"{self.spec.name}: no data root given. Pass data_root= (CLI: --data-root DIR) or set "
                f"{DATA_ROOT_ENV}; expected layout: {self.spec.layout}. To get it: {self.spec.how_to_get}"
            )
        return self.data_root

    @property
    def info(self) -> DatasetInfo:
        classes: tuple[str, ...]
        if self._splits is not None or real.is_present(self.spec, self.data_root):
            try:
                first = self.split(self.split_names[0])
                classes = tuple(first.classes)
            except DatasetUnavailable:
                classes = self._placeholder_classes()
        else:
            classes = self._placeholder_classes()
        return DatasetInfo(
            self.spec.name,
            classes,
            self.spec.domain,
            self.spec.source,
            False,
            self.spec.description or self.spec.layout,
        )

    def _placeholder_classes(self) -> tuple[str, ...]:
        # Class names live in the files; until they are present, indices stand in for them.
        return tuple(f"class-{i}" for i in range(self.spec.num_classes))

    @property
    def split_names(self) -> tuple[str, ...]:
        return self.spec.splits

    def _load_all(self) -> dict[str, ImageSplit]:
        return real.load_real_splits(self.spec, self._root())

    def status(self) -> DatasetStatus:
        available = real.is_present(self.spec, self.data_root)
        root = self.data_root if self.data_root is not None else "<DIR>"
        if available:
            how = str(Path(root) / self.spec.marker)
        elif self.spec.tv_class:  # one command fetches it; the error message shows the layout
            how = self.spec.how_to_get.replace("<DIR>", str(root))
        else:  # fetched by hand: the layout is what the user needs
            how = self.spec.layout_text(root)
        return DatasetStatus(
            self.spec.name,
            self.spec.num_classes,
            self.spec.domain,
            dict(self.spec.sizes),
            available=available,
            embedded=False,
            how_to_get=how,
        )


def dataset_names() -> list[str]:
    """Every registered name: the embedded sets first, then the real ones."""
    return list(embedded.EMBEDDED) + list(real.REAL_SPECS)


def _resolve_root(data_root: str | os.PathLike | None) -> Path | None:
    if data_root is None:
        data_root = os.environ.get(DATA_ROOT_ENV) or None
    return None if data_root is None else Path(data_root).expanduser().resolve()


@functools.cache
def _source(name: str, root: Path | None) -> DatasetSource:
    if name in embedded.EMBEDDED:
        return EmbeddedSource(embedded.EMBEDDED[name])
    return RealSource(real.REAL_SPECS[name], root)


def get_dataset(name: str, data_root: str | os.PathLike | None = None) -> DatasetSource:
    """The registry entry ``name``; real sets read from ``data_root`` (default $NMLBENCH_DATA_ROOT).

    The same (name, data root) returns the same object, so splits load once per process.
    """
    if name not in embedded.EMBEDDED and name not in real.REAL_SPECS:
        raise UnknownNameError(
            "dataset", name, dataset_names(), hint="`nmlbench datasets` lists them with their status"
        )
    root = None if name in embedded.EMBEDDED else _resolve_root(data_root)
    return _source(name, root)


def clear_cache() -> None:
    """Forget every loaded split (tests; or after files under the data root changed)."""
    _source.cache_clear()


def list_datasets(data_root: str | os.PathLike | None = None) -> list[DatasetStatus]:
    """A status row per registered set (cheap: checks for files, loads no image)."""
    return [get_dataset(name, data_root).status() for name in dataset_names()]


def format_datasets_table(statuses: list[DatasetStatus]) -> str:
    """A plain-text table of ``list_datasets`` rows (rich, no colour) for the CLI."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="nml-bench data sets", show_lines=False)
    for col, kw in (
        ("name", {"no_wrap": True}),
        ("classes", {"justify": "right"}),
        ("domain", {}),
        ("train", {"justify": "right"}),
        ("test", {"justify": "right"}),
        ("kind", {}),
        ("available", {}),
        ("how to get", {"overflow": "fold"}),
    ):
        table.add_column(col, **kw)
    for s in statuses:
        table.add_row(
            s.name,
            str(s.num_classes),
            s.domain,
            f"{s.sizes['train']:,}" if "train" in s.sizes else "-",
            f"{s.sizes['test']:,}" if "test" in s.sizes else "-",
            "embedded" if s.embedded else "data root",
            "yes" if s.available else "no",
            s.how_to_get,
        )
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None, force_terminal=False).print(table)
    return buffer.getvalue()
