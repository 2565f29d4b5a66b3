"""evaluate(model, data, split): metrics at the stored threshold. Fits nothing."""

from __future__ import annotations

from pathlib import Path

from .config import config_from_dict
from .data import DatasetNotFound, load_records, select
from .metrics import headline_metrics
from .predict import Predictor
from .transforms import load_many


def evaluate(model_path: str | Path | None, data_dir: str | Path, split: str,
             allow_pickle: bool = False, tta: bool = False) -> dict:
    """Score every image of `split` and compute metrics at the checkpoint's threshold.

    The carved `val` split is rebuilt from the seed and fraction stored in the checkpoint.
    Unreadable images are listed under `skipped`, not scored. `model_path` may be an
    ensemble folder; `tta` averages over test-time augmentations (tta.py).
    """
    all_records = load_records(data_dir)  # a missing dataset is reported before the model loads
    predictor = Predictor.from_checkpoint(model_path, allow_pickle=allow_pickle, tta=tta)
    ckpt = predictor.ckpt
    cfg = config_from_dict(ckpt.config)
    records = select(all_records, split, cfg.val_fraction, cfg.data_seed, cfg.limit_per_class)
    if not records:
        raise DatasetNotFound(f"split '{split}' of {data_dir} holds no images")
    prep = ckpt.preprocessing
    images, ok, errors = load_many([r.path for r in records], prep.input_size,
                                   prep.interpolation)
    targets = [records[i].target for i in ok]
    probs = predictor.probabilities(images)
    result = headline_metrics(targets, probs, ckpt.threshold)
    result.update({"split": split, "model": ckpt.extra.get("path"), "tta": predictor.tta,
                   "skipped": list(errors.values())})
    return result
