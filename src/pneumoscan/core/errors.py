"""Errors that any layer may raise and the command line turns into one line (exit status 2)."""

import errno
from contextlib import contextmanager
from pathlib import Path


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


class ModelUnavailable(ValueError):
    """A model name the registry does not know, or pretrained weights this machine cannot
    have (a weights package not installed, the hub unreachable)."""


# Messages of a write that ran out of space where no errno survives: torch.save's zip writer
# ("[enforce fail at inline_container.cc:...] . unexpected pos", "PytorchStreamWriter failed
# writing file") and Rust writers such as safetensors ("os error 28").
_FULL_DISK_SIGNS = ("inline_container.cc", "PytorchStreamWriter failed writing",
                    "file write failed", "No space left on device", "os error 28")


class DiskFull(OSError):
    """A write into `folder` that failed for lack of space (or quota)."""

    def __init__(self, folder):
        super().__init__(errno.ENOSPC, f"no space left on device (disk full) while writing "
                                       f"into {folder}; free some space or choose another "
                                       f"folder", str(folder))

    def __str__(self) -> str:
        return self.strerror


def disk_full(error: BaseException, folder) -> DiskFull | None:
    """The DiskFull to raise for `error`, raised while writing into `folder`, or None when
    `error` is not about space: OSError ENOSPC/EDQUOT, or torch's and safetensors' runtime
    errors, which carry no errno."""
    if isinstance(error, DiskFull):
        return error
    if isinstance(error, OSError):
        return DiskFull(folder) if error.errno in (errno.ENOSPC, errno.EDQUOT) else None
    if isinstance(error, RuntimeError) or type(error).__name__ == "SafetensorError":
        return DiskFull(folder) if any(s in str(error) for s in _FULL_DISK_SIGNS) else None
    return None


@contextmanager
def writing_into(folder):
    """Around the writes of a run or a report: a full disk becomes one DiskFull naming
    `folder`, whatever library raised it."""
    try:
        yield
    except Exception as e:
        full = disk_full(e, folder)
        if full is None or full is e:
            raise
        raise full from e


def describe_os_error(error: OSError) -> str:
    """One line for a file-system error: what failed, on which path, and why."""
    if isinstance(error, DiskFull):
        return str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(DiskFull(Path(error.filename).parent if error.filename else "?"))
    where = f"{error.filename}: " if error.filename else ""
    why = error.strerror or str(error)
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why += " (choose a folder you can write to)"
    return f"{where}{why}"
