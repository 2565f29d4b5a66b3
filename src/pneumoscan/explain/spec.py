"""What an explanation is: the methods, their settings and the result type."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

METHODS = ("gradcam", "occlusion")


@dataclass(frozen=True)
class OcclusionSettings:
    """Occlusion sensitivity (Kermany et al. 2018): slide a gray square over the input and
    record how much the target logit drops. In model-input pixels; the square is filled
    with the image's mean."""

    window: int = 32
    stride: int = 16
    batch_size: int = 32  # occluded copies per forward pass

    def forward_passes(self, input_size: int) -> int:
        """Forward passes per image: one per window position plus the unoccluded input."""
        positions = (input_size - self.window) // self.stride + 1
        return positions * positions + 1


@dataclass
class Explanation:
    path: str
    method: str
    target: int | None = None  # None: the pneumonia decision (module docstring)
    heatmap: np.ndarray | None = None  # (H, W) float32 in [0, 1], the original geometry
    image: np.ndarray | None = None  # (H, W) uint8 gray original, for display
    probability: float | None = None
    label: str | None = None
    error: str | None = None
    # As in Prediction: every class's probability; K-class models' likelier etiology.
    class_probabilities: dict[str, float] | None = None
    etiology: str | None = None
    # As in Prediction: the OOD gate's verdict (None without a gate) and what to show beside
    # the map (label is None for a flagged image).
    ood_flagged: bool | None = None
    warnings: list[str] = field(default_factory=list)
