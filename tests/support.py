"""Helpers shared by several test modules (imported as ``support``: pytest puts tests/ on the path).

Kept out of the test modules themselves so that no test module imports another, which breaks
under a bare ``pytest`` (tests/ is not a package).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from benchmark.data import clear_cache
from benchmark.hashing import config_hash

ID_TASKS, OOD_TASKS = ("a", "b"), ("o",)
GRID = {"lp": [(None, None)], "nmtune": [(0.01, 1), (0.01, 2), (0.1, 1), (0.1, 2)]}


def synthetic_runs() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for noise, method, task, ps, (lam, depth) in (
        (n, m, t, s, hp)
        for n in (0.0, 0.1)
        for m in GRID
        for t in ID_TASKS + OOD_TASKS
        for s in (0, 1, 2)
        for hp in GRID[m]
    ):
        val = round(float(rng.uniform(0.5, 0.9)), 4)
        test = round(float(rng.uniform(0.5, 0.9)), 4)
        rows.append(
            {
                "backbone": "net",
                "noise_ratio": noise,
                "head": method,
                "task": task,
                "task_kind": "ood" if task in OOD_TASKS else "id",
                "pretrain_seed": ps,
                "head_seed": 0,
                "fraction": 1.0,
                "lam": lam,
                "depth": depth,
                "val_accuracy": val,
                "test_accuracy": test,
                "test_macro_f1": round(test - 0.01, 4),
                "test_sve": round(float(rng.uniform(3, 5)), 4),
                "test_lsvr": round(float(rng.uniform(0.05, 0.2)), 4),
                "test_sve_raw": 4.0 + noise,
                "test_lsvr_raw": 0.2 - noise,
            }
        )
    df = pd.DataFrame(rows)
    trap = (df.noise_ratio == 0.0) & (df["head"] == "nmtune") & (df.task == "a") & (df.pretrain_seed == 0)
    # Best test accuracy, worst validation: must never be chosen.
    df.loc[trap & (df["lam"] == 0.1) & (df.depth == 2), ["val_accuracy", "test_accuracy"]] = [0.10, 0.99]
    # A validation tie between (0.01, 2) and (0.1, 1): the smaller lambda wins.
    df.loc[trap & (df["lam"] == 0.01) & (df.depth == 2), ["val_accuracy", "test_accuracy"]] = [0.95, 0.61]
    df.loc[trap & (df["lam"] == 0.1) & (df.depth == 1), ["val_accuracy", "test_accuracy"]] = [0.95, 0.77]
    return df


# -- figures ---------------------------------------------------------------------------------------


def check_figure(path: Path, *, data: bool = True) -> np.ndarray:
    """Decode a written figure and check that it holds a drawing; return its grey pixels.

    A PNG that PIL decodes in full (over 2 kB), at least 400 x 300 pixels, not a blank canvas. With ``data``
    it must show coloured marks: the report draws data in colour (lines, markers, error bars)
    while its "nothing to show" placeholder is black text only; ``data=False`` asks for that
    placeholder.
    """
    from PIL import Image

    raw = path.read_bytes()
    with Image.open(path) as img:
        assert img.format == "PNG", (path, img.format)
        rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    assert len(raw) > 2000 and rgb.shape[0] >= 300 and rgb.shape[1] >= 400, (path, len(raw), rgb.shape)
    grey = rgb.mean(axis=2)
    assert (grey < 128).sum() > 200 and grey.std() > 5, f"{path.name} is (nearly) blank"
    coloured = int(((rgb.max(axis=2) - rgb.min(axis=2)) > 80).sum())
    if data:
        assert coloured > 300, f"{path.name} shows no coloured data marks ({coloured} pixels)"
    else:
        assert coloured == 0, f"{path.name} should be a placeholder without data ({coloured} coloured pixels)"
    return grey


# -- real data layouts, written into a temporary folder --------------------------------------------

#: Where each ImageNet set keeps class ``c``'s ``k``-th image, relative to the data root
#: (``benchmark.data.real``'s layouts; ``{w}`` is the class's wnid).
IMAGENET_LAYOUT = {
    "imagenet/train": "imagenet/train/{w}/{w}_{k:03d}.JPEG",
    "imagenet/val": "imagenet/val/{w}/val_{c}_{k:03d}.JPEG",
    "imagenet-v2": "imagenet-v2/{c}/{c}_{k:03d}.jpeg",
    "imagenet-sketch": "imagenet-sketch/{w}/sketch_{k:03d}.JPEG",
    "imagenet-a": "imagenet-a/{w}/a_{k:03d}.jpg",
    "imagenet-r": "imagenet-r/{w}/r_{k:03d}.png",
}
Pixels = Callable[[str, int, int], "np.ndarray | int"]


def write_image(path: Path, pixels: np.ndarray | int, size: tuple[int, int] = (5, 6)) -> Path:
    """One RGB image file, its format taken from the suffix; an int is a flat grey image of
    ``size`` (width, height)."""
    from PIL import Image

    arr = np.full((size[1], size[0], 3), pixels, np.uint8) if isinstance(pixels, (int, np.integer)) else pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


def write_imagenet_root(root: Path, wnids: Sequence[str], counts: Mapping[str, Sequence[int]], pixels: Pixels) -> Path:
    """ImageNet and its variants under ``root`` in the layouts the real loaders read.

    ``counts[set][c]`` images of class ``c`` are written for each set named in ``counts`` (keys of
    ``IMAGENET_LAYOUT``; a count of 0 leaves the class's folder out, as ImageNet-A/-R leave out
    800 classes); ``pixels(set, c, k)`` gives the k-th image of class c (an array or a grey level).
    """
    for name, per_class in counts.items():
        pattern = IMAGENET_LAYOUT[name]
        for c, n in enumerate(per_class):
            for k in range(n):
                write_image(root / pattern.format(w=wnids[c], c=c, k=k), pixels(name, c, k))
    return root


def imagenet_root_from_arrays(root: Path, images: np.ndarray, labels: np.ndarray, *, size: int | None = None) -> Path:
    """Labelled arrays (uint8 [N, H, W] or [N, H, W, 3]) as ImageNet's training folders through
    :func:`write_imagenet_root`: class ``c``'s k-th file is the k-th image labelled ``c``
    (optionally resized to ``size`` pixels a side), wnids ``n%08d`` of the label."""
    from PIL import Image

    labels = np.asarray(labels)
    members = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]

    def pixels(_set: str, c: int, k: int) -> np.ndarray:
        img = Image.fromarray(np.asarray(images[members[c][k]], dtype=np.uint8)).convert("RGB")
        return np.asarray(img if size is None else img.resize((size, size), Image.Resampling.BILINEAR))

    return write_imagenet_root(
        root, [f"n{c:08d}" for c in range(len(members))], {"imagenet/train": [len(m) for m in members]}, pixels
    )


# -- the tiny suite run once per session through the real runner (``pipeline_run`` in conftest) -----

PIPELINE_WNIDS = ("n01440764", "n01443537", "n01484850")
#: Images per class and set. Train sizes make the documented rounding visible: the max_train cap
#: (36 of 48) keeps 12, 10.5 -> 11, 13.5 -> 14; validation takes 2, 2, 3 of those; the 0.25
#: few-shot share of the remaining 10, 9, 11 is 2.5 -> 3, 2.25 -> 2, 2.75 -> 3.
#: The four OOD test domains have unequal sizes (3, 5, 4, 8), so a size-weighted mean differs.
PIPELINE_COUNTS = {
    "imagenet/train": (16, 14, 18),
    "imagenet/val": (2, 2, 2),
    "imagenet-v2": (1, 1, 1),
    "imagenet-sketch": (2, 2, 1),
    "imagenet-a": (0, 2, 2),
    "imagenet-r": (0, 4, 4),
}
PIPELINE_MAX_TRAIN, PIPELINE_VAL_FRACTION, PIPELINE_FEW_SHOT = 36, 0.2, 0.25
PIPELINE_SUBSET = (1, 2)  # the classes ImageNet-A/-R hold
_COLOURS = ((225, 35, 30), (30, 200, 45), (40, 60, 225))


def pipeline_pixels(name: str, c: int, k: int) -> np.ndarray:
    """A 24x24 image in class c's colour with its own seeded texture (every image distinct).

    ImageNet-A/-R images are decoys: each looks like class 0 (outside their class subset) and the
    k-th image of class 1 equals the k-th of class 2. A head scoring only the subset's logits must
    then get exactly one of each identical pair right (accuracy 1/2), whatever it learnt; a head
    scoring all logits calls them class 0 (accuracy 0).
    """
    decoy = name in ("imagenet-a", "imagenet-r")
    seed = config_hash(["decoy", name, k] if decoy else [name, c, k])
    rng = np.random.default_rng(int(seed, 16))
    colour = np.asarray(_COLOURS[0 if decoy else c], dtype=np.int16)
    texture = rng.integers(-30, 31, size=(24, 24, 3))
    return np.clip(colour + texture, 0, 255).astype(np.uint8)


def pipeline_suite(root: Path) -> dict:
    """The suite: one frozen random-init backbone, ImageNet as an ID task and the
    ``imagenet-variants`` OOD group, three heads (a lam grid for NMTune), two head seeds, two
    fractions and a max_train cap; Ray and a sqlite MLflow store under ``root``."""
    return {
        "name": "pipeline",
        "work_dir": str(root / "work"),
        "data_root": str(root / "data"),
        "backbones": [
            {"family": "timm", "arch": "test_resnet", "image_size": 32, "seed": 0, "name": "test_resnet (random init)"}
        ],
        "downstream": {
            "id": ["imagenet"],
            "ood": ["imagenet-variants"],
            "heads": ["lp", "mlp", "nmtune"],
            "grid": {"lam": [0.01, 0.1]},
            "seeds": [0, 1],
            "fractions": [PIPELINE_FEW_SHOT, 1.0],
            "max_train": PIPELINE_MAX_TRAIN,
            "hparams": {"epochs": 15, "batch_size": 16, "preset": "paper"},
        },
        "selection": {"split": "val", "val_fraction": PIPELINE_VAL_FRACTION},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "pipeline"},
        "ray": {"fits_per_trial": 16, "max_concurrent_trials": 2},
    }


# -- data tests: an isolated data home, Python 2 pickles as CIFAR ships them ---------------------


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
    dtype = (
        _global("numpy", "dtype")
        + _py2_str("u1")
        + _int(0)
        + _int(1)
        + b"\x87R"
        + b"("
        + _int(3)
        + _py2_str("|")
        + b"NNN"
        + _int(-1)
        + _int(-1)
        + _int(0)
        + b"tb"
    )
    shape = b"(" + b"".join(_int(d) for d in a.shape) + b"t"
    return (
        _global("numpy.core.multiarray", "_reconstruct")
        + _global("numpy", "ndarray")
        + _int(0)
        + b"\x85"
        + _py2_str("b")
        + b"\x87R"
        + b"("
        + _int(1)
        + shape
        + dtype
        + b"\x89"
        + _py2_str(np.ascontiguousarray(a).tobytes())
        + b"tb"
    )


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
    return b"\x80\x02}(" + b"".join(_py2_str(k) + _value(v) for k, v in d.items()) + b"u."


# -- a published synthetic study (conftest's `study` fixture; test_journal, test_publish) ----------

FIT_PARAMS = [
    "backbone",
    "noise_ratio",
    "head",
    "task",
    "task_kind",
    "pretrain_seed",
    "head_seed",
    "fraction",
    "lam",
    "depth",
]


@dataclass
class Study:
    """A published synthetic study in a SQLite MLflow store."""

    uri: str
    experiment: str
    root: Path
    fits: pd.DataFrame  # the fit records as logged (the shape runs_frame returns)


def synthetic_fits() -> pd.DataFrame:
    """80 fits: backbone "net" at 0 % / 10 % noise (ID + OOD tasks) and a frozen "mobilenet" (ID only)."""
    df = synthetic_runs()
    df = df[df.pretrain_seed < 2].reset_index(drop=True)
    frozen = df[(df.noise_ratio == 0.0) & (df.task_kind == "id")].assign(
        backbone="mobilenet",
        noise_ratio=np.nan,
        pretrain_seed=0,
        head_seed=df.pretrain_seed,
        test_accuracy=lambda d: d.test_accuracy - 0.05,
    )  # no ties with "net" when sorting
    return pd.concat([df, frozen], ignore_index=True)


def fit_records(df: pd.DataFrame, suite: str) -> list[dict]:
    out = []
    for i, row in df.reset_index(drop=True).iterrows():
        rec = row.to_dict()
        out.append(
            {
                "key": f"fit{i:03d}",
                "params": {k: rec[k] for k in FIT_PARAMS},
                "metrics": {k: v for k, v in rec.items() if k not in FIT_PARAMS},
                "tags": {"suite": suite},
            }
        )
    return out


def log_pretrainings(tracker, tmp: Path) -> None:
    """Two pre-training runs of "net" (0 % and 10 % noise) with curves and a noise record."""
    from benchmark.pretrain.job import PretrainJob

    for ratio in (0.0, 0.1):
        job = PretrainJob(
            objective="supervised",
            corpus="fashion-mnist",
            arch="test_resnet",
            noise_ratio=ratio,
            epochs=3,
            display="net",
        )
        folder = tmp / job.key
        folder.mkdir(parents=True)
        np.savez(folder / "noise.npz", flipped=np.arange(100) < int(100 * ratio))
        (folder / "noise.json").write_text(json.dumps({"n": 100, "num_flipped": int(100 * ratio), "kind": "symmetric"}))
        history = [
            {
                "epoch": e,
                "loss": 2.0 / (e + 1) + ratio,
                "train_accuracy": 0.5 + 0.1 * e,
                "clean_accuracy": 0.55 + 0.1 * e - ratio,
                "noisy_fit": 0.1 * e * ratio,
                "true_fit": 0.3 + 0.05 * e,
            }
            for e in range(3)
        ]
        tracker.log_pretrain(
            job,
            {
                "metrics": history,
                "noise_path": folder / "noise.npz",
                "checkpoint_path": folder / "model.pt",
                "realised_ratio": ratio,
                "seconds": 4.0,
            },
        )


def build_study(root: Path, experiment: str = "synth") -> Study:
    from benchmark.tracking import Tracker, journal_path

    uri = f"sqlite:///{root / 'mlflow.db'}"
    df = synthetic_fits()
    tracker = Tracker(uri, experiment, suite=experiment, journal=journal_path(root, experiment))
    log_pretrainings(tracker, root / "pretrain")
    for rec in fit_records(df, experiment):
        tracker.log_fit(rec)
    for ratio in (0.0, 0.1):
        tracker.log_spectrum(
            {"backbone": "net", "noise_ratio": ratio, "pretrain_seed": 0},
            "a",
            np.linspace(2.0, 0.1, 16) ** (1 + 3 * ratio),
        )
    from benchmark.reporting import finish_and_publish

    report = finish_and_publish(tracker)
    assert report.pending == 0 and report.leaderboard_rows == 6
    return Study(uri, experiment, root, df)


# -- Ray nodes started with ``ray start`` (test_orchestration, test_multinode) ----------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_port_flags(*, head: bool) -> list[str]:
    """Every listening port of a ``ray start`` node, explicit and free: a second Ray on the
    machine (another test, a developer's session) holds the defaults, e.g. the agent's 52365."""
    flags = [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
    ]
    if head:
        flags.append(f"--ray-client-server-port={free_port()}")
    return flags


def stop_ray_processes(marks: Sequence[str], temp_dir: str | None = None) -> None:
    """Stop the Ray processes whose command line holds one of ``marks`` (a private temp dir, a
    GCS address), and only those; then remove ``temp_dir``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = []
        ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True)
        for line in ps.stdout.splitlines():
            pid, _, args = line.strip().partition(" ")
            if any(m in args for m in marks) and int(pid) != os.getpid():
                pids.append(int(pid))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(3)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


# -- outside plugin packages (test_plugins, test_head_plugins, test_extension_points) -------------


def pip_install_plugin(src: Path, root: Path, timeout: float = 180) -> Path:
    """Install the plugin package at ``src`` into ``root/site`` the way a user would, offline (no
    index, no build isolation, no dependencies), building from a copy under ``root/src`` so
    setuptools' build/ and egg-info never land in the repository; the site directory."""
    import shutil
    import subprocess
    import sys

    copy, site = root / "src", root / "site"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(site),
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return site


def run_suite_locally(suite: Any) -> tuple[Any, list[str]]:
    """``run_suite`` on a private 2-CPU Ray instance (shut down after, unless one was already up):
    the run's summary and the lines it printed."""
    import ray

    from benchmark.ray_session import init_ray
    from benchmark.runner import run_suite

    log: list[str] = []
    started = init_ray(num_cpus=2)
    try:
        return run_suite(suite, echo=log.append), log
    finally:
        if started:
            ray.shutdown()
