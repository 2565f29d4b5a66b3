"""fit(cfg) -> Run: fine-tune a registry model with Lightning. Never reads the test split."""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..core.config import TrainConfig
from ..core.decisions import head_output
from ..core.errors import ModelUnavailable
from ..core.preprocessing import Preprocessing
from ..data import (
    LABELS,
    Record,
    cache,
    class_index,
    load_records,
    split_train_val,
    task_labels,
    write_manifest,
)
from ..evaluation import meaningful
from ..evaluation.calibration import calibrate_checkpoint
from ..evaluation.metrics import auroc, binary_metrics, macro_auroc, threshold_for_sensitivity
from ..evaluation.plots import training_curves
from ..inference.torch_backend import predict_arrays, predict_logits
from ..models import weights as checkpoint
from ..models.registry import check_available, create_model
from ..models.transforms import to_model_input, train_augmentation
from . import resume
from .ood import fit_gate
from .outputs import first_missing, quiet_lightning, removed_on_failure

log = logging.getLogger(__name__)


@dataclass
class Run:
    dir: Path
    val_metrics: dict
    best_epoch: int  # counted from 1, as history.csv, model.json and the command line count
    seconds: float
    skipped: list[str]
    warnings: list[str] = field(default_factory=list)  # settings fitted on too little data


class ImageSet(Dataset):
    """Decoded uint8 images held in memory (decoded once per run), with optional augmentation."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform=None):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).unsqueeze(0)
        if self.transform is not None:
            x = self.transform(x)
        # The index lets DDP drop the copies DistributedSampler pads the last batch with.
        # Targets: float32 0/1 (binary), int64 class indices (K classes), as decoded.
        return x, torch.tensor(self.targets[i]), i


class LitClassifier(L.LightningModule):
    """Thin training wrapper around a plain nn.Module; inputs are uint8 gray batches.
    A binary model (one logit) trains on pos-weighted BCE; a K-class one (class_weights
    given) on class-weighted cross-entropy."""

    def __init__(self, model: nn.Module, prep: Preprocessing, cfg: TrainConfig,
                 pos_weight: float, steps_per_epoch: int,
                 class_weights: torch.Tensor | None = None):
        super().__init__()
        self.model, self.prep, self.cfg = model, prep, cfg
        self.steps_per_epoch = steps_per_epoch
        self.multiclass = class_weights is not None
        self.loss_fn = (nn.CrossEntropyLoss(weight=class_weights) if self.multiclass
                        else nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight)))
        self.history: list[dict] = []
        self._outs: dict[str, list] = {"train": [], "val": []}
        self._epoch_t0 = time.perf_counter()  # reset at each epoch start (a resume included)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return head_output(self.model(to_model_input(x, self.prep)))

    def _step(self, batch, stage: str):
        x, y, idx = batch
        logits = self(x)
        loss = self.loss_fn(logits.float(), y)
        z = logits.detach().float()
        p = torch.softmax(z, dim=1) if self.multiclass else torch.sigmoid(z)
        self._outs[stage].append((p, y, loss.detach(), idx))
        return loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def _summarise(self, stage: str) -> dict:
        outs = self._outs[stage]
        self._outs[stage] = []
        if not outs:
            return {}
        p = torch.cat([o[0] for o in outs])
        y = torch.cat([o[1] for o in outs])
        loss = torch.stack([o[2] for o in outs]).mean()
        idx = torch.cat([o[3] for o in outs])
        if self.trainer.world_size > 1:  # every rank sees the whole split's scores
            p = self.all_gather(p).reshape(-1, *p.shape[1:])  # (N,) or (N, K)
            y = self.all_gather(y).flatten()
            idx = self.all_gather(idx).flatten()
            loss = self.all_gather(loss).mean()
        p, y, idx = p.cpu().numpy(), y.cpu().numpy(), idx.cpu().numpy()
        _, first = np.unique(idx, return_index=True)  # each image once, padding dropped
        p, y = p[first], y[first]
        if self.multiclass:  # {stage}_auroc (what selection monitors) is the macro AUROC
            sick = 1.0 - p[:, 0]  # labels start with NORMAL
            return {f"{stage}_loss": float(loss),
                    f"{stage}_acc": float((p.argmax(axis=1) == y).mean()),
                    f"{stage}_auroc": macro_auroc(y, p),
                    f"{stage}_pneumonia_auroc": auroc(y != 0, sick), f"{stage}_n": len(p)}
        return {f"{stage}_loss": float(loss), f"{stage}_acc": float(((p >= 0.5) == y).mean()),
                f"{stage}_auroc": auroc(y, p), f"{stage}_n": len(p)}

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self._outs["val"] = []
            return
        m = self._summarise("val")
        self.log_dict(m, prog_bar=True, sync_dist=False)
        self.history.append({"epoch": self.current_epoch + 1, **m})  # counted from 1

    def on_train_epoch_start(self):
        self._epoch_t0 = time.perf_counter()

    def on_train_epoch_end(self):
        # Wall seconds of the epoch's training and validation passes (the decode into the
        # cache happens once, before the first epoch, and is not in it).
        m = {**self._summarise("train"),
             "epoch_seconds": round(time.perf_counter() - self._epoch_t0, 1)}
        self.log_dict(m, sync_dist=False)
        if self.history and self.history[-1]["epoch"] == self.current_epoch + 1:
            self.history[-1].update(m)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What Lightning does not keep: the epoch history and the RNG streams (augmentation,
        # shuffling), so that a resumed run replays the epochs an uninterrupted one would.
        checkpoint["pneumoscan"] = {"history": self.history, "rng": resume.rng_state()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("pneumoscan", {})
        self.history = extra.get("history", [])
        if "rng" in extra:
            resume.set_rng_state(extra["rng"])

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr,
                                weight_decay=self.cfg.weight_decay)
        total = max(1, self.cfg.epochs * self.steps_per_epoch)
        warmup = max(1, int(self.cfg.warmup_epochs * self.steps_per_epoch))

        def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to zero
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def resolve_precision(setting: str) -> str:
    """'auto' -> bf16 autocast where the hardware has native bf16, else fp32."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "32-true"
    return "bf16-mixed" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "32-true"


def _decode(records: list[Record], prep: Preprocessing, mode: str, cache_dir: Path,
            labels=LABELS):
    """Decode each image once into the memory or disk cache; unreadable files are dropped."""
    return cache.decode(records, prep.input_size, prep.interpolation, mode, cache_dir, labels)


def class_weights(targets: np.ndarray, k: int) -> torch.Tensor:
    """Inverse class frequency in the train split, normalised to mean 1 (an absent class
    counts as one image)."""
    inverse = 1.0 / np.maximum(np.bincount(targets, minlength=k), 1)
    return torch.tensor(inverse / inverse.mean(), dtype=torch.float32)


def set_operating_point(model: nn.Module, ckpt: checkpoint.Checkpoint, x_va: np.ndarray,
                        y_va: np.ndarray, target_sensitivity: float) -> None:
    """The stored threshold, val metrics and temperature of `ckpt` (its temperature must be
    1), from the carved val split: binary, the highest threshold with val sensitivity >=
    target, then a temperature on the same val logits (the threshold moves with it, labels do
    not); K classes, the threshold on 1 - P(NORMAL) is chosen after T (same rule)."""
    if ckpt.binary:
        p_va = predict_arrays(model, ckpt, x_va)
        ckpt.threshold = threshold_for_sensitivity(y_va, p_va, target_sensitivity)
        ckpt.val_metrics = binary_metrics(y_va, p_va, ckpt.threshold)
    calibrate_checkpoint(ckpt, y_va.astype(int), predict_logits(model, ckpt, x_va))


def _write_history(history: list[dict], run_dir: Path) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for h in history for k in h))
    with open(run_dir / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    training_curves(history, run_dir / "curves.png")


def fit(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path | None = None,
        resume_run: bool = False) -> Run:
    """Train `cfg.model` on the train folder (or manifest CSV's train rows) of `data_dir`,
    select on the carved val split.
    With resume_run, continue the killed run in `run_dir` from its lightning/last.ckpt
    (weights, optimizer, scheduler, epoch, early stopping, RNG); `cfg` must be its config.
    Everything that can be checked is checked before the run folder is made; a run that fails
    later removes the folder it made."""
    t0 = time.perf_counter()
    labels = task_labels(cfg.task)
    binary = labels == LABELS
    run_dir = Path(run_dir or Path(cfg.out_dir) / f"{datetime.now():%Y%m%d-%H%M%S}-{cfg.model}")
    ckpt_path = resume.last_checkpoint(run_dir) if resume_run else None  # fail before writing
    try:
        check_available(cfg.model, cfg.pretrained)
    except ModelUnavailable as e:
        raise ModelUnavailable(f"config key 'model': {e}") from None
    train_recs, val_recs = split_train_val(load_records(data_dir), cfg.val_fraction, cfg.data_seed,
                                           cfg.limit_per_class)
    # The split depends on the binary label only, so both tasks share the val patients.
    if not binary:  # fail on a pneumonia image without etiology before decoding anything
        for r in train_recs + val_recs:
            class_index(r, labels)
    created = None if resume_run else first_missing(run_dir)  # never a --resume folder
    run_dir.mkdir(parents=True, exist_ok=True)
    with removed_on_failure(run_dir, created), quiet_lightning():
        return _fit(cfg, run_dir, train_recs, val_recs, ckpt_path, t0)


def _fit(cfg: TrainConfig, run_dir: Path, train_recs: list[Record], val_recs: list[Record],
         ckpt_path: Path | None, t0: float) -> Run:
    """fit() in the run folder it made: decode, train, choose the threshold, save."""
    labels = task_labels(cfg.task)
    binary = labels == LABELS
    resume_run = ckpt_path is not None
    provenance = {"package_version": __version__, **checkpoint.git_state()}
    L.seed_everything(cfg.seed, workers=True)
    if resume_run:
        resume.check_same_split(run_dir, train_recs + val_recs)
    else:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_manifest(train_recs + val_recs, run_dir / "split.csv")
    prep = Preprocessing(input_size=cfg.image_size, smoothing=cfg.smoothing)
    mode = cache.resolve_mode(cfg.cache, len(train_recs) + len(val_recs), prep.input_size,
                              cfg.cache_budget_gb)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "cache"
    x_tr, y_tr, skipped = _decode(train_recs, prep, mode, cache_dir, labels)
    x_va, y_va, skipped_va = _decode(val_recs, prep, mode, cache_dir, labels)
    skipped += skipped_va
    (run_dir / "skipped.txt").write_text("".join(s + "\n" for s in skipped), encoding="utf-8",
                                         errors="surrogateescape")  # names as on disk
    log.info("train %d images, val %d images, %d skipped; %s cache", len(x_tr), len(x_va),
             len(skipped), mode)

    aug = train_augmentation(cfg.aug_rotation, cfg.aug_translate, cfg.aug_zoom,
                             cfg.aug_brightness, cfg.aug_contrast, cfg.aug_hflip,
                             cfg.aug_degrade, cfg.aug_crop_aspect, prep.input_size,
                             cfg.aug_acquisition, cfg.aug_crop_scale)
    train_dl = DataLoader(ImageSet(x_tr, y_tr, aug), batch_size=cfg.batch_size, shuffle=True,
                          num_workers=cfg.num_workers, drop_last=len(x_tr) > cfg.batch_size,
                          persistent_workers=cfg.num_workers > 0)
    val_dl = DataLoader(ImageSet(x_va, y_va), batch_size=cfg.batch_size * 2,
                        num_workers=cfg.num_workers)

    num_outputs = 1 if binary else len(labels)
    model = create_model(cfg.model, pretrained=cfg.pretrained, num_outputs=num_outputs)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if binary:
        n_pos = float(y_tr.sum())
        pos_weight = (len(y_tr) - n_pos) / max(n_pos, 1.0) if cfg.class_weighting else 1.0
        lit = LitClassifier(model, prep, cfg, pos_weight, steps_per_epoch=len(train_dl))
    else:
        weights = (class_weights(y_tr, len(labels)) if cfg.class_weighting
                   else torch.ones(len(labels)))
        log.info("class weights %s", dict(zip(labels, weights.tolist())))
        lit = LitClassifier(model, prep, cfg, 1.0, steps_per_epoch=len(train_dl),
                            class_weights=weights)

    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=run_dir / "lightning", filename="best", monitor="val_auroc", mode="max",
        save_top_k=1, save_last=True, save_weights_only=False)
    stop_cb = L.pytorch.callbacks.EarlyStopping(monitor="val_auroc", mode="max",
                                                patience=cfg.patience)
    callbacks = [ckpt_cb, stop_cb]
    if cfg.ema_decay > 0:
        # Lightning validates, checkpoints and finally keeps the averaged weights.
        callbacks.append(L.pytorch.callbacks.EMAWeightAveraging(decay=cfg.ema_decay))
    devices = int(cfg.devices) if str(cfg.devices).isdigit() else cfg.devices
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=devices,
        num_nodes=cfg.num_nodes, strategy=cfg.strategy, precision=resolve_precision(cfg.precision),
        callbacks=callbacks, logger=L.pytorch.loggers.CSVLogger(run_dir, name="logs"),
        plugins=[resume.AtomicCheckpointIO()],
        default_root_dir=run_dir, num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(10, len(train_dl))),  # a tiny run logs its epoch too
        deterministic="warn", enable_model_summary=False)
    trainer.fit(lit, train_dl, val_dl, ckpt_path=ckpt_path, weights_only=True)
    if trainer.global_rank != 0:
        return Run(run_dir, {}, -1, time.perf_counter() - t0, skipped)

    _write_history(lit.history, run_dir)
    best = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in best["state_dict"].items()
             if k.startswith("model.")}
    final = create_model(cfg.model, pretrained=False, num_outputs=num_outputs)
    # Round to the stored dtype first so the threshold fits the weights that ship.
    final.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                           for k, v in state.items()})
    final = final.eval().to(memory_format=torch.channels_last)
    ckpt = checkpoint.Checkpoint(cfg.model, list(labels), prep, 0.5, config=cfg.to_dict())
    set_operating_point(final, ckpt, x_va, y_va, cfg.target_sensitivity)
    best_epoch = int(best.get("epoch", -2)) + 1  # Lightning counts epochs from 0
    seconds = time.perf_counter() - t0
    ckpt.extra.update({**provenance, "best_epoch": best_epoch, "train_seconds": round(seconds, 1),
                       "n_train": int(len(x_tr)), "n_val": int(len(x_va)),
                       "threshold_rule": f"highest threshold with val sensitivity >= "
                                         f"{cfg.target_sensitivity}"
                                         + ("" if binary else " on 1 - P(NORMAL)"),
                       "created": datetime.now().isoformat(timespec="seconds")})
    checkpoint.save(run_dir, final, ckpt, dtype=torch.float16)
    stats, ood = fit_gate(final, ckpt, x_tr, x_va)  # the same train/val split
    checkpoint.save_ood(run_dir, stats, ood)
    notes = [meaningful.val_size(y_va, list(labels)),
             meaningful.temperature(ckpt.temperature),
             meaningful.ood_cutoff(ood, len(stats["mean"]))]
    return Run(run_dir, ckpt.val_metrics, best_epoch, seconds, skipped,
               [n for n in notes if n])
