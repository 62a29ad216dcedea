"""Make the embedded data sets ready: ``python -m benchmark.data.install`` (run by ``make install``).

1. Fashion-MNIST comes from the Debian package dataset-fashion-mnist. If its files are already in
   /usr/share/datasets/fashion-mnist (or in $NMLBENCH_DATA_HOME/fashion-mnist), nothing is done;
   as root the package is installed with apt-get (after ``apt-get update`` if the lists are
   missing); without root it is fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
   into $NMLBENCH_DATA_HOME/fashion-mnist, which needs no privileges.
2. The font-rendered digit sets are rendered once into the cache.
3. The data-set table is printed.

``--download NAME --data-root DIR`` instead downloads one torchvision-backed real set: the only
path in the project that downloads data, and only when asked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmark.data import embedded
from benchmark.errors import DatasetUnavailable, NMLBenchError

PACKAGE = "dataset-fashion-mnist"
Runner = Callable[..., subprocess.CompletedProcess]


def _files_present(folder: Path) -> bool:
    return all((folder / f).is_file() for pair in embedded.FASHION_FILES.values() for f in pair)


def _run(runner: Runner, cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    try:
        return runner(list(cmd), capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:  # apt-get / dpkg-deb not on this system
        return subprocess.CompletedProcess(list(cmd), 127, "", str(exc))


def _failure(what: str, proc: subprocess.CompletedProcess) -> DatasetUnavailable:
    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
    return DatasetUnavailable(
        f"fashion-mnist: {what} failed (exit {proc.returncode}: {' | '.join(tail)}). Install the Debian "
        f"package {PACKAGE} (as root: apt-get update && apt-get install -y {PACKAGE}), or copy the four "
        f"idx .gz files into {embedded.data_home() / 'fashion-mnist'}"
    )


def install_as_root(runner: Runner) -> None:
    """apt-get install; on failure refresh the package lists once and retry."""
    proc = _run(runner, ["apt-get", "install", "-y", PACKAGE], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0:
        update = _run(runner, ["apt-get", "update"])
        if update.returncode != 0:
            raise _failure("apt-get update", update)
        proc = _run(
            runner, ["apt-get", "install", "-y", PACKAGE], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )
        if proc.returncode != 0:
            raise _failure(f"apt-get install {PACKAGE}", proc)


def extract_without_root(runner: Runner, target: Path) -> None:
    """apt-get download the .deb into a temp folder, dpkg-deb -x it, move the idx files to ``target``."""
    with tempfile.TemporaryDirectory(prefix="nmlbench-fmnist-") as tmp:
        proc = _run(runner, ["apt-get", "download", PACKAGE], cwd=tmp)
        if proc.returncode != 0:
            raise _failure(f"apt-get download {PACKAGE}", proc)
        debs = sorted(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise DatasetUnavailable(f"fashion-mnist: apt-get download left no {PACKAGE}_*.deb in {tmp}")
        unpacked = Path(tmp) / "unpacked"
        proc = _run(runner, ["dpkg-deb", "-x", str(debs[-1]), str(unpacked)])
        if proc.returncode != 0:
            raise _failure("dpkg-deb -x", proc)
        source = unpacked / embedded.FASHION_SYSTEM_DIR.relative_to("/")
        if not _files_present(source):
            raise DatasetUnavailable(f"fashion-mnist: the unpacked package has no idx files in {source}")
        target.mkdir(parents=True, exist_ok=True)
        for pair in embedded.FASHION_FILES.values():
            for name in pair:
                shutil.move(str(source / name), str(target / name))


def ensure_fashion_mnist(
    runner: Runner = subprocess.run, is_root: bool | None = None, system_dir: Path | None = None
) -> Path:
    """Return the folder holding the Fashion-MNIST idx files, installing them if needed."""
    system_dir = embedded.FASHION_SYSTEM_DIR if system_dir is None else system_dir
    user_dir = embedded.data_home() / "fashion-mnist"
    for folder in (system_dir, user_dir):
        if _files_present(folder):
            return folder
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if is_root:
        install_as_root(runner)
        if _files_present(system_dir):
            return system_dir
        raise DatasetUnavailable(f"fashion-mnist: {PACKAGE} installed but {system_dir} lacks the idx files")
    extract_without_root(runner, user_dir)
    return user_dir


def prerender_fonts() -> dict[str, float]:
    """Render (or load) the font digit sets into the cache; seconds taken per set."""
    from benchmark.data.registry import get_dataset

    times = {}
    for name in ("digits-printed", "digits-handwriting"):
        start = time.perf_counter()
        get_dataset(name).split("train")
        times[name] = time.perf_counter() - start
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.data.install", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--download",
        metavar="NAME",
        action="append",
        default=[],
        help="download this torchvision-backed real set into --data-root (repeatable)",
    )
    parser.add_argument("--data-root", metavar="DIR", help="data root for --download")
    args = parser.parse_args(argv)
    try:
        if args.download:
            if not args.data_root:
                parser.error("--download needs --data-root DIR")
            from benchmark.data.real import download_dataset

            for name in args.download:
                download_dataset(name, args.data_root)
                print(f"{name}: downloaded into {args.data_root}")
            return 0
        folder = ensure_fashion_mnist()
        print(f"fashion-mnist: {folder}")
        for name, seconds in prerender_fonts().items():
            print(f"{name}: ready in {seconds:.1f} s (cache {embedded.data_home() / 'rendered'})")
        from benchmark.data.registry import format_datasets_table, list_datasets

        print(format_datasets_table(list_datasets()))
    except NMLBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
