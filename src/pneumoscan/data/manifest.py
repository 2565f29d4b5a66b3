"""A manifest CSV -> Records: training data listed in a file of any length, paths anywhere."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from ..core.labels import LABELS
from .records import Record, _sha256, parse_name, scan

log = logging.getLogger(__name__)

REQUIRED = ("path", "label")
SPLITS = ("train", "test")


class ManifestError(ValueError):
    """A manifest that cannot be used: names the file and the CSV line."""


def read_manifest(csv_path: str | Path) -> list[Record]:
    """Rows of `path,label[,patient,etiology,split,sha256]` -> Records, in file order.

    Relative paths resolve against the CSV's folder. `split` (train or test) defaults to
    train; `patient` and `etiology` default to what the file name says (parse_name).
    A missing file is kept (and logged): decoding skips it and lists it in skipped.txt.

    Examples:
        >>> recs = read_manifest("data/manifest.csv")   # doctest: +SKIP
        >>> recs[0].split, recs[0].label
        ('train', 'NORMAL')
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"no manifest file at '{csv_path}'")
    base = csv_path.absolute().parent
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{csv_path} line 1: missing column(s) {', '.join(missing)} "
                                f"(need at least {','.join(REQUIRED)})")
        # DictReader numbers lines itself (quoted newlines included): line_num after a row.
        return [_record(row, base, f"{csv_path} line {reader.line_num}") for row in reader]


def _record(row: dict, base: Path, where: str) -> Record:
    label = (row.get("label") or "").strip().upper()
    if label not in LABELS:
        raise ManifestError(f"{where}: unknown label {row.get('label')!r} "
                            f"(choose {' or '.join(LABELS)})")
    split = (row.get("split") or "train").strip().lower()
    if split not in SPLITS:
        raise ManifestError(f"{where}: unknown split {row.get('split')!r} "
                            f"(choose {' or '.join(SPLITS)})")
    raw = (row.get("path") or "").strip()
    if not raw:
        raise ManifestError(f"{where}: empty path")
    # normpath, not resolve: "a/../b" is tidied but a symlinked data folder keeps its name
    path = Path(os.path.normpath(raw if Path(raw).is_absolute() else base / raw))
    if not path.is_file():
        log.warning("%s: no such file '%s'; it will be skipped", where, path)
    patient, etiology = parse_name(path.name, label)
    patient = (row.get("patient") or "").strip() or patient
    etiology = (row.get("etiology") or "").strip() or etiology
    sha = (row.get("sha256") or "").strip() or _sha256(path)
    return Record(str(path), split, label, etiology, patient, sha)


def load_records(source: str | Path) -> list[Record]:
    """Records from a dataset folder (scan) or a manifest CSV file (read_manifest)."""
    if Path(source).suffix.lower() == ".csv":
        return read_manifest(source)
    return scan(source)
