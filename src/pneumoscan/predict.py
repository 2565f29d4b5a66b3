"""Score images with a trained model, at the threshold stored in its checkpoint."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint, ood
from .data import LABELS, is_image_file
from .transforms import load_many, to_model_input


@dataclass
class Prediction:
    path: str
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    ood: bool | None = None  # None: no score, or a checkpoint without an OOD gate
    ood_score: float | None = None
    # Every class of the checkpoint (binary: NORMAL, PNEUMONIA), from class_probabilities.
    class_probabilities: dict[str, float] | None = None
    # K-class models: the likelier non-NORMAL class (what kind, should it be pneumonia);
    # the decision is still `label`. None for a binary model.
    etiology: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "probability": self.probability, "label": self.label,
                "error": self.error, "ood": self.ood, "ood_score": self.ood_score,
                "class_probabilities": self.class_probabilities, "etiology": self.etiology}


def expand_inputs(paths: list[str]) -> list[str]:
    """Files stay as given; folders become their image files (recursively, sorted).
    A folder without images yields an entry whose decoding reports the problem."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and is_image_file(f))
            # FIFOs, sockets and devices are listed so that decoding reports them by name
            special = sorted(str(f) for f in p.rglob("*")
                             if f.exists() and not f.is_file() and not f.is_dir())
            out.extend(sorted(found + special) or [str(p)])
        else:
            out.append(str(p))
    return out


def scaled_sigmoid(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N,) logits -> (N,) float64 probabilities sigmoid(logit / T), computed in float32 as
    every stored threshold was: a threshold is one val image's score, so the same arithmetic
    must reproduce it to the last bit or that image's label could flip."""
    z = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    return torch.sigmoid(z / temperature).numpy().astype(np.float64)


def head_output(raw: torch.Tensor) -> torch.Tensor:
    """The model's (N, 1) or (N, K) output -> (N,) logits of a binary model, or (N, K)
    logits of a K-class model (labels in checkpoint order)."""
    return raw[:, 0] if raw.shape[1] == 1 else raw


def class_probabilities(logits: np.ndarray, ckpt: checkpoint.Checkpoint) -> np.ndarray:
    """(N,) binary or (N, K) class logits -> (N, K) probabilities (float64) in the order of
    ckpt.labels: [1 - p, p] for a binary model, softmax(logits / T) for a K-class one. What
    ensembles and test-time augmentation average."""
    t = float(ckpt.extra.get("temperature", 1.0))
    if logits.ndim == 1:
        p = scaled_sigmoid(logits, t)
        return np.stack([1.0 - p, p], axis=1)
    z = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    return torch.softmax(z / t, dim=1).numpy().astype(np.float64)


def probabilities_from_logits(logits: np.ndarray, ckpt: checkpoint.Checkpoint) -> np.ndarray:
    """(N,) or (N, K) logits -> (N,) pneumonia probabilities (float64); the one place every
    runtime (torch, ONNX) turns logits into the probability compared with the stored
    threshold: sigmoid(logit / T) for a binary model, 1 - P(NORMAL) for a K-class one.
    The temperature was fitted on val (calibrate); the stored threshold is in its scale."""
    if logits.ndim == 1:
        return scaled_sigmoid(logits, float(ckpt.extra.get("temperature", 1.0)))
    return 1.0 - class_probabilities(logits, ckpt)[:, ckpt.labels.index("NORMAL")]


@torch.inference_mode()
def predict_logits(model: nn.Module, ckpt: checkpoint.Checkpoint, images: np.ndarray,
                   batch_size: int = 32) -> np.ndarray:
    """(N, S, S) uint8 gray images -> (N,) float32 pneumonia logits of a binary model, or
    (N, K) class logits of a K-class model."""
    model.eval()
    logits = [head_output(model(to_model_input(torch.from_numpy(images[i:i + batch_size])
                                               .unsqueeze(1), ckpt.preprocessing)).float())
              .numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(logits) if logits else np.zeros(0, dtype=np.float32)


def predict_arrays(model: nn.Module, ckpt: checkpoint.Checkpoint, images: np.ndarray,
                   batch_size: int = 32) -> np.ndarray:
    """(N, S, S) uint8 gray images -> (N,) pneumonia probabilities (float64)."""
    return probabilities_from_logits(predict_logits(model, ckpt, images, batch_size), ckpt)


class Predictor:
    """A loaded model plus its checkpoint contract.

    Examples:
        >>> p = Predictor.from_checkpoint()          # the shipped model
        >>> [r.label for r in p.predict(["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])]
        ['NORMAL']
    """

    tta = False  # runtimes that subclass without calling __init__ (ONNX) never augment

    def __init__(self, model: nn.Module, ckpt: checkpoint.Checkpoint, bf16: bool = False,
                 tta: bool = False):
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.ckpt = ckpt
        # bf16 autocast is ~2x faster on AVX-512 BF16 CPUs but not the default: on the test
        # split it moved probabilities by up to 0.047 and flipped 3 of 624 labels (README).
        self.bf16 = bf16
        self.tta = tta  # average over tta.VIEWS; the stored threshold was chosen without it

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, bf16: bool = False,
                        allow_pickle: bool = False, tta: bool = False) -> Predictor:
        """A run folder (or its model.json), or an ensemble folder (ensemble.json)."""
        from . import ensemble

        if ensemble.is_ensemble(path):
            return ensemble.EnsemblePredictor.from_folder(path, bf16=bf16, tta=tta)
        return cls(*checkpoint.load(path, allow_pickle=allow_pickle), bf16=bf16, tta=tta)

    @property
    def threshold(self) -> float:
        return self.ckpt.threshold

    def label_of(self, probability: float) -> str:
        """NORMAL / PNEUMONIA at the stored threshold (a K-class model's pneumonia
        probability is 1 - P(NORMAL))."""
        names = self.ckpt.labels if len(self.ckpt.labels) == 2 else LABELS
        return names[int(probability >= self.threshold)]

    def logits(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> (N,) or (N, K) logits; runtimes other than torch override this."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return predict_logits(self.model, self.ckpt, images, batch_size)

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> (N,) pneumonia probabilities (with tta: averaged over
        tta.VIEWS)."""
        if self.tta:
            from . import tta

            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                return tta.probabilities(self.model, self.ckpt, images, batch_size=batch_size)
        return probabilities_from_logits(self.logits(images, batch_size), self.ckpt)

    def logits_and_ood(self, images: np.ndarray,
                       batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> logits and (N,) OOD scores from the same forward pass (NaN
        scores when the checkpoint has no gate or the runtime is not torch)."""
        if self.ckpt.ood_stats is None or self.model is None:
            logits = self.logits(images, batch_size)
            return logits, np.full(len(logits), np.nan)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits, feats = ood.logits_and_features(self.model, self.ckpt, images, batch_size)
        return logits, ood.scores(feats, self.ckpt.ood_stats)

    def scores(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> (N,) pneumonia probabilities and (N,) OOD scores."""
        probs, _, ood_scores = self.class_scores(images, batch_size)
        return probs, ood_scores

    def class_scores(self, images: np.ndarray, batch_size: int = 32
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> (N,) pneumonia probabilities, (N, K) class probabilities in
        ckpt.labels order and (N,) OOD scores, from one forward pass (with tta: the OOD
        pass is the identity view, the other tta.VIEWS are averaged in)."""
        logits, ood_scores = self.logits_and_ood(images, batch_size)
        views = [logits]
        if self.tta:
            from . import tta

            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                views += tta.view_logits(self.model, self.ckpt, images, tta.VIEWS[1:],
                                         batch_size)
        if len(views) == 1:
            return (probabilities_from_logits(logits, self.ckpt),
                    class_probabilities(logits, self.ckpt), ood_scores)
        return (np.mean([probabilities_from_logits(z, self.ckpt) for z in views], axis=0),
                np.mean([class_probabilities(z, self.ckpt) for z in views], axis=0), ood_scores)

    def etiology_of(self, class_probs: np.ndarray) -> str | None:
        """The likelier non-NORMAL class of one image's (K,) probabilities; None if binary."""
        if len(self.ckpt.labels) == 2:
            return None
        others = [i for i, name in enumerate(self.ckpt.labels) if name != "NORMAL"]
        return self.ckpt.labels[max(others, key=lambda i: class_probs[i])]

    def predict(self, paths: list[str], batch_size: int = 32) -> list[Prediction]:
        """One Prediction per path, in order; an unreadable file gets `error` and no score."""
        prep = self.ckpt.preprocessing
        results = [Prediction(str(p)) for p in paths]
        starts = list(range(0, len(paths), batch_size))

        def decode(start):
            return load_many(paths[start:start + batch_size], prep.input_size,
                             prep.interpolation, storage_quality=prep.storage_quality)

        # Decode the next batch while the model runs on this one (both release the GIL).
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(decode, starts[0]) if starts else None
            for k, start in enumerate(starts):
                arr, ok, errors = pending.result()
                if k + 1 < len(starts):
                    pending = pool.submit(decode, starts[k + 1])
                chunk = paths[start:start + batch_size]
                for j, message in errors.items():
                    is_dir = Path(chunk[j]).is_dir()
                    results[start + j].error = (f"{chunk[j]}: folder holds no image files"
                                                if is_dir else message)
                for j, prob, cls, score in zip(ok, *self.class_scores(arr, batch_size)):
                    r = results[start + j]
                    r.probability, r.label = float(prob), self.label_of(prob)
                    r.class_probabilities = dict(zip(self.ckpt.labels, map(float, cls)))
                    r.etiology = self.etiology_of(cls)
                    if not np.isnan(score):
                        r.ood_score, r.ood = float(score), ood.flag(score, self.ckpt)
        return results
