"""Data sets: a flat registry of embedded (offline) and data-root sets, OOD groups, and sampling.

See ``registry`` (lookup), ``embedded`` (the six offline sets), ``real`` (the data-root entries:
``torchvision_sets`` and ``own_readers`` for the 14 ID sets, ``imagenet``, ``domainnet``,
``image_text`` with ``tar_index`` for the CLIP corpora), ``groups`` (OOD groups), ``sampling``
(validation carving, few-shot) and ``rehearsal`` (a miniature data root in the real layouts; import
``write_rehearsal_root`` from there: it is kept out of this package's namespace so that
``python -m benchmark.data.rehearsal`` runs it cleanly).
"""

from benchmark.data.base import ArraySplit, DatasetInfo, DatasetStatus, ImageSplit
from benchmark.data.groups import OOD_GROUPS, OODGroup, check_label_space, get_ood_group
from benchmark.data.image_text import UNLABELLED, ImageTextSplit
from benchmark.data.real import download_dataset
from benchmark.data.registry import (
    DatasetSource,
    clear_cache,
    dataset_names,
    format_datasets_table,
    get_dataset,
    list_datasets,
)
from benchmark.data.sampling import few_shot, train_val_split
from benchmark.data.tar_index import CorruptShardError

__all__ = [
    "ArraySplit",
    "CorruptShardError",
    "DatasetInfo",
    "DatasetSource",
    "DatasetStatus",
    "ImageSplit",
    "ImageTextSplit",
    "OODGroup",
    "OOD_GROUPS",
    "UNLABELLED",
    "check_label_space",
    "clear_cache",
    "dataset_names",
    "download_dataset",
    "few_shot",
    "format_datasets_table",
    "get_dataset",
    "get_ood_group",
    "list_datasets",
    "train_val_split",
]
