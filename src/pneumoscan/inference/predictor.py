"""Predictor: decode -> one forward of its backend -> the decision rules -> one Prediction.

The backend (ONNX Runtime or torch) is held, not subclassed: it only turns uint8 images into
logits (and pooled features for the OOD gate). Everything after that, the same for every
runtime, is here and in core/decisions.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..core import decisions
from ..core.contract import Checkpoint
from ..data.decode import load_many
from ..data.records import is_image_file
from .ood import scores as ood_scores


@dataclass
class OodCheck:
    """The out-of-distribution gate's verdict on one image; all None without a gate."""

    flagged: bool | None = None
    score: float | None = None
    threshold: float | None = None


@dataclass
class Prediction:
    """One image's result. `to_dict()` is what every interface serialises with the same
    field names: `predict --format json`, the REST API (plus `model`), the page's
    `window.pneumoscan.score` and explain; `--format csv` flattens it (`csv_row`)."""

    path: str
    probability: float | None = None
    # NORMAL / PNEUMONIA at `threshold`; None for an error or an image the OOD gate flags.
    label: str | None = None
    error: str | None = None
    # Every class of the checkpoint (binary: NORMAL, PNEUMONIA), from class_probabilities.
    class_probabilities: dict[str, float] | None = None
    # K-class models: the likelier non-NORMAL class when the label is PNEUMONIA, else None.
    etiology: str | None = None
    threshold: float | None = None
    ood: OodCheck = field(default_factory=OodCheck)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": self.path, "probability": self.probability, "label": self.label,
                "class_probabilities": self.class_probabilities, "etiology": self.etiology,
                "threshold": self.threshold, "ood": asdict(self.ood),
                "warnings": list(self.warnings), "error": self.error}

    @staticmethod
    def csv_columns(labels: list[str]) -> list[str]:
        """The flat columns of `csv_row`: nested fields joined with `_` (ood_flagged), each
        class of a K-class model as p_<class>."""
        classes = [f"p_{name}" for name in labels] + ["etiology"] if len(labels) > 2 else []
        return ["path", "probability", "label", *classes, "ood_flagged", "ood_score",
                "warnings", "error"]

    def csv_row(self) -> dict:
        row = {"path": self.path, "probability": self.probability, "label": self.label,
               "etiology": self.etiology, "ood_flagged": self.ood.flagged,
               "ood_score": self.ood.score, "warnings": "; ".join(self.warnings),
               "error": self.error}
        row.update({f"p_{k}": v for k, v in (self.class_probabilities or {}).items()})
        return row


class Backend(Protocol):
    name: str
    model: object  # the torch model, or None

    def forward(self, images: np.ndarray, batch_size: int = 32, features: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]: ...


def expand_inputs(paths: list[str]) -> list[str]:
    """Files stay as given; folders become their image files (recursively, sorted).
    A folder without images yields an entry whose decoding reports the problem."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            # image files, and FIFOs, sockets and devices so that decoding reports them by name
            found = sorted(str(f) for f in p.rglob("*")
                           if (is_image_file(f) if f.is_file() else f.exists() and not f.is_dir()))
            out.extend(found or [str(p)])
        else:
            out.append(str(p))
    return out


class Predictor:
    """A backend plus its checkpoint contract.

    Examples:
        >>> from pneumoscan.inference.runtime import make_predictor
        >>> p = make_predictor(None)                 # the shipped model on ONNX Runtime
        >>> [r.label for r in p.predict(["examples/NORMAL/NORMAL2-IM-1427-0001.jpeg"])]
        ['NORMAL']
    """

    def __init__(self, backend: Backend | None, ckpt: Checkpoint, tta: bool = False,
                 label_ood: bool = False):
        self.backend, self.ckpt = backend, ckpt
        self.tta = tta  # average over tta.VIEWS; the stored threshold was chosen without it
        self.label_ood = label_ood  # give flagged images a label too (decisions.decide)

    @property
    def model(self):
        """The torch model (Grad-CAM by gradients, export), None on ONNX Runtime."""
        return getattr(self.backend, "model", None)

    @property
    def explainable(self) -> bool:
        """One network whose forward pass gives Grad-CAM features (not an ensemble)."""
        return hasattr(self.backend, "forward")

    @property
    def runtime(self) -> str:
        return self.backend.name

    @property
    def threshold(self) -> float:
        return self.ckpt.threshold

    def logits(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> (N,) or (N, K) logits."""
        return self.backend.forward(images, batch_size)[0]

    def logits_and_ood(self, images: np.ndarray,
                       batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> logits and (N,) OOD scores from the same forward pass (NaN
        scores when the checkpoint has no gate)."""
        gated = self.ckpt.ood_stats is not None
        logits, pooled = self.backend.forward(images, batch_size, features=gated)
        if not gated:
            return logits, np.full(len(logits), np.nan)
        return logits, ood_scores(pooled, self.ckpt.ood_stats)

    def _view_logits(self, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """The logits of every test-time augmentation view but the identity."""
        from . import tta  # torchvision, the training extra: only with --tta

        return [self.logits(tta.view(images, *v), batch_size) for v in tta.VIEWS[1:]]

    def probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> (N,) pneumonia probabilities (with tta: averaged over
        tta.VIEWS)."""
        if not self.explainable:  # an ensemble scores itself
            return self.class_scores(images, batch_size)[0]
        views = [self.logits(images, batch_size)]
        if self.tta:
            views += self._view_logits(images, batch_size)
        return np.mean([decisions.probabilities_from_logits(z, self.ckpt) for z in views],
                       axis=0)

    def scores(self, images: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> (N,) pneumonia probabilities and (N,) OOD scores."""
        probs, _, ood = self.class_scores(images, batch_size)
        return probs, ood

    def class_scores(self, images: np.ndarray, batch_size: int = 32
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, S, S) uint8 -> (N,) pneumonia probabilities, (N, K) class probabilities in
        ckpt.labels order and (N,) OOD scores, from one forward pass (with tta: the OOD
        pass is the identity view, the other tta.VIEWS are averaged in)."""
        if not self.explainable:  # a backend that averages members scores itself
            return self.backend.class_scores(images, batch_size)
        logits, ood = self.logits_and_ood(images, batch_size)
        views = [logits]
        if self.tta:
            views += self._view_logits(images, batch_size)
        return (np.mean([decisions.probabilities_from_logits(z, self.ckpt) for z in views],
                        axis=0),
                np.mean([decisions.class_probabilities(z, self.ckpt) for z in views], axis=0),
                ood)

    def class_probabilities(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N, S, S) uint8 -> (N, K) calibrated class probabilities in ckpt.labels order."""
        return self.class_scores(images, batch_size)[1]

    def predict(self, paths: list[str], batch_size: int = 32) -> list[Prediction]:
        """One Prediction per path, in order; an unreadable file gets `error` and no score."""
        prep = self.ckpt.preprocessing
        results = [Prediction(str(p), threshold=self.threshold) for p in paths]
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
                    results[start + j] = self.prediction(paths[start + j], prob, cls, score)
        return results

    def prediction(self, path: str, probability: float, class_probs: np.ndarray,
                   ood_score: float) -> Prediction:
        """The Prediction of one scored image (NaN ood_score: no gate)."""
        label, etiology, flagged, warnings = decisions.decide(
            float(probability), class_probs, float(ood_score), self.ckpt, self.label_ood)
        gate = self.ckpt.ood
        ood = OodCheck() if flagged is None else OodCheck(flagged, float(ood_score),
                                                          float(gate["threshold"]))
        return Prediction(str(path), float(probability), label,
                          class_probabilities=dict(zip(self.ckpt.labels,
                                                       map(float, class_probs))),
                          etiology=etiology, threshold=self.threshold, ood=ood,
                          warnings=warnings)
