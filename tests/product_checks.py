"""Product checks shared by the test suite (on the shipped models) and the shipping gates of
benchmarks/product_gates.py (on any candidate run): one definition of each."""

from __future__ import annotations

from pathlib import Path

from .conftest import EXAMPLES


def examples_check(predictor) -> dict:
    """The 16 full-size official-val originals in examples/: how many the model gets right and
    how many of the 8 pneumonias it finds. A PNEUMONIA, BACTERIAL or VIRAL label counts as
    finding pneumonia; no label (flagged by the OOD gate) is never right. The check passes with
    all 8 pneumonias found (sensitivity first: a screening aid must not miss these) and at
    least 12 of 16 right."""
    paths = sorted(str(p) for p in EXAMPLES.rglob("*.jpeg"))
    results = predictor.predict(paths)
    right = found = 0
    for r in results:
        sick = Path(r.path).parent.name == "PNEUMONIA"
        if r.label is not None and (r.label != "NORMAL") == sick:
            right += 1
            found += sick
    return {"examples_n": len(results), "examples_right": right,
            "examples_pneumonia_found": found,
            "examples_pass": len(results) == 16 and found == 8 and right >= 12}
