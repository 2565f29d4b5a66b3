"""FastAPI app factory: the model is loaded once at start-up; inference runs off the event loop
through the same Predictor.class_scores path as `pneumoscan predict`, so scores match exactly."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from copy import deepcopy
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .. import __version__
from ..core import contract
from ..explain.cam import heatmap_rgba
from ..explain.explainer import Explainer
from ..inference.predictor import Predictor
from ..inference.runtime import make_predictor
from ..web.build import site_for_server
from . import errors
from .batcher import MicroBatcher
from .guard import HostCheck, allowed_hosts, api_key_dependency
from .middleware import AccessLog, BodyLimit, PagesStayLocal
from .uploads import (
    DICOM,
    JPEG,
    PNG,
    UploadError,
    decode,
    is_heavy,
    lower_priority,
    release_memory,
)

log = logging.getLogger("pneumoscan.serve")
Gone = Callable[[], Awaitable[bool]]  # has the client gone? (Request.is_disconnected)


async def _never() -> bool:
    return False


STATIC = Path(str(resources.files("pneumoscan.serve") / "static"))
# Images per forward pass. With ONNX Runtime's arena off (load_predictor), a pass's
# activations are the server's memory peak: 4 keeps it at ~220 MiB under 16 clients sending
# full-size originals (8: ~290 MiB) for the same throughput on 2 cores
# (benchmarks/inference_install.py).
SERVE_BATCH = 4


@dataclass(frozen=True)
class Settings:
    """How the server runs.

    Args:
        model: run folder or model.json; None serves the shipped model.
        max_upload_bytes: larger request bodies get 413 before they are read in full.
        max_pixels: images whose header declares more pixels get 422 before any pixel is
            decoded (decompression bombs). 36 Mpx (6,000 x 6,000) is well above any X-ray
            detector (43 cm at 0.1 mm is 4,300 px) and keeps the costliest accepted upload,
            a 16-bit image just under it, to about a second and 0.3 GB here.
        max_batch_files: most files in one POST /v1/predict/batch.
        host, port, workers: where and how uvicorn listens.
        allowed_hosts: Host header names answered (guard.allowed_hosts: by default none is
            checked on loopback, the bound address beyond it; a wildcard bind needs them).
        api_key: when set, every /v1 route needs it (X-API-Key or Bearer); else none.
        header_timeout, body_timeout: seconds a request head may take to arrive, and its
            body after the head; past them 408 and the connection is closed (server.py).
        runtime: 'auto' (default) or 'onnx' for the model's ONNX Runtime graph: model.onnx
            beside its weights (the shipped models have one), or the one `pneumoscan
            predict` exported and parity-checked on real images into the cache
            (inference/runtime.py); the server has no images of its own to check a new
            export on, so 'onnx' stops with the reason when there is none and 'auto' then
            serves with torch. 'torch' forces torch (the training extra).
    """

    model: str | None = None
    runtime: str = "auto"
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 36_000_000
    max_batch_files: int = 64
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    allowed_hosts: tuple[str, ...] | None = None
    api_key: str | None = None
    header_timeout: float = 10.0
    body_timeout: float = 60.0


class Service:
    """The loaded model and what every request needs from it."""

    def __init__(self, predictor: Predictor, settings: Settings):
        self.predictor, self.settings = predictor, settings
        self.ckpt = predictor.ckpt
        folder = Path(self.ckpt.extra["path"])
        # An ensemble folder has no weights of its own; its ensemble.json pins the members'.
        pinned = folder / contract.WEIGHTS
        if not pinned.is_file():
            pinned = folder / contract.ENSEMBLE
        self.model_info = {
            "name": self.ckpt.model_name,
            "version": self.ckpt.extra.get("package_version", __version__),
            "checkpoint_sha256": contract.file_sha256(pinned),
            "runtime": predictor.runtime}
        # Decoding runs on a few threads of its own (PIL releases the GIL): as many as there
        # are cores, not one per waiting request, which only adds memory. Large images
        # (uploads.is_heavy) decode one at a time on a thread of their own, so that a few
        # of them never hold the others up, nor hold more than one image's memory at once.
        # Inference runs in micro-batches on one thread.
        self._decoders = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                            thread_name_prefix="decode")
        self._heavy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-large",
                                         initializer=lower_priority)
        # Each row: (probability, OOD score or NaN, each class's probability), from one
        # forward pass.
        self._batcher = MicroBatcher(
            lambda images: _rows(*predictor.class_scores(images, batch_size=SERVE_BATCH)),
            max_batch=SERVE_BATCH)
        # Grad-CAM gets its own copy of the model, made on first use: captum's temporary
        # hooks must never fire on the batcher's forward passes. One heatmap at a time.
        self._explainer = None
        self._explain_lock = threading.Lock()

    async def decode(self, data: bytes, name: str) -> np.ndarray:
        heavy = await asyncio.wrap_future(self._decoders.submit(is_heavy, data))
        if not heavy:
            return await asyncio.wrap_future(self._decoders.submit(
                decode, data, name, self.ckpt.preprocessing, self.settings.max_pixels))
        return await asyncio.wrap_future(self._heavy.submit(self._decode_large, data, name))

    def _decode_large(self, data: bytes, name: str) -> np.ndarray:
        try:
            return decode(data, name, self.ckpt.preprocessing, self.settings.max_pixels)
        finally:
            release_memory()

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 -> (N, 2 + K): probability, OOD score (NaN without a gate) and the
        probability of each of the checkpoint's K labels."""
        return await self._batcher.score(images)

    def close(self) -> None:
        self._batcher.close()
        self._decoders.shutdown(wait=True)
        self._heavy.shutdown(wait=True)

    def result(self, row: np.ndarray, name: str) -> dict:
        """The REST form of one scored image: the Prediction `pneumoscan predict` builds from
        the same scores (Predictor.prediction, the same fields as its JSON; `path` is the
        uploaded file's name), with the model beside it."""
        p = self.predictor.prediction(name, row[0], row[2:], row[1])
        return {**p.to_dict(), "model": self.model_info}

    async def predict_one(self, data: bytes, name: str, explain: bool,
                          gone: Gone = _never) -> dict:
        """`gone` says whether the client has disconnected: checked after each costly step
        (decoding, scoring), the rest of the work is then abandoned (ClientDisconnect)."""
        await _stop_if(gone)  # also lets the server read again, so a later hang-up is seen
        image = await self.decode(data, name)
        await _stop_if(gone)
        out = self.result((await self.probabilities(np.stack([image])))[0], name)
        explain = explain and self.predictor.explainable  # no Grad-CAM of an ensemble
        if explain:
            await _stop_if(gone)
        out["heatmap_png"] = await asyncio.to_thread(self.heatmap, image) if explain else None
        return out

    def heatmap(self, image: np.ndarray) -> str:
        """Base64 PNG of the Grad-CAM overlay (RGBA, the model's square input geometry; the
        page stretches it over the X-ray as the model squashed the X-ray)."""
        with self._explain_lock:
            if self._explainer is None:
                self._explainer = self._make_explainer()
            heatmap = self._explainer.maps(image[None])[0]
        buf = io.BytesIO()
        Image.fromarray(heatmap_rgba(heatmap), "RGBA").save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode("ascii")

    def _make_explainer(self) -> Explainer:
        """On ONNX Runtime the session is shared (Grad-CAM reads its `features` output); a
        torch model gets a copy of its own: captum's temporary hooks must never fire on the
        batcher's forward passes."""
        if self.predictor.model is None:
            return Explainer(self.predictor)
        from ..explain.gradients import torch_explainer  # torch: the training extra

        return torch_explainer(deepcopy(self.predictor.model), self.ckpt)

    async def predict_many(self, files: list[tuple[str, bytes]],
                           gone: Gone = _never) -> list[dict]:
        await _stop_if(gone)  # also lets the server read again, so a later hang-up is seen
        decoded = await asyncio.gather(*(self.decode(data, name) for name, data in files),
                                       return_exceptions=True)
        await _stop_if(gone)
        results, images, ok = [], [], []
        for i, ((name, _), d) in enumerate(zip(files, decoded)):
            results.append({"filename": name})
            if isinstance(d, UploadError):
                results[i].update(status=d.status, error=d.message)
            elif isinstance(d, BaseException):
                raise d
            else:
                images.append(d)
                ok.append(i)
        if images:
            for i, p in zip(ok, await self.probabilities(np.stack(images))):
                results[i].update(status=200, **self.result(p, files[i][0]))
        return results


async def _stop_if(gone: Gone) -> None:
    if await gone():
        raise ClientDisconnect()  # serve/errors.py: one access line, status=disconnected


def _rows(probabilities: np.ndarray, class_probs: np.ndarray, ood_scores: np.ndarray
          ) -> np.ndarray:
    return np.column_stack([probabilities, ood_scores, class_probs])


async def _read_files(request: Request, settings: Settings, fields: tuple[str, ...],
                      max_files: int) -> list[UploadFile]:
    """The files uploaded under `fields` of a multipart body, held in memory only (never
    spooled to disk)."""
    # Media types are case-insensitive (RFC 9110 8.3.1): Multipart/Form-Data is one too.
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data with a field 'file'")
    parser = MultiPartParser(request.headers, request.stream(), max_files=max_files,
                             max_fields=16)
    # Starlette rolls parts over 1 MB into a temp file; keep every byte in memory instead.
    parser.spool_max_size = settings.max_upload_bytes + 1
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise HTTPException(400, f"malformed multipart body ({e.message})") from None
    return [v for k, v in form.multi_items() if k in fields and isinstance(v, UploadFile)]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def load_predictor(settings: Settings) -> Predictor:
    """The predictor of settings.model on settings.runtime (see Settings)."""
    def notify(message: str) -> None:
        log.warning("%s (a `pneumoscan predict` run on a few X-rays exports and checks the "
                    "ONNX graph once; later starts use it)", message)

    return make_predictor(settings.model, settings.runtime, paths=[], notify=notify,
                          low_memory=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model is loaded in its lifespan (once per worker process).

    Examples:
        >>> app = create_app(Settings(max_upload_bytes=5 * 2**20))
        >>> # uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        predictor = await run_in_threadpool(load_predictor, settings)
        service = Service(predictor, settings)
        size = service.ckpt.preprocessing.input_size
        await service.probabilities(np.zeros((1, size, size), np.uint8))  # warm-up
        app.state.service = service
        # "On this computer": the same model as a static in-browser site under /local/.
        local = tempfile.TemporaryDirectory(prefix="pneumoscan-site-")
        site = await run_in_threadpool(site_for_server, settings.model, local.name)
        app.state.local = StaticFiles(directory=site, html=True) if site else None
        log.info("model %s loaded; ready", service.model_info["name"])
        yield
        app.state.service = app.state.local = None
        service.close()
        local.cleanup()

    hosts = allowed_hosts(settings.host, settings.allowed_hosts)  # ValueError: say which
    # /docs and /redoc load Swagger UI and ReDoc from the fastapi-offline package, never a CDN.
    app = FastAPIOffline(title="pneumoscan", version=__version__, lifespan=lifespan,
                         static_url="/docs-assets",
                         swagger_ui_parameters={"validatorUrl": None},  # no call to swagger.io
                         description="Pneumonia screening of pediatric chest X-rays. Research "
                                     "tool, not for clinical diagnosis. Every error status "
                                     "returns {\"detail\": \"<message>\"}.")
    app.state.service = app.state.local = None
    errors.install(app)
    if hosts is not None:
        app.add_middleware(HostCheck, allowed=hosts)
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(PagesStayLocal, paths=("/docs", "/redoc"))
    app.add_middleware(AccessLog)
    # Error statuses of each route, documented with the body they carry (errors.ErrorBody).
    everywhere = (*((400,) if hosts is not None else ()), 408, 413)
    keyed = (401,) if settings.api_key else ()
    v1 = [Depends(api_key_dependency(settings.api_key))] if settings.api_key else []
    uploads = errors.responses(*sorted({*everywhere, 400, *keyed, 415, 422, 503}))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    async def local_site(scope, receive, send):
        site = scope["app"].state.local
        if site is None:
            await JSONResponse({"detail": "'on this computer' is not available: no checked "
                                "ONNX export of this model (see the server log)"},
                               404)(scope, receive, send)
        else:
            await site(scope, receive, send)

    app.mount("/local", local_site, name="local")
    upload_doc = {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"],
                   "properties": {"file": {"type": "string", "format": "binary"}}}}}}}
    batch_doc = {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["files"], "properties": {"files": {
            "type": "array", "minItems": 1, "maxItems": settings.max_batch_files,
            "items": {"type": "string", "format": "binary"}}}}}}}}

    def service_of(request: Request) -> Service:
        service = request.app.state.service
        if service is None:
            raise HTTPException(503, "model not loaded yet")
        return service

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", responses=errors.responses(*everywhere, 503))
    async def healthz(request: Request):
        """Liveness; `ready` is true once the model is loaded (503 before)."""
        service_of(request)
        return {"status": "ok", "ready": True}

    @app.get("/v1/model", dependencies=v1, responses=errors.responses(*everywhere, *keyed, 503))
    async def model(request: Request):
        """The model card facts: labels, threshold, preprocessing, validation metrics."""
        s = service_of(request)
        return {**s.model_info, "labels": s.ckpt.labels, "threshold": s.ckpt.threshold,
                "preprocessing": s.ckpt.preprocessing.to_dict(),
                "val_metrics": s.ckpt.val_metrics, "server_version": __version__,
                "accepts": [JPEG, PNG, DICOM],
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels}

    @app.post("/v1/predict", openapi_extra=upload_doc, dependencies=v1, responses=uploads)
    async def predict(request: Request, explain: bool = False):
        """Score one X-ray (multipart field `file`): probability, label, class probabilities,
        etiology (K-class models; null for a binary one), threshold, model."""
        start, s = time.perf_counter(), service_of(request)
        files = await _read_files(request, settings, ("file",), max_files=1)
        if not files:
            raise HTTPException(422, "no file uploaded (multipart field 'file')")
        name, data = files[0].filename or "upload", await files[0].read()
        try:
            out = await s.predict_one(data, name, explain, request.is_disconnected)
        except UploadError as e:
            raise HTTPException(e.status, e.message) from None
        return {**out, "elapsed_ms": _ms(start)}

    @app.post("/v1/predict/batch", openapi_extra=batch_doc, dependencies=v1,
              responses=uploads)
    async def predict_batch(request: Request):
        """Score several X-rays (multipart fields `files`): one result or error per file."""
        start, s = time.perf_counter(), service_of(request)
        files = await _read_files(request, settings, ("files", "file"),
                                 max_files=settings.max_batch_files)
        if not files:
            raise HTTPException(422, "no files uploaded (multipart fields 'files')")
        named = [(f.filename or f"upload {i + 1}", await f.read()) for i, f in enumerate(files)]
        results = await s.predict_many(named, request.is_disconnected)
        return {"results": results, "threshold": s.ckpt.threshold, "model": s.model_info,
                "elapsed_ms": _ms(start)}

    return app
