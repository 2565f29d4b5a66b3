"""What every verb shares: exit statuses and where the dataset is."""

from __future__ import annotations

USAGE_ERROR, SOME_FAILED = 2, 1


def data_dir(args) -> str:
    from ..data import default_data_dir

    return str(getattr(args, "manifest", None) or getattr(args, "data_dir", None) or args.data
               or default_data_dir())
