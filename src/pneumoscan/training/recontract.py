"""A trained run read through another input contract: the same weights with a changed
preprocessing (e.g. `smoothing`), its operating point and OOD gate fitted again on the carved
split it was trained with, exactly as training fits them. Writes a new run folder; the input run
is never modified."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from ..core.config import config_from_dict
from ..core.errors import CheckpointError
from ..data import load_records
from ..data.batches import load_many_shown
from ..data.records import class_index
from ..data.runs import split_of_run
from ..models import weights as checkpoint
from .ood import fit_gate
from .outputs import first_missing, removed_on_failure
from .train import set_operating_point

COPIED = ("config.yaml", "split.csv")  # what the gate commands read of a run besides the weights


def recontract(model_path: str | Path, out_dir: str | Path, data_dir: str | Path,
               **changes) -> checkpoint.Checkpoint:
    """`model_path`'s weights with `changes` to its preprocessing (Preprocessing fields), the
    threshold, temperature, val metrics and OOD gate fitted again on its own carved val/train
    split, saved to `out_dir` (which must not exist). Returns the new checkpoint."""
    src = Path(model_path)
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists; recontract writes a new run folder, never over "
                              f"one")
    model, ckpt = checkpoint.load(src)
    prep = replace(ckpt.preprocessing, **changes)
    for key, why in prep.problems():
        raise CheckpointError(f"preprocessing '{key}': {why}")
    cfg = config_from_dict(ckpt.config)
    records = load_records(data_dir)
    arrays, targets = {}, {}
    for split in ("train", "val"):
        recs = split_of_run(ckpt.config, records, split)
        x, ok, _ = load_many_shown([r.path for r in recs], prep.input_size, prep.interpolation,
                                   prep.storage_quality, f"decoding {split}")
        arrays[split] = x
        targets[split] = np.array([class_index(recs[i], ckpt.labels) for i in ok])
    before = {"threshold": ckpt.threshold, "temperature": ckpt.temperature,
              "preprocessing": ckpt.preprocessing.to_dict()}
    ckpt.preprocessing, ckpt.temperature = prep, 1.0
    set_operating_point(model, ckpt, arrays["val"], targets["val"], cfg.target_sensitivity)
    ckpt.extra = {k: v for k, v in ckpt.extra.items() if k != "path"}
    ckpt.extra.update({"recontracted_from": {"run": str(src.resolve()), **before,
                                             "weights_sha256": checkpoint.file_sha256(
                                                 src / checkpoint.WEIGHTS)},
                       "recontract_changes": changes,
                       "created": datetime.now().isoformat(timespec="seconds")})
    created = first_missing(out)
    out.mkdir(parents=True)
    with removed_on_failure(out, created):
        checkpoint.save(out, model, ckpt, dtype=torch.float16)
        stats, ood = fit_gate(model, ckpt, arrays["train"], arrays["val"])
        checkpoint.save_ood(out, stats, ood)
        for name in COPIED:
            if (src / name).is_file():
                shutil.copy2(src / name, out / name)
    return ckpt
