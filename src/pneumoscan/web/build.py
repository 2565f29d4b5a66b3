"""The static site that screens X-rays in the browser: the page, its JS, the checked ONNX graph,
its contract (as JSON the page reads) and the vendored ONNX Runtime Web files.

Nothing of the site is fetched from elsewhere: every file lies under the output folder, so it
runs from any static host, from `python -m http.server`, or offline. The graph is the one
`pneumoscan predict` uses (the model's shipped model.onnx, else inference/export.cached_onnx:
exported once per checkpoint, parity-checked against PyTorch on real images); the page reads
the rest of the contract (labels, temperature, threshold, OOD gate, CAM weights) from
`model/contract.json`, written here from the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np

from .. import __version__
from ..core import contract as checkpoint
from ..core.contract import Checkpoint
from ..core.decisions import OOD_WARNING
from ..core.errors import ExportError
from ..data import DatasetNotFound
from ..explain._turbo import TURBO
from ..inference.onnx import OnnxBackend, open_session, output_contract, refuse_ensemble
from ..inference.runtime import parity_images as first_readable
from ..inference.runtime import shipped_graph

FORMAT = 1  # bump when contract.json's fields change
PACKAGE = Path(str(resources.files("pneumoscan.web")))
STATIC, VENDOR = PACKAGE / "static", PACKAGE / "vendor" / "onnxruntime-web"
OOD_ORDER = ("mean", "axes", "precision", "residual_var")  # float32 blocks of model/ood.bin


def check_vendor() -> dict:
    """The vendored ONNX Runtime Web files, each checked against VERSION.json's sha256."""
    meta = json.loads((VENDOR / "VERSION.json").read_text())
    for name, digest in meta["files"].items():
        actual = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        if actual != digest:
            raise RuntimeError(f"{VENDOR / name}: sha256 {actual}, VERSION.json pins {digest}")
    return meta


def turbo_lut() -> list[list[int]]:
    """matplotlib's turbo colour map as 256 RGB triplets (the server's overlay colours)."""
    return np.round(np.asarray(TURBO) * 255).astype(int).tolist()


def contract(cam: dict | None, ckpt: Checkpoint) -> dict:
    """What the page needs besides the graph: the server's decision rules, as data; `cam`,
    the classifier the graph's `features` are weighted by (its metadata's cam_weights)."""
    folder = Path(ckpt.extra["path"])
    gate = ckpt.ood if ckpt.ood_stats is not None else None
    ood = None
    if gate is not None:
        shapes = {k: list(np.shape(ckpt.ood_stats[k])) for k in OOD_ORDER}
        ood = {"threshold": float(gate["threshold"]), "file": "ood.bin", "shapes": shapes,
               "order": list(OOD_ORDER), "method": gate.get("method")}
    return {
        "format": FORMAT,
        "model": {"name": ckpt.model_name,
                  "version": ckpt.extra.get("package_version", __version__),
                  "checkpoint_sha256": checkpoint.file_sha256(folder / checkpoint.WEIGHTS),
                  "runtime": "onnxruntime-web"},
        "labels": list(ckpt.labels), "threshold": float(ckpt.threshold),
        "temperature": ckpt.temperature,
        "preprocessing": ckpt.preprocessing.to_dict(),
        "output": output_contract(ckpt),
        "cam": cam, "ood": ood, "ood_warning": OOD_WARNING,
        "colormap": turbo_lut(), "heatmap_alpha": 0.55,
    }


def _graph(model, parity_images: Callable[[], np.ndarray] | None
           ) -> tuple[Path, Checkpoint, dict | None]:
    """(graph file, contract, CAM weights): the model's shipped graph without torch when it
    has one, else its checked export (the training extra)."""
    folder = checkpoint.resolve(model) if model is None or Path(model).suffix != ".onnx" \
        else None
    graph = shipped_graph(folder) if folder is not None else None
    if graph is not None:
        return graph, checkpoint.read(folder), OnnxBackend(open_session(graph), graph).cam
    from ..inference.export import cached_onnx, cam_weights  # torch and onnx
    from ..models import weights

    net, ckpt = weights.load(model)
    graph = cached_onnx(net, ckpt, parity_images or (lambda: np.zeros((0, 1, 1), np.uint8)))
    return graph, ckpt, cam_weights(net)


def _ood_bytes(stats: dict) -> bytes:
    return b"".join(np.ascontiguousarray(stats[k], dtype="<f4").tobytes() for k in OOD_ORDER)


def build_site(out_dir: str | Path, model: str | Path | None = None,
               parity_images: Callable[[], np.ndarray] | None = None,
               server: str | None = None) -> dict:
    """Write the in-browser screening site into `out_dir` (created; files replaced).

    Args:
        out_dir: the folder to serve (index.html at its root).
        model: run folder or model.json; None for the shipped model. Not an ensemble.
        parity_images: returns (N, S, S) uint8 real images to check a new ONNX export on;
            called only when no checked export of this checkpoint is cached.
        server: the URL of `pneumoscan serve`'s own page, when it serves this site (the
            page then shows the "on this computer" / "on the server" switch).

    Returns:
        {"path", "graph", "bytes", "onnxruntime_web"}: where and how large.

    Examples:
        >>> build_site("site", None, lambda: images)["path"]
        'site'
    """
    refuse_ensemble(model)
    vendor = check_vendor()
    graph, ckpt, cam = _graph(model, parity_images)
    prep = ckpt.preprocessing
    if (prep.interpolation, prep.resize) != ("bilinear", "squash"):
        raise ExportError(f"the browser site resizes as Pillow's bilinear squash only; this "
                          f"model's preprocessing is {prep.interpolation} / {prep.resize}")
    out = Path(out_dir)
    for sub in ("app", "model", "ort"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for f in STATIC.iterdir():
        if f.is_file():  # index.html and style.css at the root, the JS modules in app/
            to = out / f.name if f.suffix in (".html", ".css") else out / "app" / f.name
            shutil.copyfile(f, to)
    for name in [*vendor["files"], "LICENSE", "VERSION.json"]:
        shutil.copyfile(VENDOR / name, out / "ort" / name)
    shutil.copyfile(graph, out / "model" / "model.onnx")
    (out / "model" / "contract.json").write_text(json.dumps({**contract(cam, ckpt),
                                                             "server": server}))
    if ckpt.ood_stats is not None and ckpt.ood is not None:
        (out / "model" / "ood.bin").write_bytes(_ood_bytes(ckpt.ood_stats))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {"path": str(out), "graph": str(graph), "bytes": size,
            "onnxruntime_web": vendor["version"]}


def parity_images(model: str | Path | None, data_dir: str | Path, n: int = 16) -> np.ndarray:
    """Real images to check a new export on: the checkpoint's carved val split when the
    dataset is there, else the repository's examples/ (as `make demo` scores them)."""
    from ..inference.export import val_images  # torch: only for a graph not shipped

    try:
        return val_images(model, data_dir, n)
    except (DatasetNotFound, FileNotFoundError):
        examples = Path("examples")
        files = sorted(str(f) for f in examples.rglob("*.jpeg")) if examples.is_dir() else []
        if not files:
            raise DatasetNotFound(f"no dataset at {data_dir} and no examples/ folder: the "
                                  f"ONNX export needs real X-rays to be checked on") from None
        return first_readable(files, checkpoint.read(checkpoint.resolve(model)), n)


def site_for_server(model: str | Path | None, out_dir: str | Path) -> str | None:
    """Build the site `pneumoscan serve` offers under /local/ ("on this computer") into
    out_dir; None, with the reason logged, when there is no checked export of the model to
    put in it (the server has no images of its own to check a new one on) or the model is an
    ensemble."""
    import logging

    try:
        build_site(out_dir, model, server="../")
    except Exception as e:  # noqa: BLE001 (an optional page must never stop the server)
        logging.getLogger("pneumoscan.serve").warning(
            "'on this computer' is off: %s (a `pneumoscan predict` or `pneumoscan export "
            "--web` run on a few X-rays exports and checks the ONNX graph once)",
            (str(e).splitlines() or [type(e).__name__])[0])
        return None
    return str(out_dir)
