"""How an image becomes a model input: the spec every checkpoint stores and every reader obeys."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

INTERPOLATIONS = ("bilinear", "bicubic")  # what data/decode.py resamples with
MAX_INPUT_SIZE = 1024  # EfficientNet-Lite0-2 read 224-260 px; far larger only exhausts memory
MAX_SMOOTHING = 8.0  # a Gaussian sigma beyond this leaves no lung detail at 224 px


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input; stored in every checkpoint and read back from it."""

    input_size: int = 224
    mean: float = 0.5
    std: float = 0.5
    interpolation: str = "bilinear"
    resize: str = "squash"  # the whole image, aspect ratio not kept (as the dataset copies)
    channels: int = 3  # gray repeated to this many channels
    # JPEG quality of one encode-decode round trip after the resize (0 = none). The dataset's
    # 224 px copies are q75 JPEGs and models trained on them read that texture: giving every
    # input the same storage makes a full-size original score as its copy (docs/experiments.md
    # P1). Checkpoints without the key get 0 (unchanged behaviour).
    storage_quality: int = 0
    # Gaussian smoothing (sigma in pixels of the input_size image, 0 = none) applied inside
    # the model, after the normalisation: every reader (torch, the ONNX graph, the browser)
    # gets it from the same code (models/transforms.to_model_input). It takes away the
    # pixel-level texture that differs between a full-size original and its 224 px copy even
    # after the storage step (docs/experiments.md, round 5). Checkpoints without the key get 0.
    smoothing: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**d)

    def problems(self) -> list[tuple[str, str]]:
        """(key, why) for every value no reader can apply: an input size that would exhaust
        memory, a zero or non-finite std, an unknown resampling or resize, a storage quality
        outside JPEG's 1-100 (0 = none). Empty when the spec is usable."""
        def number(v) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        out = []
        if not (isinstance(self.input_size, int) and not isinstance(self.input_size, bool)
                and 16 <= self.input_size <= MAX_INPUT_SIZE):
            out.append(("input_size", f"{self.input_size!r} is not a whole number of pixels "
                                      f"in 16..{MAX_INPUT_SIZE}"))
        if not number(self.mean):
            out.append(("mean", f"{self.mean!r} is not a finite number"))
        if not number(self.std) or self.std <= 0:
            out.append(("std", f"{self.std!r} is not a positive number"))
        if self.interpolation not in INTERPOLATIONS:
            out.append(("interpolation", f"{self.interpolation!r} is not one of "
                                         f"{', '.join(INTERPOLATIONS)}"))
        if self.resize != "squash":
            out.append(("resize", f"{self.resize!r} is not 'squash'"))
        if self.channels not in (1, 3):
            out.append(("channels", f"{self.channels!r} is not 1 or 3"))
        if not (isinstance(self.storage_quality, int) and 0 <= self.storage_quality <= 100):
            out.append(("storage_quality", f"{self.storage_quality!r} is not 0 (none) or a "
                                           f"JPEG quality 1-100"))
        if not number(self.smoothing) or not 0 <= self.smoothing <= MAX_SMOOTHING:
            out.append(("smoothing", f"{self.smoothing!r} is not a Gaussian sigma in "
                                     f"0..{MAX_SMOOTHING} pixels (0 = none)"))
        return out
