"""Dataset discovery: the Kaggle folder layout -> a manifest, and the patient-grouped val split."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..core.labels import LABELS
from .decode import is_dicom

_ETIOLOGY_CLASS = {"normal": "NORMAL", "bacteria": "BACTERIAL", "virus": "VIRAL"}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".dcm"}
SPLIT_DIRS = {"train": "train", "val": "val-official", "test": "test"}

KAGGLE_HELP = """\
Download the Kermany et al. (2018) chest X-ray dataset (CC BY 4.0) from Kaggle:

    pip install kaggle        # needs ~/.kaggle/kaggle.json, see https://www.kaggle.com/docs/api
    kaggle datasets download -d paultimothymooney/chest-xray-pneumonia -p data/
    unzip -q data/chest-xray-pneumonia.zip -d data/

then pass --data data/chest_xray or set PNEUMOSCAN_DATA."""

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL\d+-)?IM-\d+)-", re.IGNORECASE)


class DatasetNotFound(FileNotFoundError):
    """Raised when a data directory does not hold the Kaggle layout."""


@dataclass(frozen=True)
class Record:
    """One image; `split` is the folder it came from (train / val-official / test)."""

    path: str
    split: str
    label: str
    etiology: str
    patient: str
    sha256: str

    @property
    def target(self) -> int:
        return LABELS.index(self.label)


def class_index(record: Record, labels) -> int:
    """The record's class index among `labels` (LABELS or ETIOLOGY_LABELS)."""
    if tuple(labels) == LABELS:
        return record.target
    name = _ETIOLOGY_CLASS.get(record.etiology)
    if name is None or name not in labels:
        raise ValueError(f"{record.path}: no etiology in its file name (a three-class model "
                         f"needs personN_bacteria_* or personN_virus_* pneumonia images)")
    return list(labels).index(name)


def parse_name(name: str, label: str) -> tuple[str, str]:
    """File name -> (patient, etiology).

    Examples:
        >>> parse_name("person1_virus_6.jpeg", "PNEUMONIA")
        ('person1', 'virus')
        >>> parse_name("NORMAL2-IM-0001-0001.jpeg", "NORMAL")
        ('NORMAL2-IM-0001', 'normal')
    """
    if m := _PERSON.match(name):
        return m.group(1), m.group(2).lower()
    if m := _NORMAL.match(name):
        return m.group(1), "normal"
    # Unknown naming (a user's own folder): every file is its own patient.
    return Path(name).stem, "normal" if label == "NORMAL" else "unknown"


def name_family(name: str) -> str:
    """The acquisition batch a dataset file name belongs to: 'NORMAL2-IM' (the second batch
    of normals, where the official val and most test normals come from), 'IM' (the first
    batch of normals), 'person' (the pneumonias), 'other' (a user's own naming).

    Examples:
        >>> name_family("NORMAL2-IM-1427-0001.jpeg"), name_family("IM-0115-0001.jpeg")
        ('NORMAL2-IM', 'IM')
        >>> name_family("person1_virus_6.jpeg"), name_family("scan.png")
        ('person', 'other')
    """
    if _PERSON.match(name):
        return "person"
    if m := _NORMAL.match(name):
        return "NORMAL2-IM" if m.group(1).upper().startswith("NORMAL") else "IM"
    return "other"


def default_data_dir() -> Path:
    return Path(os.environ.get("PNEUMOSCAN_DATA") or "data/chest_xray")


def find_root(data_dir: str | Path) -> Path:
    """The folder holding train/ and test/, tolerating the zip's nested chest_xray/chest_xray/."""
    base = Path(data_dir)
    for cand in (base, base / "chest_xray", base / "chest_xray" / "chest_xray"):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise DatasetNotFound(f"no chest X-ray dataset at '{base}' (expected train/ and test/ "
                          f"folders with NORMAL/ and PNEUMONIA/ inside).\n\n{KAGGLE_HELP}")


def _sha256(path: Path) -> str:
    """The file's sha256, or "" when it cannot be read (decoding later reports why)."""
    if not path.is_file():  # opening a FIFO would wait for a writer forever
        return ""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""


def is_image_file(path: Path) -> bool:
    """An image by its suffix, or a file without one that is DICOM by content (PACS exports
    are often extensionless or named by a numeric UID such as 1.2.840.113619.2.55.3)."""
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    return (suffix == "" or suffix[1:].isdigit()) and path.is_file() and is_dicom(path)


def _reported(path: Path) -> bool:
    """An entry that is no image file but must not vanish silently: a FIFO, socket or device,
    a broken or looping symbolic link. Decoding names it with its problem."""
    return not path.name.startswith(".") and not path.is_file() and not path.is_dir()


def _entries(folder: Path) -> list[Path]:
    """The image files of one folder (not recursive), sorted, with the entries decoding must
    report (_reported); an unreadable folder is itself the one entry (reported as such)."""
    try:
        children = sorted(folder.iterdir())
    except OSError:
        return [folder]
    return [p for p in children if "__MACOSX" not in p.parts
            and ((p.is_file() and is_image_file(p)) or _reported(p))]


def walk_images(folder: str | Path) -> list[str]:
    """Every image file under `folder` (recursively, sorted, symbolic links to folders not
    followed), plus each entry decoding must report rather than drop: FIFOs, sockets,
    devices, broken or looping symbolic links (_reported) and unreadable subfolders."""
    found: list[str] = []

    def unreadable(error: OSError) -> None:
        found.append(error.filename)

    for root, _, names in os.walk(folder, onerror=unreadable):
        for name in names:  # os.walk lists FIFOs, devices and looping links as files
            p = Path(root) / name
            if (p.is_file() and is_image_file(p)) or _reported(p):
                found.append(str(p))
    return sorted(found)


def scan(data_dir: str | Path) -> list[Record]:
    """Every image under {train,val,test}/{NORMAL,PNEUMONIA}/, sorted by path, with sha256."""
    root = find_root(data_dir)
    records = []
    for folder, split in SPLIT_DIRS.items():
        for label in LABELS:
            d = root / folder / label
            if not d.is_dir():
                continue
            for p in _entries(d):
                patient, etiology = parse_name(p.name, label)
                records.append(Record(str(p), split, label, etiology, patient, _sha256(p)))
    if not any(r.split == "train" for r in records):
        raise DatasetNotFound(f"no images found under '{root}/train'.\n\n{KAGGLE_HELP}")
    return records


def _groups(records: list[Record]) -> np.ndarray:
    """Group id per record: one patient, merged with any patient sharing a byte-identical image,
    so that a duplicate never straddles the train/val boundary."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    first_by_sha: dict[str, str] = {}
    for r in records:
        if not r.sha256:  # unreadable: nothing to compare
            continue
        other = first_by_sha.setdefault(r.sha256, r.patient)
        parent[find(r.patient)] = find(other)
    roots = [find(r.patient) for r in records]
    index = {g: i for i, g in enumerate(dict.fromkeys(roots))}
    return np.array([index[g] for g in roots])


def limit_per_class(records: list[Record], per_class: int, seed: int) -> list[Record]:
    """A seeded subset of at most `per_class` train-folder images per label (quick runs);
    every record when per_class <= 0."""
    pool = [r for r in records if r.split == "train"]
    if per_class <= 0:
        return pool
    rng = np.random.default_rng(seed)
    keep = []
    for label in LABELS:
        of_label = [r for r in pool if r.label == label]
        idx = sorted(rng.choice(len(of_label), size=min(per_class, len(of_label)),
                                replace=False))
        keep += [of_label[i] for i in idx]
    return keep


def split_train_val(records: list[Record], val_fraction: float, seed: int,
                    per_class: int = 0):
    """Carve a validation split out of the train folder, grouped by patient, stratified by label
    (out of a `limit_per_class` subset when per_class > 0).

    Returns (train, val) lists of records. Deterministic for a given manifest and seed.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    pool = limit_per_class(records, per_class, seed)
    if not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    n_splits = max(2, round(1 / val_fraction))
    y = np.array([r.target for r in pool])
    fewest = min((int((y == t).sum()) for t in (0, 1)), default=0)
    if fewest < n_splits:  # sklearn's own error names neither the cause nor the keys
        from ..core.config import ConfigError

        raise ConfigError(f"the train split holds {fewest} images of its smallest class, too "
                          f"few to carve val_fraction={val_fraction} out of it (at least "
                          f"{n_splits} needed): raise limit_per_class (now {per_class}) or "
                          f"val_fraction, or add images")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(cv.split(np.zeros(len(pool)), y, _groups(pool)))
    return [pool[i] for i in sorted(train_idx)], [pool[i] for i in sorted(val_idx)]


def select(records: list[Record], split: str, val_fraction: float, seed: int,
           per_class: int = 0) -> list[Record]:
    """Records of a named split: train, val (carved from train as fit() carves it, with the
    run's limit_per_class), val-official, test."""
    if split in ("train", "val"):
        train, val = split_train_val(records, val_fraction, seed, per_class)
        return train if split == "train" else val
    if split in ("val-official", "test"):
        return [r for r in records if r.split == split]
    raise ValueError(f"unknown split '{split}': choose train, val, val-official or test")


def write_manifest(records: list[Record], path: str | Path) -> None:
    # surrogateescape: a file name that is not valid UTF-8 is written back byte for byte
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.DictWriter(f, fieldnames=[f.name for f in fields(Record)])
        w.writeheader()
        w.writerows(asdict(r) for r in records)
