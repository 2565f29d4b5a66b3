"""The split of a run: the records a run trained, was selected and is tested on, rebuilt from
the config stored in its model.json (fraction, split seed, per-class limit) over a dataset
folder or a manifest CSV alike. Every verb that reads a run's split (evaluate, calibrate,
fit-ood, export, report, the shift validation) gets it here."""

from __future__ import annotations

from pathlib import Path

from ..core.config import config_from_dict
from .manifest import load_records
from .records import Record, select


def split_of_run(config: dict, source: str | Path | list[Record], split: str) -> list[Record]:
    """The records of `split` ('train', 'val', 'val-official', 'test') as the run whose
    resolved config is `config` carved them from `source`: a dataset folder, a manifest CSV,
    or records already loaded from one."""
    cfg = config_from_dict(config)
    records = source if isinstance(source, list) else load_records(source)
    return select(records, split, cfg.val_fraction, cfg.data_seed, cfg.limit_per_class)
