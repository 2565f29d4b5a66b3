"""The torch backend: a loaded nn.Module (the training extra), for the torch runtime, bf16,
test-time augmentation, ensembles and Grad-CAM by gradients."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..core.contract import Checkpoint
from ..core.decisions import head_output, probabilities_from_logits
from ..models.registry import get_spec
from ..models.transforms import to_model_input
from .predictor import Predictor


@torch.inference_mode()
def predict_logits(model: nn.Module, ckpt: Checkpoint, images: np.ndarray,
                   batch_size: int = 32) -> np.ndarray:
    """(N, S, S) uint8 gray images -> (N,) float32 pneumonia logits of a binary model, or
    (N, K) class logits of a K-class model."""
    model.eval()
    logits = [head_output(model(to_model_input(torch.from_numpy(images[i:i + batch_size])
                                               .unsqueeze(1), ckpt.preprocessing)).float())
              .numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(logits) if logits else np.zeros(0, dtype=np.float32)


def predict_arrays(model: nn.Module, ckpt: Checkpoint, images: np.ndarray,
                   batch_size: int = 32) -> np.ndarray:
    """(N, S, S) uint8 gray images -> (N,) pneumonia probabilities (float64)."""
    return probabilities_from_logits(predict_logits(model, ckpt, images, batch_size), ckpt)


@contextmanager
def pooled_features(model: nn.Module, model_name: str):
    """While active, each forward of `model` appends its (B, C) globally averaged target-layer
    features to the yielded list: the features come from the same forward as the logit."""
    out: list[torch.Tensor] = []
    hook = get_spec(model_name).target_layer(model).register_forward_hook(
        lambda _m, _i, y: out.append(y.float().mean(dim=(2, 3))))
    try:
        yield out
    finally:
        hook.remove()


@torch.inference_mode()
def logits_and_features(model: nn.Module, ckpt: Checkpoint, images: np.ndarray,
                        batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) uint8 -> (N,) binary or (N, K) class float32 logits and (N, C) float32
    penultimate features."""
    model.eval()
    logits = []
    with pooled_features(model, ckpt.model_name) as feats:
        for i in range(0, len(images), batch_size):
            x = to_model_input(torch.from_numpy(images[i:i + batch_size]).unsqueeze(1),
                               ckpt.preprocessing)
            logits.append(head_output(model(x).float()).numpy())
    if not logits:
        return np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(logits), torch.cat(feats).numpy()


class TorchBackend:
    """One forward of a torch model (eval mode, channels-last; bf16 autocast if asked)."""

    name = "torch"

    def __init__(self, model: nn.Module, ckpt: Checkpoint, bf16: bool = False,
                 prepare: bool = True):
        # `prepare`: eval mode and channels-last now; Grad-CAM's copy is left as it is given.
        self.model = model.eval().to(memory_format=torch.channels_last) if prepare else model
        self.ckpt, self.keep_modes = ckpt, not prepare
        # bf16 autocast is ~2x faster on AVX-512 BF16 CPUs but not the default: on the test
        # split it moved probabilities and flipped labels (docs: speed).
        self.bf16 = bf16

    def forward(self, images: np.ndarray, batch_size: int = 32, features: bool = False
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, S, S) uint8 -> (N,) or (N, K) float32 logits and, if asked, (N, C) pooled
        features of the same forward pass (else None)."""
        modes = [(m, m.training) for m in self.model.modules()] if self.keep_modes else []
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                if features:
                    return logits_and_features(self.model, self.ckpt, images, batch_size)
                return predict_logits(self.model, self.ckpt, images, batch_size), None
        finally:
            for m, training in modes:  # predict_logits puts the model in eval mode
                m.training = training


def torch_predictor(model: nn.Module, ckpt: Checkpoint, bf16: bool = False,
                    tta: bool = False) -> Predictor:
    """A Predictor holding a TorchBackend of `model`."""
    return Predictor(TorchBackend(model, ckpt, bf16=bf16), ckpt, tta=tta)
