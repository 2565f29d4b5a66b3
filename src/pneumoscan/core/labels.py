"""Class names of the two tasks, in logit order."""

LABELS = ("NORMAL", "PNEUMONIA")
ETIOLOGY_LABELS = ("NORMAL", "BACTERIAL", "VIRAL")  # task=etiology; from Record.etiology


def task_labels(task: str) -> tuple[str, ...]:
    """The class names a model of `task` (config key) predicts, in logit order."""
    if task not in ("binary", "etiology"):
        raise ValueError(f"unknown task '{task}': choose binary or etiology")
    return LABELS if task == "binary" else ETIOLOGY_LABELS
