"""How an image becomes a model input: the spec every checkpoint stores and every reader obeys."""

from __future__ import annotations

from dataclasses import asdict, dataclass


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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**d)
