"""`--dicom-out DIR` of predict and explain: a Secondary Capture and an SR per DICOM input.

Only DICOM inputs get DICOM results (a JPEG has no study to join); the others are named in
one notice. Scores come from the caller (the rows predict printed, the explanations explain
drew), so the SR holds exactly the probability the terminal showed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..data.decode import ImageError, is_dicom, load_gray_original, load_many
from ..explain.cam import resize_map
from .results import Finding, ModelIdentity, write_results


def _write(path, gray, heat, finding, identity, out_dir, notify, method="Grad-CAM"
           ) -> list[Path]:
    try:
        return write_results(path, gray, heat, finding, identity, out_dir, method=method)
    except Exception as e:  # noqa: BLE001 (highdicom refuses a non-conformant source header)
        # The type only: its message may quote a patient attribute.
        notify(f"pneumoscan: --dicom-out: {path}: no DICOM result written: the source's "
               f"header cannot be copied ({type(e).__name__})")
        return []

BATCH = 16  # Grad-CAM batch: memory grows with it, speed barely does past this


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def split_dicom(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    """(DICOM inputs, other inputs), by content as transforms recognises DICOM."""
    dicom, other = [], []
    for p in paths:
        (dicom if is_dicom(p) else other).append(p)
    return dicom, other


def notice_non_dicom(other: list[str], notify: Callable[[str], None] = _say) -> None:
    """One line for all non-DICOM inputs, never one per file."""
    if other:
        more = f" and {len(other) - 1} more" if len(other) > 1 else ""
        notify(f"pneumoscan: --dicom-out: {len(other)} input(s) are not DICOM and get no DICOM "
               f"output ({Path(other[0]).name}{more})")


def write_for_predictions(explainer, rows: list[dict], out_dir: str | Path,
                          notify: Callable[[str], None] = _say) -> list[Path]:
    """Predict's rows (Prediction.to_dict()) -> SC + SR files in out_dir for each scored
    DICOM input, with a Grad-CAM overlay from `explainer` (explain.explainer.Explainer of
    the predictor that scored them: from the ONNX graph's features, or torch gradients)."""
    ckpt = explainer.ckpt
    scored = {r["path"]: r for r in rows if not r["error"]}
    dicom, other = split_dicom(scored)
    notice_non_dicom(other, notify)
    identity, prep, written = ModelIdentity.from_checkpoint(ckpt), ckpt.preprocessing, []
    for start in range(0, len(dicom), BATCH):
        chunk = dicom[start:start + BATCH]
        arr, ok, errors = load_many(chunk, prep.input_size, prep.interpolation,
                                    storage_quality=prep.storage_quality)
        for message in errors.values():  # scored a moment ago: changed on disk since
            notify(f"pneumoscan: --dicom-out: {message}")
        for j, native in zip(ok, explainer.native_maps(arr) if len(arr) else []):
            r = scored[chunk[j]]
            finding = Finding(r["probability"], r["label"], r["etiology"], r["ood"]["flagged"])
            try:
                gray = load_gray_original(chunk[j])
            except ImageError as e:
                notify(f"pneumoscan: --dicom-out: {e}")
                continue
            heat = resize_map(native, gray.shape[1], gray.shape[0])
            written += _write(chunk[j], gray, heat, finding, identity, out_dir, notify)
    return written


def write_for_explanation(e, ckpt, out_dir: str | Path,
                          notify: Callable[[str], None] = _say) -> list[Path]:
    """One explain.Explanation of a DICOM input -> its SC + SR files (explain computes no OOD
    score, so the SR carries no OOD flag)."""
    heat = np.asarray(e.heatmap, dtype=np.float32)
    method = {"gradcam": "Grad-CAM", "occlusion": "occlusion"}.get(e.method, e.method)
    return _write(e.path, e.image, heat, Finding(e.probability, e.label, e.etiology),
                  ModelIdentity.from_checkpoint(ckpt), out_dir, notify, method)
