"""Errors that any layer may raise and the command line turns into one line (exit status 2)."""


class CheckpointError(ValueError):
    """A checkpoint path that does not hold a usable pneumoscan model."""


class ExportError(RuntimeError):
    """An exported graph that does not reproduce the PyTorch model, or that cannot be made."""


TRAIN_EXTRA = 'pip install "pneumoscan[train]"'


class NeedsTrainingExtra(RuntimeError):
    """A verb or option that needs PyTorch (or another package of the training extra) in an
    install that lacks it."""

    def __init__(self, what: str, missing: str):
        super().__init__(f"{what} needs the training extra ({missing} is not installed): "
                         f"{TRAIN_EXTRA}")
        self.missing = missing


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and the problem."""
