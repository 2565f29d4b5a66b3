"""The data layer: dataset records (Kaggle layout, manifest CSV), the patient-grouped split
(records.py) and image decoding (decode.py). numpy and Pillow only."""

from ..core.labels import ETIOLOGY_LABELS, LABELS, task_labels
from .manifest import ManifestError, load_records, read_manifest
from .records import (
    IMAGE_SUFFIXES,
    KAGGLE_HELP,
    SPLIT_DIRS,
    DatasetNotFound,
    Record,
    class_index,
    default_data_dir,
    find_root,
    is_image_file,
    limit_per_class,
    name_family,
    parse_name,
    scan,
    select,
    split_train_val,
    write_manifest,
)

__all__ = ["ETIOLOGY_LABELS", "IMAGE_SUFFIXES", "KAGGLE_HELP", "LABELS", "SPLIT_DIRS",
           "DatasetNotFound", "ManifestError", "Record", "class_index", "default_data_dir",
           "find_root", "is_image_file", "limit_per_class", "load_records", "name_family",
           "parse_name",
           "read_manifest", "scan", "select", "split_train_val", "task_labels",
           "write_manifest"]
