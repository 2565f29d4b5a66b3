"""evaluate(model, data, split): metrics at the stored threshold. Fits nothing."""

from __future__ import annotations

from pathlib import Path

from ..core import progress
from ..data import DatasetNotFound, class_index, load_records
from ..data.batches import load_many_shown
from ..data.runs import split_of_run
from ..evaluation.metrics import headline_metrics, multiclass_metrics
from ..inference.runtime import load_torch


def split_images(all_records: list, ckpt, split: str, data_dir: str | Path):
    """The records of `split` as the checkpoint's run carved it (val rebuilt from the stored
    split seed and fraction) and their decoded images: (records, images, ok, errors)."""
    records = split_of_run(ckpt.config, all_records, split)
    if not records:
        raise DatasetNotFound(f"split '{split}' of {data_dir} holds no images")
    prep = ckpt.preprocessing
    images, ok, errors = load_many_shown([r.path for r in records], prep.input_size,
                                         prep.interpolation, prep.storage_quality,
                                         f"decoding {split}")
    return records, images, ok, errors


def evaluate(model_path: str | Path | None, data_dir: str | Path, split: str,
             allow_pickle: bool = False, tta: bool = False) -> dict:
    """Score every image of `split` and compute metrics at the checkpoint's threshold.

    The carved `val` split is rebuilt from the seed and fraction stored in the checkpoint.
    Unreadable images are listed under `skipped`, not scored. A K-class (etiology) model
    reports the binary metrics of its pneumonia probability 1 - P(NORMAL) exactly as a
    binary model does, plus `multiclass` (metrics.multiclass_metrics on the argmax).
    `model_path` may be an ensemble folder; `tta` averages over test-time augmentations.
    """
    all_records = load_records(data_dir)  # a missing dataset is reported before the model loads
    predictor = load_torch(model_path, allow_pickle=allow_pickle, tta=tta)
    ckpt = predictor.ckpt
    records, images, ok, errors = split_images(all_records, ckpt, split, data_dir)
    targets = [records[i].target for i in ok]
    probs, class_probs, _ = progress.batched(predictor.class_scores, images, f"scoring {split}")
    result = headline_metrics(targets, probs, ckpt.threshold)
    result.update({"split": split, "model": ckpt.extra.get("path"), "tta": predictor.tta,
                   "skipped": list(errors.values())})
    if not ckpt.binary:
        result["labels"] = ckpt.labels
        try:
            classes = [class_index(records[i], ckpt.labels) for i in ok]
        except ValueError as e:  # e.g. a user's folder whose names carry no etiology
            result["multiclass"] = None
            result["multiclass_unavailable"] = str(e)
        else:
            result["multiclass"] = multiclass_metrics(
                classes, class_probs, ckpt.labels)
    return result
