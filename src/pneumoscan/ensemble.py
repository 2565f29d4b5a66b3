"""Ensembles: several trained runs behind one Predictor, saved as a folder with ensemble.json.

The members' calibrated class probabilities are averaged (each member's temperature is applied
by core.decisions.class_probabilities); the pneumonia probability is the mean of the members'
1 - P(NORMAL), the mean of p for binary members. The ensemble's threshold is chosen on a val
split that no member trained on, by the rule training uses (metrics.threshold_for_sensitivity).
ensemble.json names its members by path relative to itself, with the sha256 of each member's
weights, checked at load: a member retrained in place is an error, not a silent new model.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np

from . import __version__, checkpoint
from .checkpoint import Checkpoint, CheckpointError
from .config import TrainConfig, config_from_dict
from .core.contract import ENSEMBLE, is_ensemble  # noqa: F401 (ensemble.is_ensemble)
from .data import load_records, select
from .inference.predictor import Predictor
from .inference.torch_backend import torch_predictor
from .metrics import binary_metrics, threshold_for_sensitivity
from .transforms import Preprocessing, load_many

FILE = ENSEMBLE
FORMAT = "pneumoscan-ensemble/1"
THRESHOLD_SPLITS = ("val", "val-official")
# Preprocessing keys that decide how a file becomes the uint8 array every member then reads;
# normalisation (mean/std/channels) may differ, each member applies its own.
_DECODING = ("input_size", "interpolation", "resize")


class EnsembleError(CheckpointError):
    """An ensemble that cannot be built or loaded as asked."""


def _folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.name == FILE else p


def _check_members(ckpts: list[Checkpoint], names: list[str]) -> None:
    """Members must share labels and image decoding; the error names the first that does not."""
    first = ckpts[0]
    for ckpt, name in zip(ckpts[1:], names[1:]):
        if ckpt.labels != first.labels:
            raise EnsembleError(f"member {name}: labels {ckpt.labels} differ from {names[0]}'s "
                                f"{first.labels}; an ensemble averages the same classes")
        for key in _DECODING:
            a, b = getattr(ckpt.preprocessing, key), getattr(first.preprocessing, key)
            if a != b:
                raise EnsembleError(f"member {name}: preprocessing {key} {a!r} differs from "
                                    f"{names[0]}'s {b!r}; members must read the same images")


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


def _ensemble_checkpoint(members: list[Predictor], meta: dict, folder: Path) -> Checkpoint:
    """The contract the callers of a Predictor read (labels, preprocessing, threshold, config
    for rebuilding the val split); its model_name says what it is."""
    first = members[0].ckpt
    names = sorted({m.ckpt.model_name for m in members})
    extra = {k: v for k, v in meta.items()
             if k not in ("labels", "preprocessing", "threshold", "val_metrics")}
    extra["path"] = str(folder)
    return Checkpoint(f"ensemble of {len(members)} {'/'.join(names)}", list(first.labels),
                      replace(first.preprocessing), float(meta["threshold"]),
                      meta.get("val_metrics", {}), dict(first.config), extra)


class EnsemblePredictor(Predictor):
    """Several members behind the Predictor interface: probabilities, scores, predict,
    threshold and label_of work as for one model. No Grad-CAM or OOD gate (model is None).

    Examples:
        >>> p = Predictor.from_checkpoint("runs/seeds/ensemble")  # any --model accepts it
        >>> p.predict(["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])[0].label  # doctest: +SKIP
        'NORMAL'
    """

    runtime = "torch"

    def __init__(self, members: list[Predictor], ckpt: Checkpoint, bf16: bool = False,
                 tta: bool = False):
        super().__init__(None, ckpt, tta)  # no backend of its own: the members hold theirs
        self.members, self.bf16 = members, bf16

    @classmethod
    def from_folder(cls, path: str | Path, bf16: bool = False,
                    tta: bool = False) -> EnsemblePredictor:
        """Load ensemble.json and its members; `tta` adds test-time augmentation to an
        ensemble built without it (the stored threshold was then chosen without it)."""
        folder = _folder(path)
        try:
            meta = json.loads((folder / FILE).read_text())
            if meta.get("format") != FORMAT:
                raise EnsembleError(f"{folder / FILE}: unknown format {meta.get('format')!r}")
            entries = meta["members"]
            float(meta["threshold"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            if isinstance(e, EnsembleError):
                raise
            raise EnsembleError(f"{folder / FILE}: malformed ensemble file ({e})") from None
        tta = tta or bool(meta.get("tta", False))
        members = []
        for entry in entries:
            member = folder / entry["path"]
            weights = member / checkpoint.WEIGHTS
            if not weights.is_file():
                raise EnsembleError(f"{folder / FILE}: member {entry['path']}: no "
                                    f"{checkpoint.WEIGHTS} at {member}")
            sha = checkpoint.file_sha256(weights)
            if sha != entry["weights_sha256"]:
                raise EnsembleError(
                    f"{folder / FILE}: member {entry['path']}: {checkpoint.WEIGHTS} has sha256 "
                    f"{sha[:12]}..., not the {entry['weights_sha256'][:12]}... the ensemble was "
                    f"built and thresholded with; rebuild it with 'pneumoscan ensemble'")
            members.append(torch_predictor(*checkpoint.load(member), bf16=bf16, tta=tta))
        _check_members([m.ckpt for m in members], [e["path"] for e in entries])
        return cls(members, _ensemble_checkpoint(members, meta, folder.resolve()), bf16, tta)

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> (N,) mean of the members' pneumonia probabilities."""
        return np.mean([m.probabilities(images, batch_size) for m in self.members], axis=0)

    def class_scores(self, images: np.ndarray, batch_size: int = 32
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> the mean of the members' (N,) pneumonia probabilities and of
        their (N, K) calibrated class probabilities; NaN OOD scores (no gate)."""
        parts = [m.class_scores(images, batch_size) for m in self.members]
        probs = np.mean([p[0] for p in parts], axis=0)
        return probs, np.mean([p[1] for p in parts], axis=0), np.full(len(probs), np.nan)

    def class_probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> (N, K) mean of the members' calibrated class probabilities."""
        return self.class_scores(images, batch_size)[1]


def build(member_paths: list[str | Path], out_dir: str | Path, data_dir: str | Path,
          tta: bool = False, threshold_split: str = "val") -> Path:
    """Write out_dir/ensemble.json for the given runs and choose its threshold.

    Args:
        member_paths: run folders (or their model.json), at least two.
        out_dir: the ensemble folder; member paths are stored relative to it.
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
    images, ok, errors = load_many([r.path for r in recs], prep.input_size, prep.interpolation)
    y = np.array([recs[i].target for i in ok])
    if len(np.unique(y)) < 2:
        raise EnsembleError(f"split '{threshold_split}' of {data_dir} lacks a class; "
                            f"cannot choose a threshold there")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = np.mean([m.probabilities(images) for m in members], axis=0)
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
    from .train import fit

    out = Path(out_dir)
    runs = [fit(replace(cfg, seed=s, split_seed=cfg.data_seed), data_dir, out / f"seed-{s}")
            for s in seeds]
    return runs, build([r.dir for r in runs], out / "ensemble", data_dir)
