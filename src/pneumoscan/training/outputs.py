"""What a training run prints and what it leaves behind when it fails."""

from __future__ import annotations

import logging
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import writing_into
from . import resume

log = logging.getLogger(__name__)


def first_missing(folder: Path) -> Path | None:
    """The outermost folder that making `folder` would create (None: it exists)."""
    if folder.exists():
        return None
    while not folder.parent.exists():
        folder = folder.parent
    return folder


@contextmanager
def removed_on_failure(run_dir: Path, created: Path | None):
    """A run that fails leaves no folder behind: remove what this run created (`created`, the
    run folder or an outer one such as runs/), unless it holds a checkpoint to --resume from.
    A full disk is reported naming the run folder."""
    try:
        with writing_into(run_dir):
            yield
    except Exception:
        if created and (run_dir / resume.LAST).is_file():
            log.warning("the failed run's checkpoints stay in %s: continue it with "
                        "'pneumoscan train --resume %s'", run_dir, run_dir)
        elif created:
            shutil.rmtree(created, ignore_errors=True)
        raise


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


@contextmanager
def quiet_lightning():
    """While training: Lightning's INFO lines once (its own console handler, not the root's
    too), without its product tips, and without the FutureWarning torch raises on Lightning's
    use of a deprecated pytree class (theirs to fix, nothing a user can act on)."""
    root, rank_zero = (logging.getLogger("lightning"),
                       logging.getLogger("lightning.pytorch.utilities.rank_zero"))
    before, adverts = root.propagate, _NoAdverts()
    root.propagate = not root.handlers
    rank_zero.addFilter(adverts)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning,
                                    message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        root.propagate = before
        rank_zero.removeFilter(adverts)
