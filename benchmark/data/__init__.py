"""Data sets: a flat registry of embedded (offline) and data-root sets, OOD groups, and sampling.

See ``registry`` (lookup), ``embedded`` (the six offline sets), ``real`` (data-root layouts),
``groups`` (OOD groups), ``sampling`` (validation carving, few-shot).
"""

from benchmark.data.base import ArraySplit, DatasetInfo, DatasetStatus, ImageSplit
from benchmark.data.groups import OOD_GROUPS, OODGroup, check_label_space, get_ood_group
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

__all__ = [
    "ArraySplit", "DatasetInfo", "DatasetSource", "DatasetStatus", "ImageSplit", "OODGroup", "OOD_GROUPS",
    "check_label_space", "clear_cache", "dataset_names", "download_dataset", "few_shot",
    "format_datasets_table", "get_dataset", "get_ood_group", "list_datasets", "train_val_split",
]
