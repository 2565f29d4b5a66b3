"""Building ensembles: several trained runs saved as a folder with ensemble.json, loaded by
inference/ensemble.py.

The members' calibrated class probabilities are averaged (each member's temperature is applied
by core.decisions.class_probabilities). The ensemble's threshold is chosen on a val split that
no member trained on, by the rule training uses (metrics.threshold_for_sensitivity).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

from .. import __version__
from ..core import progress
from ..core.config import TrainConfig, config_from_dict
from ..core.preprocessing import Preprocessing
from ..data import load_records, select
from ..data.batches import load_many_shown
from ..evaluation.metrics import binary_metrics, threshold_for_sensitivity
from ..inference.ensemble import (  # noqa: F401 (their names, for ensemble's users)
    FILE,
    FORMAT,
    EnsembleBackend,
    EnsembleError,
    _check_members,
    load_ensemble,
)
from ..inference.torch_backend import torch_predictor
from ..models import weights as checkpoint
from .train import fit

THRESHOLD_SPLITS = ("val", "val-official")


def _split_key(cfg: TrainConfig) -> tuple:
    return cfg.val_fraction, cfg.data_seed, cfg.limit_per_class


def _check_split(cfgs: list[TrainConfig], names: list[str], split: str) -> None:
    """The threshold split must be held out from every member. Carved val is, only when all
    members carved the same one (pneumoscan train seeds=... makes them so)."""
    if split != "val":
        return  # val-official is outside every member's train pool
    for cfg, name in zip(cfgs[1:], names[1:]):
        if _split_key(cfg) != _split_key(cfgs[0]):
            raise EnsembleError(
                f"member {name} was trained on another train/val split than {names[0]} "
                f"(val_fraction, split seed, limit_per_class: {_split_key(cfg)} vs "
                f"{_split_key(cfgs[0])}): each member trained on images of the other's val "
                f"split, so no carved val split is held out from all of them and a threshold "
                f"chosen there would be optimistic. Train members that share one split "
                f"('pneumoscan train seeds=0,1,2' or split_seed=N), or choose the threshold on "
                f"--threshold-split val-official (small)")


def _member_dirs(paths: list[str | Path]) -> list[Path]:
    dirs = [checkpoint.resolve(p).resolve() for p in paths]
    if len(dirs) < 2:
        raise EnsembleError("an ensemble needs at least two member runs")
    if len(set(dirs)) < len(dirs):
        raise EnsembleError("the same run is given twice; members must be distinct runs")
    return dirs


def build(member_paths: list[str | Path], out_dir: str | Path, data_dir: str | Path,
          tta: bool = False, threshold_split: str = "val") -> Path:
    """Write out_dir/ensemble.json for the given runs and choose its threshold.

    Args:
        member_paths: run folders (or their model.json), at least two.
        out_dir: the ensemble folder; member paths are stored relative to it, and the
            members must lie inside the folder that holds it (its parent).
        data_dir: the dataset the members were trained on (for the threshold split).
        tta: average every member over tta.VIEWS (also while choosing the threshold).
        threshold_split: "val", the carved val split the members share (patient-grouped;
            refused when they do not share one), or "val-official".

    Returns the path of ensemble.json.

    Examples:
        >>> build(["runs/a", "runs/b"], "runs/ab", "data/chest_xray")  # doctest: +SKIP
        PosixPath('runs/ab/ensemble.json')
    """
    if threshold_split not in THRESHOLD_SPLITS:
        raise EnsembleError(f"threshold split '{threshold_split}': choose one of "
                            f"{', '.join(THRESHOLD_SPLITS)} (never test)")
    records = load_records(data_dir)  # a missing dataset is reported before models load
    dirs = _member_dirs(member_paths)
    root = Path(out_dir).resolve().parent
    for d in dirs:  # load_ensemble reads members only from beside the ensemble folder
        if not d.is_relative_to(root):
            raise EnsembleError(f"member {d} is not inside {root}, the folder that holds the "
                                f"ensemble folder {out_dir}: put --out beside the member runs "
                                f"(e.g. runs/ensemble for runs/a and runs/b)")
    members = [torch_predictor(*checkpoint.load(d), tta=tta) for d in dirs]
    names = [str(d) for d in dirs]
    _check_members([m.ckpt for m in members], names)
    cfgs = [config_from_dict(m.ckpt.config) for m in members]
    _check_split(cfgs, names, threshold_split)
    targets = {c.target_sensitivity for c in cfgs}
    if len(targets) > 1:
        raise EnsembleError(f"members were thresholded for different sensitivities {targets}")

    cfg = cfgs[0]
    recs = select(records, threshold_split, cfg.val_fraction, cfg.data_seed,
                  cfg.limit_per_class)
    prep: Preprocessing = members[0].ckpt.preprocessing
    images, ok, errors = load_many_shown([r.path for r in recs], prep.input_size,
                                         prep.interpolation, prep.storage_quality,
                                         f"decoding {threshold_split}")
    y = np.array([recs[i].target for i in ok])
    if len(np.unique(y)) < 2:
        raise EnsembleError(f"split '{threshold_split}' of {data_dir} lacks a class; "
                            f"cannot choose a threshold there")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = np.mean([progress.batched(m.probabilities, images, f"scoring member {k + 1}")
                 for k, m in enumerate(members)], axis=0)
    threshold = threshold_for_sensitivity(y, p, cfg.target_sensitivity)
    meta = {
        "format": FORMAT,
        "members": [{"path": os.path.relpath(d, out.resolve()),
                     "weights_sha256": checkpoint.file_sha256(d / checkpoint.WEIGHTS),
                     "seed": c.seed, "model_name": m.ckpt.model_name}
                    for d, c, m in zip(dirs, cfgs, members)],
        "labels": members[0].ckpt.labels,
        "preprocessing": prep.to_dict(),
        "tta": bool(tta),
        "threshold": threshold,
        "threshold_split": threshold_split,
        "threshold_rule": f"highest threshold with {threshold_split} sensitivity >= "
                          f"{cfg.target_sensitivity}",
        "combination": "mean of the members' calibrated class probabilities; pneumonia "
                       "probability = 1 - mean P(NORMAL)",
        "val_metrics": binary_metrics(y, p, threshold),
        "skipped": list(errors.values()),
        "package_version": __version__, **checkpoint.git_state(),
        "created": datetime.now().isoformat(timespec="seconds"),
    }
    path = out / FILE
    tmp = out / f".{FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; at least two distinct integers."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EnsembleError(f"seeds={text}: expected comma-separated integers, "
                            f"e.g. seeds=0,1,2") from None
    if len(seeds) < 2 or len(set(seeds)) < len(seeds):
        raise EnsembleError(f"seeds={text}: give at least two distinct seeds")
    return seeds


def train_seeds(cfg: TrainConfig, seeds: list[int], data_dir: str | Path,
                out_dir: str | Path) -> tuple[list, Path]:
    """One run per seed into out_dir/seed-N, all on the train/val split of cfg's split seed
    (so their val split is held out from every member), then out_dir/ensemble.

    Returns (the Runs, the path of ensemble.json)."""
    out = Path(out_dir)
    runs = [fit(replace(cfg, seed=s, split_seed=cfg.data_seed), data_dir, out / f"seed-{s}")
            for s in seeds]
    return runs, build([r.dir for r in runs], out / "ensemble", data_dir)
