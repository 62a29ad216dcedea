"""A miniature data root in the real on-disk layouts, written from the embedded data sets.

``write_rehearsal_root(root)`` (or ``python -m benchmark.data.rehearsal DIR``) writes, in a few
seconds and a few MB, every data set the paper suites name, each in the layout and file format
of its real release, so a suite can rehearse end to end (pre-training, features, OOD groups)
through the very loaders the real data go through:

- ``imagenet/{train,val}/<wnid>/*.JPEG`` for the first ten ImageNet wnids; ``imagenet-v2/<0..9>/``;
  ``imagenet-sketch/<wnid>/`` (all ten); ``imagenet-a/`` and ``imagenet-r/`` on five of the ten
  wnids (their ``class_subset``);
- the 14 ID sets of the paper in their published formats (``rehearsal_id``);
- ``domainnet/{real,sketch,painting,clipart}/<class>/*.jpg`` with ``<domain>_{train,test}.txt``;
- ``yfcc15m/shards/0000{0..2}.tar`` (webdataset, unlabelled like the real corpus) and
  ``cc12m/cc12m.tsv`` + ``cc12m/images/`` + ``cc12m/classes.txt`` (a caption table with a label
  column): the same image-caption pairs in both formats.

Sets whose loaders read a fixed class list get all of its classes (CIFAR-100: 100, Flowers: 102);
the others get ten classes with real names, and every loader takes the class list from the
files (ImageNet: its wnid folders), so a ten-class ImageNet loads through the real code path.
Pixels are stand-ins (``rehearsal_images``): class k shows embedded class k % 10. A manifest,
``rehearsal.json``, lists what was written and ``not_reproducible()`` says what could not be.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import shutil
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmark.atomic import atomic_write_json
from benchmark.data.rehearsal_id import ID_WRITERS, Ctx, write_bytes
from benchmark.data.rehearsal_images import encode
from benchmark.errors import ConfigError, NMLBenchError

MANIFEST = "rehearsal.json"
MAX_PER_CLASS = 32  # sklearn-digits' smallest test class (35 images) feeds two DomainNet domains
IMAGENET_WNIDS = (
    "n01440764",
    "n01443537",
    "n01484850",
    "n01491361",
    "n01494475",
    "n01496331",
    "n01498041",
    "n01514668",
    "n01514859",
    "n01518878",
)
SUBSET_WNIDS = IMAGENET_WNIDS[1::2]  # ImageNet-A and -R hold a subset of the classes
DOMAINNET_CLASSES = (
    "aircraft_carrier",
    "airplane",
    "alarm_clock",
    "ambulance",
    "angel",
    "animal_migration",
    "ant",
    "anvil",
    "apple",
    "arm",
)
#: Domain -> (embedded source, style, palette shift): a real shift between the domains.
DOMAINNET_STYLES = {
    "real": ("mnist-5k", "photo", 0),
    "sketch": ("mnist-5k", "sketch", 0),
    "painting": ("sklearn-digits", "photo", 4),
    "clipart": ("sklearn-digits", "rendition", 2),
}
PAIRS_PER_CLASS = 4  # image-text pairs per class, in units of per_class
PAIR_SHARDS = 3


def not_reproducible() -> dict[str, str]:
    """Paper data-set names this machine cannot write into a rehearsal root, with the reason.

    Every format is reproduced; only a missing optional package can stop one (PCAM's HDF5).
    """
    out = {}
    if importlib.util.find_spec("h5py") is None:
        out["pcam"] = "its files are HDF5: writing and reading them needs h5py (pip install h5py)"
    return out


def write_imagenet(ctx: Ctx) -> dict[str, Path]:
    """ImageNet (train, val) and V2 / Sketch / A / R in their layouts, from Fashion-MNIST."""
    pics = ctx.pictures("fashion-mnist")
    out = {}
    for split, folder, n, name_of in (
        ("train", "train", ctx.per_class, lambda w, i: f"{w}_{i}.JPEG"),
        ("test", "val", ctx.n_test, lambda w, i: f"ILSVRC2012_val_{i:08d}.JPEG"),
    ):
        for c, wnid in enumerate(IMAGENET_WNIDS):
            for i, image in enumerate(pics.draw(c, n, split)):
                write_bytes(ctx.root / "imagenet" / folder / wnid / name_of(wnid, c * 1000 + i + 1), encode(image))
    out["imagenet"] = ctx.root / "imagenet"
    for c in range(len(IMAGENET_WNIDS)):  # V2: class-index folders, files named by content hash
        for image in pics.draw(c, ctx.n_test, "test"):
            data = encode(image)
            write_bytes(ctx.root / "imagenet-v2" / str(c) / f"{hashlib.sha1(data).hexdigest()}.jpeg", data)
    out["imagenet-v2"] = ctx.root / "imagenet-v2"
    for name, wnids, style, ext in (
        ("imagenet-sketch", IMAGENET_WNIDS, "sketch", "JPEG"),
        ("imagenet-a", SUBSET_WNIDS, "hard", "jpg"),
        ("imagenet-r", SUBSET_WNIDS, "rendition", "jpg"),
    ):
        for wnid in wnids:
            c = IMAGENET_WNIDS.index(wnid)
            for i, image in enumerate(pics.draw(c, ctx.n_test, "test", style=style)):
                write_bytes(ctx.root / name / wnid / f"{style}_{i}.{ext}", encode(image))
        out[name] = ctx.root / name
    return out


def write_domainnet(ctx: Ctx) -> dict[str, Path]:
    """Four DomainNet domains over ten classes, with the official split-file format."""
    base = ctx.root / "domainnet"
    out = {}
    for domain, (source, style, shift) in DOMAINNET_STYLES.items():
        for split in ("train", "test"):
            lines = []
            for c, name in enumerate(DOMAINNET_CLASSES):
                n = ctx.per_class if split == "train" else ctx.n_test
                for i, image in enumerate(ctx.pictures(source).draw(c + 10 * shift, n, split, style=style)):
                    rel = f"{domain}/{name}/{domain}_{c:03d}_{i + (0 if split == 'train' else 500):06d}.jpg"
                    write_bytes(base / rel, encode(image))
                    lines.append(f"{rel} {c}")
            write_bytes(base / f"{domain}_{split}.txt", ("\n".join(lines) + "\n").encode())
        out[f"domainnet-{domain}"] = base / domain
    return out


def write_image_text(ctx: Ctx) -> dict[str, Path]:
    """The same captioned pairs as webdataset shards (yfcc15m) and as a TSV table (cc12m)."""
    import pandas as pd

    from benchmark.captions import class_captions
    from benchmark.data.embedded import ANIMAL_CLASSES

    n = PAIRS_PER_CLASS * ctx.per_class
    images = np.concatenate([ctx.pictures("animal-mnist").draw(c, n, "train") for c in range(10)])
    labels = np.repeat(np.arange(10), n)
    order = ctx.rng("pairs").permutation(len(labels))
    images, labels = images[order], labels[order]
    captions = class_captions(labels, ANIMAL_CLASSES, seed=ctx.seed)
    files = [encode(im) for im in images]
    keys = [f"{i:09d}" for i in range(len(files))]
    shards = ctx.root / "yfcc15m" / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    for s, rows in enumerate(np.array_split(np.arange(len(keys)), PAIR_SHARDS)):
        with tarfile.open(shards / f"{s:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in rows.tolist():
                for ext, data in (("jpg", files[i]), ("txt", captions[i].encode("utf-8"))):
                    info = tarfile.TarInfo(f"{keys[i]}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
    table = ctx.root / "cc12m"
    for key, data in zip(keys, files):
        write_bytes(table / "images" / f"{key}.jpg", data)
    write_bytes(table / "classes.txt", ("\n".join(ANIMAL_CLASSES) + "\n").encode())
    pd.DataFrame({"filepath": [f"images/{k}.jpg" for k in keys], "title": captions, "label": labels}).to_csv(
        table / "cc12m.tsv", sep="\t", index=False
    )
    return {"yfcc15m": ctx.root / "yfcc15m", "cc12m": table}


def _clear(root: Path) -> None:
    """Refuse a folder that holds something else; empty a previous rehearsal root."""
    if not root.exists():
        return
    entries = list(root.iterdir())
    if entries and not (root / MANIFEST).is_file():
        raise ConfigError(
            f"{root} is not empty and holds no {MANIFEST}, so it is not a rehearsal root; "
            f"pick an empty or new folder (nothing was written)"
        )
    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def write_rehearsal_root(root: str | Path, *, per_class: int = 6, seed: int = 0) -> dict[str, Path]:
    """Write the miniature data root; return {registry name: the folder its files are in}.

    ``per_class`` training images per class (test: half as many, at least one), 1 to
    ``MAX_PER_CLASS``; the default 6 leaves one image per class for a 10 % validation carve.
    The same (per_class, seed) writes identical pixels and captions. Data sets of the paper
    suites it cannot write are named by ``not_reproducible()`` (and in the manifest).
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or not 1 <= per_class <= MAX_PER_CLASS:
        raise ConfigError(f"per_class must be an integer in 1..{MAX_PER_CLASS}, got {per_class!r}")
    root = Path(root).expanduser().resolve()
    _clear(root)
    root.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(root, per_class, max(1, per_class // 2), seed)
    skipped = not_reproducible()
    written = {name: writer(ctx) for name, writer in ID_WRITERS.items() if name not in skipped}
    for group in (write_imagenet, write_domainnet, write_image_text):
        written.update(group(ctx))
    atomic_write_json(
        root / MANIFEST,
        {
            "per_class": per_class,
            "test_per_class": ctx.n_test,
            "seed": seed,
            "sets": {k: str(v.relative_to(root)) for k, v in written.items()},
            "not_reproducible": skipped,
        },
    )
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.data.rehearsal", description=__doc__.split("\n")[0])
    parser.add_argument("root", metavar="DIR", help="folder to write (new, empty, or a previous rehearsal root)")
    parser.add_argument("--per-class", type=int, default=6, help="training images per class (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        written = write_rehearsal_root(args.root, per_class=args.per_class, seed=args.seed)
    except NMLBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in Path(args.root).rglob("*") if f.is_file())
    print(
        f"wrote {len(written)} data sets ({size / 1e6:.1f} MB) into {args.root} in "
        f"{time.perf_counter() - start:.1f} s; use it as --data-root {args.root}"
    )
    for name, path in written.items():
        print(f"  {name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
