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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**d)
