"""The web service: every route and error status in-process (TestClient), then a real
`pneumoscan serve` process checked against `pneumoscan predict` and under a small load."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pneumoscan.inference.runtime import load_torch, make_predictor
from pneumoscan.models import weights as checkpoint
from pneumoscan.serve import Settings, create_app

from .conftest import EXAMPLES
from .serving import predict_cli_json, running_server

LIMIT = 1 * 2**20  # small upload limit for the in-process app, so 413 tests stay cheap
ORIGINAL = EXAMPLES / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"
ORIGINAL_NORMAL = EXAMPLES / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(max_upload_bytes=LIMIT, max_pixels=50_000_000))) as c:
        yield c


@pytest.fixture(scope="module")
def predictor():
    """What the server scores with by default: the shipped model's ONNX graph."""
    return make_predictor()


@pytest.fixture(scope="module")
def small_jpegs(data_dir) -> list[Path]:
    """A few real 224 px test-split X-rays, both classes."""
    return [p for label in ("NORMAL", "PNEUMONIA")
            for p in sorted((data_dir / "test" / label).glob("*.jpeg"))[:3]]


def upload(client, name: str, data: bytes, ctype: str = "image/jpeg", **params):
    return client.post("/v1/predict", params=params, files={"file": (name, data, ctype)})


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (and whose data is one empty chunk)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


# --- routes -------------------------------------------------------------------------------

def test_healthz_and_model_card(client):
    assert client.get("/healthz").json() == {"status": "ok", "ready": True}
    card = client.get("/v1/model").json()
    _, ckpt = checkpoint.load(None)
    weights = checkpoint.resolve(None) / checkpoint.WEIGHTS
    assert card["labels"] == ckpt.labels and card["threshold"] == ckpt.threshold
    assert card["checkpoint_sha256"] == checkpoint.file_sha256(weights)
    assert card["preprocessing"]["input_size"] == 224
    assert card["val_metrics"]["auroc"] == ckpt.val_metrics["auroc"]


def test_not_ready_before_the_model_is_loaded():
    unstarted = TestClient(create_app())  # no `with`: the lifespan has not run
    assert unstarted.get("/healthz").status_code == 503


def test_predict_matches_the_predictor(client, predictor, small_jpegs):
    for path in [small_jpegs[0], small_jpegs[-1], ORIGINAL]:
        r = upload(client, path.name, path.read_bytes())
        assert r.status_code == 200, r.text
        body = r.json()
        expected = predictor.predict([str(path)])[0]
        assert abs(body["probability"] - expected.probability) < 1e-6
        assert body["label"] == expected.label and body["threshold"] == predictor.threshold
        assert body["model"]["name"] == "efficientnet-lite0"
        assert len(body["model"]["checkpoint_sha256"]) == 64
        assert body["heatmap_png"] is None and body["warnings"] == []
        assert body["elapsed_ms"] > 0
        assert body["etiology"] is None  # a binary model
        assert body["class_probabilities"] == pytest.approx(expected.class_probabilities,
                                                            abs=1e-6)


def test_png_upload_is_accepted(client, predictor, tmp_path):
    png = tmp_path / "xray.png"
    Image.open(ORIGINAL_NORMAL).save(png)
    r = upload(client, "xray.png", png.read_bytes(), "image/png")
    assert r.status_code == 200
    assert abs(r.json()["probability"] - predictor.predict([str(png)])[0].probability) < 1e-6


def test_explain_returns_a_gradcam_overlay_of_the_model_input(client):
    import base64

    import numpy as np
    from PIL import Image

    r = upload(client, "a.jpeg", ORIGINAL_NORMAL.read_bytes(), explain="true")
    assert r.status_code == 200 and r.json()["warnings"] == []
    overlay = Image.open(io.BytesIO(base64.b64decode(r.json()["heatmap_png"])))
    assert overlay.mode == "RGBA" and overlay.size == (224, 224)
    alpha = np.asarray(overlay)[..., 3]
    assert alpha.max() > 100 and alpha.min() < alpha.max()  # a map, not a flat layer
    plain = upload(client, "a.jpeg", ORIGINAL_NORMAL.read_bytes())
    assert plain.json()["heatmap_png"] is None
    assert plain.json()["probability"] == r.json()["probability"]

def test_page_and_its_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "Not for clinical use" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from a CDN
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_batch_gives_one_result_or_error_per_file(client, predictor, small_jpegs):
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in small_jpegs[:2]]
    files += [("files", ("notes.txt", b"hello", "text/plain")),
              ("files", ("empty.jpeg", b"", "image/jpeg")),
              ("files", (ORIGINAL.name, ORIGINAL.read_bytes(), "image/jpeg"))]
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["filename"] for x in results] == [f[1][0] for f in files]
    assert [x["status"] for x in results] == [200, 200, 415, 422, 200]
    assert "notes.txt" in results[2]["error"] and "empty" in results[3]["error"]
    for x, path in zip([results[0], results[1], results[4]], [*small_jpegs[:2], ORIGINAL]):
        assert abs(x["probability"] - predictor.predict([str(path)])[0].probability) < 1e-5


# --- a three-class (NORMAL / BACTERIAL / VIRAL) model -------------------------------------

@pytest.fixture(scope="module")
def etiology_client(etiology_run):
    with TestClient(create_app(Settings(model=str(etiology_run.dir)))) as c:
        yield c


def test_three_class_model_serves_class_probabilities_and_etiology(etiology_client,
                                                                   etiology_run, small_data):
    paths = [sorted((small_data / "test" / label).glob("*.jpeg"))[0]
             for label in ("PNEUMONIA", "NORMAL")]
    expected = load_torch(etiology_run.dir).predict([str(p) for p in paths])
    assert etiology_client.get("/v1/model").json()["labels"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    batch = etiology_client.post("/v1/predict/batch", files=[
        ("files", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]).json()["results"]
    for path, e, b in zip(paths, expected, batch):
        body = upload(etiology_client, path.name, path.read_bytes()).json()
        for got in (body, b):
            assert list(got["class_probabilities"]) == ["NORMAL", "BACTERIAL", "VIRAL"]
            assert got["class_probabilities"] == pytest.approx(e.class_probabilities, abs=1e-6)
            assert got["probability"] == pytest.approx(e.probability, abs=1e-6)
            # the same label and etiology as predict (a tiny run's OOD gate may withhold both)
            assert got["label"] == e.label in ("NORMAL", "PNEUMONIA", None)
            assert got["etiology"] == e.etiology
            assert (e.etiology in ("BACTERIAL", "VIRAL")) == (e.label == "PNEUMONIA")


def test_three_class_model_heatmap_and_page(etiology_client, etiology_run, small_data):
    import base64

    import numpy as np

    from pneumoscan.data.decode import load_gray
    from pneumoscan.explain.cam import heatmap_rgba
    from pneumoscan.explain.explainer import Explainer

    path = sorted((small_data / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    r = upload(etiology_client, path.name, path.read_bytes(), explain="true")
    assert r.status_code == 200, r.text
    overlay = Image.open(io.BytesIO(base64.b64decode(r.json()["heatmap_png"])))
    assert overlay.mode == "RGBA" and overlay.size == (64, 64)  # the model's input geometry
    # the map of the pneumonia decision, as `explain` computes it for the same model
    explainer = Explainer.from_checkpoint(etiology_run.dir)
    image = load_gray(str(path), 64, explainer.ckpt.preprocessing.interpolation)
    expected = heatmap_rgba(explainer.maps(image[None])[0])
    assert np.abs(np.asarray(overlay).astype(int) - expected).max() <= 1
    assert 'id="etiology-line" hidden' in etiology_client.get("/").text  # shown by app.js
    assert "r.etiology" in etiology_client.get("/static/app.js").text


# --- bad input ----------------------------------------------------------------------------

def test_413_when_content_length_declares_too_much(client):
    r = upload(client, "big.jpeg", b"\xff\xd8\xff" + bytes(LIMIT + 10))
    assert r.status_code == 413 and "MB" in r.json()["detail"]


def test_413_for_a_chunked_body_without_length(client):
    boundary = "xxboundaryxx"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.jpeg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield head
        for _ in range(40):
            yield bytes(64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post("/v1/predict", content=body(),
                    headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413


def test_413_stops_reading_the_body_early(client):
    """At the ASGI level: a declared-too-large body is never read; an undeclared one is read
    only up to the limit, not to its end."""
    chunk, n_chunks = 256 * 1024, 40  # 10 MB offered against a 1 MB limit
    boundary = b"b0undary"

    async def call(headers):
        reads, sent = 0, []

        async def receive():
            nonlocal reads
            reads += 1
            if reads == 1:
                return {"type": "http.request", "more_body": True,
                        "body": b"--" + boundary + b"\r\nContent-Disposition: form-data; "
                                b"name=\"file\"; filename=\"x.jpeg\"\r\n\r\n"}
            return {"type": "http.request", "body": bytes(chunk),
                    "more_body": reads <= n_chunks}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path":
                 b"/v1/predict", "query_string": b"", "root_path": "", "scheme": "http",
                 "http_version": "1.1", "server": ("127.0.0.1", 80), "client": ("t", 1),
                 "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary),
                             *headers]}
        await client.app(scope, receive, send)
        return reads, sent[0]["status"]

    reads, status = anyio.run(call, [(b"content-length", str(chunk * n_chunks).encode())])
    assert (reads, status) == (0, 413)
    reads, status = anyio.run(call, [])
    assert status == 413 and reads <= LIMIT // chunk + 2 < n_chunks


@pytest.mark.parametrize("name,data,ctype", [
    ("notes.txt", b"just some text", "text/plain"),
    ("fake.jpeg", b"GIF89a" + bytes(100), "image/jpeg"),  # a GIF named and declared as JPEG
])
def test_415_for_unsupported_types(client, name, data, ctype):
    r = upload(client, name, data, ctype)
    assert r.status_code == 415 and name in r.json()["detail"]


def test_dicom_upload_scores_as_its_jpeg_source(client, tmp_path, data_dir):
    from .test_dicom import _dataset, _gray, _write

    assert "application/dicom" in client.get("/v1/model").json()["accepts"]
    junk = upload(client, "scan.dcm", bytes(128) + b"DICM" + bytes(64), "application/dicom")
    assert junk.status_code == 422  # DICOM, but it holds no image
    jpeg = sorted((data_dir / "test" / "PNEUMONIA").iterdir())[0]
    pixels = _gray(jpeg)
    dcm = _write(_dataset(pixels.shape), pixels, tmp_path / "scan.dcm")
    from_dicom = upload(client, "scan.dcm", dcm.read_bytes(), "application/dicom")
    from_jpeg = upload(client, "a.jpeg", jpeg.read_bytes())
    assert from_dicom.status_code == 200
    assert abs(from_dicom.json()["probability"] - from_jpeg.json()["probability"]) < 1e-6
    assert "Doe" not in from_dicom.text and "SECRET" not in from_dicom.text  # no patient tags

def test_415_when_the_body_is_not_multipart(client):
    r = client.post("/v1/predict", json={"file": "x"})
    assert r.status_code == 415


def test_422_for_empty_truncated_and_missing_files(client):
    r = upload(client, "empty.jpeg", b"")
    assert r.status_code == 422 and "empty.jpeg: empty file" in r.json()["detail"]
    r = upload(client, "cut.jpeg", ORIGINAL.read_bytes()[:4000])
    assert r.status_code == 422 and r.json()["detail"].startswith("cut.jpeg: cannot decode")
    r = client.post("/v1/predict", files={"other": ("a.jpeg", b"x", "image/jpeg")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]


def test_422_for_a_decompression_bomb_from_its_header(client):
    r = upload(client, "bomb.png", png_header_only(10_000, 6_000), "image/png")
    assert r.status_code == 422  # 60 Mpx: over this app's 50 Mpx limit
    assert "10000x6000" in r.json()["detail"] and "bomb.png" in r.json()["detail"]
    r = upload(client, "huge.png", png_header_only(20_000, 20_000), "image/png")
    assert r.status_code == 422 and "huge.png: image too large" in r.json()["detail"]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]),
       tail=st.binary(max_size=2000))
def test_never_a_500_for_a_bad_file(client, prefix, tail):
    r = upload(client, "fuzz.jpeg", prefix + tail)
    assert r.status_code in (200, 415, 422), r.text


# --- a real server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(log) as (url, proc):
        yield url, proc, log


def test_real_server_matches_the_cli(live):
    url, _, log = live
    with ORIGINAL.open("rb") as f:
        r = httpx.post(f"{url}/v1/predict", files={"file": (ORIGINAL.name, f, "image/jpeg")},
                       timeout=30)
    assert r.status_code == 200
    cli = predict_cli_json(str(ORIGINAL))["predictions"][0]  # one process start: ~10 s
    assert abs(r.json()["probability"] - cli["probability"]) < 1e-6
    assert r.json()["label"] == cli["label"] in ("NORMAL", "PNEUMONIA")  # the model's answer
    assert len(r.headers["x-request-id"]) == 12
    text = log.read_text()
    assert f"request {r.headers['x-request-id']} POST /v1/predict" in text
    assert "status=200" in text and ORIGINAL.name not in text  # no file names in the log


def test_healthz_stays_responsive_during_a_slow_batch(live):
    url = live[0]
    originals = sorted(EXAMPLES.rglob("*.jpeg"))
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in originals * 3]
    done = {}

    def slow_batch():
        t = time.perf_counter()
        done["status"] = httpx.post(f"{url}/v1/predict/batch", files=files,
                                    timeout=120).status_code
        done["seconds"] = time.perf_counter() - t

    batch = threading.Thread(target=slow_batch)
    batch.start()
    health = []
    with httpx.Client(timeout=30) as c:
        while batch.is_alive():
            t = time.perf_counter()
            ok = c.get(f"{url}/healthz").status_code == 200
            health.append((ok, time.perf_counter() - t, batch.is_alive()))
            time.sleep(0.05)
    batch.join()
    assert done["status"] == 200
    during = [h for h in health if h[2]]  # answered while the batch was still running
    assert len(during) >= 3 and all(ok for ok, _, _ in during)
    assert max(s for _, s, _ in during) < done["seconds"] / 4


def test_small_load_mixed_valid_and_invalid(live, predictor, small_jpegs):
    url = live[0]
    valid = {p.name: p.read_bytes() for p in [*small_jpegs, ORIGINAL, ORIGINAL_NORMAL]}
    expected = {p.name: predictor.predict([str(p)])[0].probability
                for p in [*small_jpegs, ORIGINAL, ORIGINAL_NORMAL]}
    invalid = {"notes.txt": (b"hello", 415), "empty.jpeg": (b"", 422),
               "cut.jpeg": (ORIGINAL.read_bytes()[:3000], 422)}
    jobs = [(n, d, 200) for n, d in valid.items()] + [(n, d, s) for n, (d, s) in invalid.items()]
    jobs = (jobs * 6)[:60]

    def one(job):
        name, data, _ = job
        r = c.post(f"{url}/v1/predict", files={"file": (name, io.BytesIO(data), "image/jpeg")})
        return r.status_code, r.json()

    with httpx.Client(timeout=60) as c, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, jobs))
    assert not [s for s, _ in answers if s >= 500]
    for (name, _, status), (got, body) in zip(jobs, answers):
        assert got == status, (name, body)
        if status == 200:
            assert abs(body["probability"] - expected[name]) < 1e-6


# --- micro-batching -----------------------------------------------------------------------

def test_micro_batcher_groups_concurrent_callers_and_keeps_their_results_apart():
    import numpy as np

    from pneumoscan.serve.batcher import MicroBatcher

    sizes = []

    def first_pixel(images):
        sizes.append(len(images))
        time.sleep(0.05)  # busy long enough for the other callers to queue up
        return images[:, 0, 0].astype(np.float64)

    async def main():
        batcher = MicroBatcher(first_pixel, max_batch=4)
        try:
            calls = [np.full((n, 2, 2), i, np.uint8) for i, n in enumerate([1, 1, 2, 1, 3])]
            return calls, await asyncio.gather(*(batcher.score(c) for c in calls))
        finally:
            batcher.close()

    calls, results = anyio.run(main)
    for c, r in zip(calls, results):
        assert r.tolist() == [float(c[0, 0, 0])] * len(c)
    assert sum(sizes) == 8 and max(sizes) <= 4 and len(sizes) < 5


def test_micro_batcher_hands_an_error_to_every_caller():
    import numpy as np

    from pneumoscan.serve.batcher import MicroBatcher

    def broken(images):
        raise RuntimeError("model failed")

    async def main():
        batcher = MicroBatcher(broken)
        try:
            return await asyncio.gather(*(batcher.score(np.zeros((1, 2, 2), np.uint8))
                                          for _ in range(3)), return_exceptions=True)
        finally:
            batcher.close()

    assert [str(e) for e in anyio.run(main)] == ["model failed"] * 3


def test_default_serves_the_shipped_onnx_graph_with_heatmaps(small_jpegs):
    """With no runtime given the shipped model is served from its ONNX graph (no torch model,
    Grad-CAM from the graph's features), within 1e-5 of torch."""
    torch_reference = load_torch()
    with TestClient(create_app(Settings())) as c:
        assert c.get("/v1/model").json()["runtime"] == "onnxruntime"
        for path in (small_jpegs[0], ORIGINAL):
            body = upload(c, path.name, path.read_bytes(), explain="true").json()
            expected = torch_reference.predict([str(path)])[0]
            assert abs(body["probability"] - expected.probability) < 1e-5
            assert body["label"] == expected.label
            assert body["ood"]["score"] == pytest.approx(expected.ood.score, rel=1e-5)
            assert body["heatmap_png"]


def test_onnx_runtime_serves_the_checked_export(tiny_run, small_jpegs, tmp_path, monkeypatch):
    """A run without model.onnx: 'onnx' needs the export `pneumoscan predict` checked,
    'auto' falls back to torch until then."""
    from pneumoscan.core.errors import ExportError
    from pneumoscan.inference.runtime import make_predictor
    from pneumoscan.serve.app import load_predictor

    monkeypatch.setenv("PNEUMOSCAN_CACHE", str(tmp_path / "cache"))
    run = str(tiny_run.dir)
    with pytest.raises(ExportError, match="no readable input image"):
        load_predictor(Settings(model=run, runtime="onnx"))  # nothing exported and checked yet
    with TestClient(create_app(Settings(model=run, runtime="auto"))) as c:  # falls back
        assert c.get("/v1/model").json()["runtime"] == "torch"
    onnx = make_predictor(run, "onnx", [str(p) for p in small_jpegs])  # exports, checks
    reference = load_torch(run)
    with TestClient(create_app(Settings(model=run, runtime="onnx"))) as c:
        assert c.get("/v1/model").json()["runtime"] == "onnxruntime"
        for path in (small_jpegs[0], small_jpegs[-1], ORIGINAL):
            body = upload(c, path.name, path.read_bytes(), explain="true").json()
            expected = onnx.predict([str(path)])[0]
            assert abs(body["probability"] - expected.probability) < 1e-6
            assert body["label"] == expected.label
            assert abs(body["probability"] - reference.predict([str(path)])[0].probability) < 1e-3
            assert body["heatmap_png"]  # Grad-CAM from the graph's features
