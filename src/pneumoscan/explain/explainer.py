"""Explainer: a Predictor that also says where in the image its score comes from.

Maps are computed at the model input (the image squashed to input_size x input_size) and
resized back to the original width x height, so they lie on the X-ray as it was given. On
ONNX Runtime, Grad-CAM comes from the graph's `features` output (cam.py, no PyTorch); with a
torch model, from captum's gradients (gradients.py), which also gives occlusion sensitivity.

What is explained by default is the pneumonia decision: a binary model's logit, and for a
K-class (etiology) model the logit of its pneumonia probability, log(1 - P(NORMAL)) -
log P(NORMAL) at the stored temperature, the score the stored threshold is applied to. An
explicit `target` explains that raw class logit instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..core.errors import CheckpointError, NeedsTrainingExtra
from ..data.decode import ImageError, load_gray_original, load_many
from ..inference.predictor import Predictor
from ..inference.runtime import make_predictor
from .cam import onnx_gradcam, resize_map
from .spec import METHODS, Explanation, OcclusionSettings


class Explainer:
    """A Predictor plus the heatmap method its backend allows.

    Examples:
        >>> e = Explainer.from_checkpoint()          # the shipped model
        >>> r = e.explain(["examples/PNEUMONIA/person1946_bacteria_4874.jpeg"])[0]
        >>> r.heatmap.shape == r.image.shape, r.label
        (True, 'PNEUMONIA')
    """

    def __init__(self, predictor: Predictor):
        self.predictor, self.ckpt = predictor, predictor.ckpt

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, runtime: str = "torch"
                        ) -> Explainer:
        """The model at `path` (None: the shipped one) on `runtime` ('torch': gradients and
        occlusion; 'auto': the ONNX graph where there is one)."""
        p = make_predictor(path, runtime)  # the same model set-up as prediction
        if not p.explainable:
            raise CheckpointError(
                f"{path}: an ensemble has no single Grad-CAM target layer; explain one of "
                f"its member runs instead")
        return cls(p)

    @property
    def model(self):
        return self.predictor.model

    def maps(self, images: np.ndarray, method: str = "gradcam", target: int | None = None,
             occlusion_settings: OcclusionSettings = OcclusionSettings()) -> np.ndarray:
        """(N, S, S) uint8 model inputs -> (N, S, S) float32 maps in [0, 1]."""
        size = self.ckpt.preprocessing.input_size
        maps = self.native_maps(images, method, target, occlusion_settings)
        return np.stack([resize_map(m, size, size) for m in maps]) if len(maps) else \
            np.zeros((0, size, size), np.float32)

    def native_maps(self, images: np.ndarray, method: str = "gradcam", target: int | None = None,
                    occlusion_settings: OcclusionSettings = OcclusionSettings()) -> np.ndarray:
        """(N, S, S) uint8 -> maps in [0, 1] at the method's own resolution (the target
        layer's for Grad-CAM), so that each is resized only once, straight to its image's
        geometry (resize_map)."""
        if method not in METHODS:
            raise ValueError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
        backend = self.predictor.backend
        if self.model is None:
            if method == "occlusion":
                raise NeedsTrainingExtra("occlusion sensitivity (a torch model)", "torch")
            logits, feature_maps = backend.feature_maps(images)
            return onnx_gradcam(feature_maps, logits, backend.cam, self.ckpt, target)
        from . import gradients  # captum and torch: the training extra

        if method == "occlusion":
            return gradients.occlusion(self.model, self.ckpt, images, target,
                                       occlusion_settings)
        return gradients.gradcam(self.model, self.ckpt, images, target)

    def iter_explain(self, paths: list[str], method: str = "gradcam", target: int | None = None,
                     batch_size: int = 16, progress: bool = False,
                     occlusion_settings: OcclusionSettings = OcclusionSettings(),
                     ) -> Iterator[Explanation]:
        """One Explanation per path, in order, yielded as soon as computed; an unreadable
        file gets `error` and no map."""
        prep = self.ckpt.preprocessing
        bar = None
        if progress:
            from tqdm import tqdm

            cost = (f", {occlusion_settings.forward_passes(prep.input_size)} forward passes "
                    f"per image" if method == "occlusion" else "")
            bar = tqdm(total=len(paths), unit="image", desc=f"{method}{cost}")
        if method == "occlusion":
            batch_size = 1  # seconds per image: let the bar move per image
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            arr, ok, errors = load_many(chunk, prep.input_size, prep.interpolation,
                                          storage_quality=prep.storage_quality)
            maps = self.native_maps(arr, method, target, occlusion_settings)
            # The scores predict gives (OOD gate included), from one forward pass.
            found = dict(zip(ok, zip(maps, *self.predictor.class_scores(arr)))) if ok else {}
            for j, path in enumerate(chunk):
                yield self._one(path, method, target, errors.get(j),
                                *found.get(j, (None, None, None, None)))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()

    def explain(self, paths: list[str], method: str = "gradcam", **kwargs) -> list[Explanation]:
        return list(self.iter_explain(paths, method, **kwargs))

    def _one(self, path: str, method: str, target: int | None, error: str | None, heatmap,
             probability, class_probs, ood_score) -> Explanation:
        e = Explanation(str(path), method, target)
        if error is not None:
            e.error = (f"{path}: folder holds no image files" if Path(path).is_dir() else error)
            return e
        try:
            e.image = load_gray_original(path)
        except ImageError as err:
            e.error = str(err)
            return e
        height, width = e.image.shape
        e.heatmap = resize_map(heatmap, width, height)
        # The same Prediction predict prints.
        p = self.predictor.prediction(path, probability, class_probs, ood_score)
        e.probability, e.label = p.probability, p.label
        e.class_probabilities, e.etiology = p.class_probabilities, p.etiology
        e.ood_flagged, e.warnings = p.ood.flagged, p.warnings
        return e
