"""`pneumoscan export --web`: the in-browser site scores real X-rays in Debian chromium as
`pneumoscan predict` does, runs a worklist (folder drop, triage order, CSV, a bad file, a
non-X-ray), and never requests anything outside its own origin. A subset of each image set
here; benchmarks/web_screening.py runs the full sets and prints the figures."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.data.decode import load_gray
from pneumoscan.inference.runtime import make_predictor
from pneumoscan.web.build import check_vendor

from .conftest import EXAMPLES
from .web_harness import (
    INPUTS_JS,
    SCORE_JS,
    open_site,
    python_predictions,
    serve_root,
    static_server,
)

TOLERANCE = 0.01  # max |probability difference| to `pneumoscan predict` (issue #17)


@pytest.fixture(scope="module")
def site(tmp_path_factory, data_dir):
    from pneumoscan.cli import main

    out = tmp_path_factory.mktemp("web") / "site"
    assert main(["export", "--web", str(out), "--data", str(data_dir)]) == 0
    return out


@pytest.fixture(scope="module")
def served(site, data_dir, originals_dir, tmp_path_factory):
    """(origin, the folder it serves: the site and links to the image folders)."""
    root = serve_root(tmp_path_factory.mktemp("root"), site, examples=EXAMPLES,
                      data=data_dir, originals=originals_dir)
    with static_server(root) as url:
        yield url, root


@pytest.fixture(scope="module")
def origin(served):
    return served[0]


@pytest.fixture
def page(browser, origin):
    page, requests = open_site(browser, origin)
    yield page
    foreign = [u for u in requests if not u.startswith(origin + "/") and not u.startswith("blob:")]
    assert not foreign, f"requests outside the site's origin: {foreign}"
    page.close()


# The runtime's wasm must come as application/wasm: WebAssembly.instantiateStreaming compiles
# it while it downloads (otherwise ONNX Runtime falls back to a slower ArrayBuffer compile).
WASM_TYPE_JS = """async () => (await fetch('ort/ort-wasm-simd-threaded.wasm', {method: 'HEAD'}))
    .headers.get('content-type')"""


def _subset(data: Path) -> dict[str, list[Path]]:
    """A few images of each set: every example, originals and test copies of both labels."""
    originals = data.parent / "originals" / "test"
    pick = {"examples": sorted(EXAMPLES.rglob("*.jpeg")),
            "originals": [], "test": []}
    for label in ("NORMAL", "PNEUMONIA"):
        pick["originals"] += sorted((originals / label).glob("*.jpeg"))[::9][:4]
        pick["test"] += sorted((data / "test" / label).glob("*.jpeg"))[::25][:10]
    return pick


def _url(path: Path, data_dir: Path, originals_dir: Path) -> str:
    for prefix, folder in (("examples", EXAMPLES), ("originals", originals_dir),
                           ("data", data_dir)):
        if path.is_relative_to(folder):
            return f"/{prefix}/{path.relative_to(folder).as_posix()}"
    raise ValueError(path)


def test_static_host_serves_the_wasm_for_streaming_compilation(page):
    assert page.evaluate(WASM_TYPE_JS) == "application/wasm"  # python -m http.server


def test_vendored_runtime_is_the_pinned_npm_release_with_its_licence(site):
    meta = check_vendor()  # every file's sha256 as pinned
    assert meta["version"] == "1.30.0" and meta["integrity"].startswith("sha512-")
    assert "MIT License" in (site / "ort" / "LICENSE").read_text()
    shipped = {p.name for p in (site / "ort").iterdir()}
    assert shipped == {*meta["files"], "LICENSE", "VERSION.json"}
    text = (site / "index.html").read_text() + "".join(
        p.read_text() for p in (site / "app").glob("*.js"))
    assert "http://" not in text and "https://" not in text  # no CDN, nothing remote


def test_browser_gives_the_model_the_pixels_python_gives_it(page, data_dir, originals_dir):
    """Decoding + draft + Pillow's resize in JS: byte for byte, the test copies (224 px) and
    the full-size originals (large gray JPEGs: jpeg.js's reduced IDCT = libjpeg's draft)."""
    pick = _subset(data_dir)
    files = pick["test"][:6] + pick["examples"][:6] + pick["originals"][:4]
    got = page.evaluate(INPUTS_JS, [_url(f, data_dir, originals_dir) for f in files])
    for f, b64 in zip(files, got):
        browser = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(224, 224)
        assert np.array_equal(browser, load_gray(f, 224)), f


def test_jpegs_jpeg_js_does_not_read_go_to_the_browsers_decoder(browser, served, data_dir):
    """A full-size X-ray stored with restart markers (jpeg.js reads it: exact), progressive
    or in colour (the browser's decoder + a close reduction: within a grey level or so)."""
    from PIL import Image

    origin, root = served
    folder = root / "variants"
    folder.mkdir()
    with Image.open(sorted((data_dir.parent / "originals" / "test" / "NORMAL")
                           .glob("*.jpeg"))[0]) as img:
        assert min(img.size) >= 896  # drafted at 1/2 or less
        img.save(folder / "restart.jpeg", quality=90, restart_marker_blocks=7)
        img.save(folder / "progressive.jpeg", quality=90, progressive=True)
        img.convert("RGB").save(folder / "colour.jpeg", quality=90)
    page, _ = open_site(browser, origin)
    files = sorted(folder.iterdir())
    got = page.evaluate(INPUTS_JS, [f"/variants/{f.name}" for f in files])
    page.close()
    for f, b64 in zip(files, got):
        browser_input = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(224, 224)
        diff = np.abs(browser_input.astype(int) - load_gray(f, 224))
        if f.name == "restart.jpeg":
            assert diff.max() == 0, f
        else:
            assert diff.mean() < 0.3 and diff.max() <= 12, (f, diff.mean(), diff.max())


def test_a_storage_round_trip_in_the_contract_is_applied_too(browser, served, site, data_dir,
                                                             originals_dir):
    """Preprocessing.storage_quality > 0 (a JPEG round trip after the resize): the browser's
    libjpeg encodes and decodes as Pillow's does, byte for byte, on the same 224 px input
    and after the draft of a full-size JPEG."""
    from PIL import Image

    origin, root = served
    q75 = root / "site-q75"
    shutil.copytree(site, q75)
    contract = json.loads((q75 / "model" / "contract.json").read_text())
    contract["preprocessing"]["storage_quality"] = 75
    (q75 / "model" / "contract.json").write_text(json.dumps(contract))
    (root / "pngs").mkdir()
    examples = _subset(data_dir)["examples"][:3]
    for i, f in enumerate(examples):  # Python's model inputs, stored losslessly
        Image.fromarray(load_gray(f, 224)).save(root / "pngs" / f"{i}.png")
    page, _ = open_site(browser, origin, path="site-q75")
    pngs = sorted((root / "pngs").glob("*.png"))
    got = page.evaluate(INPUTS_JS, [f"/pngs/{p.name}" for p in pngs]
                        + [_url(f, data_dir, originals_dir) for f in examples])
    page.close()
    for f, b64 in zip(pngs + examples, got):
        browser_input = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(224, 224)
        diff = np.abs(browser_input.astype(int) - load_gray(f, 224, storage_quality=75))
        assert diff.max() == 0, f


def test_a_smoothed_contract_scores_in_the_browser_as_in_python(browser, served, data_dir,
                                                                 originals_dir, tmp_path):
    """Preprocessing.smoothing lives inside the exported graph (a reflect pad and a Gaussian
    convolution): a site exported from a smoothed model scores as `pneumoscan predict` does
    with that model, and not as the unsmoothed one."""
    from pneumoscan.cli import main
    from pneumoscan.core.contract import default_model_dir

    origin, root = served
    model = tmp_path / "smoothed"
    shutil.copytree(default_model_dir(), model)
    meta = json.loads((model / "model.json").read_text())
    meta["preprocessing"]["smoothing"] = 2.0
    (model / "model.json").write_text(json.dumps(meta))
    (model / "model.onnx").unlink(missing_ok=True)  # the shipped graph is unsmoothed
    assert main(["export", "--web", str(root / "site-smoothed"), "--model", str(model),
                 "--data", str(data_dir)]) == 0
    files = _subset(data_dir)["examples"][:4] + _subset(data_dir)["originals"][:2]
    page, _ = open_site(browser, origin, path="site-smoothed")
    got = page.evaluate(SCORE_JS, [[_url(f, data_dir, originals_dir) for f in files], False])
    page.close()
    smoothed = python_predictions(files, "--model", str(model))
    plain = python_predictions(files)
    assert max(abs(b["probability"] - smoothed[str(f)]["probability"])
               for f, b in zip(files, got)) <= TOLERANCE
    assert max(abs(b["probability"] - plain[str(f)]["probability"])
               for f, b in zip(files, got)) > 5 * TOLERANCE


def test_scores_equal_pneumoscan_predict(page, data_dir, originals_dir):
    files = [f for group in _subset(data_dir).values() for f in group]
    got = page.evaluate(SCORE_JS, [[_url(f, data_dir, originals_dir) for f in files], False])
    ref = python_predictions(files)
    worst = 0.0
    for f, b in zip(files, got):
        r = ref[str(f)]
        assert "error" not in b, b
        worst = max(worst, abs(b["probability"] - r["probability"]))
        assert b["label"] == r["label"], (f, b["probability"], r["probability"])
        assert b["ood"]["flagged"] == r["ood"]["flagged"], f
        assert b["ood"]["score"] == pytest.approx(r["ood"]["score"], rel=0.05)
        assert b["class_probabilities"].keys() == r["class_probabilities"].keys()
        assert b["etiology"] == r["etiology"] is None
    print(f"max |dp| over {len(files)} images: {worst:.2e}")
    assert worst <= TOLERANCE
    # The fields of POST /v1/predict (serve/app.py), plus the CAM at feature resolution.
    keys = page.evaluate("""async (u) => { const r = await window.pneumoscan.score(
        await (await fetch(u)).blob()); return [Object.keys(r), Object.keys(r.model),
        Object.keys(r.ood)]; }""", _url(files[0], data_dir, originals_dir))
    assert set(keys[0]) == {"path", "probability", "label", "class_probabilities", "etiology",
                            "threshold", "model", "ood", "warnings", "error", "heatmap_png",
                            "elapsed_ms", "heatmap"}
    assert set(keys[1]) == {"name", "version", "checkpoint_sha256", "runtime"}
    assert set(keys[2]) == {"flagged", "score", "threshold"}


def test_browser_heatmap_is_the_python_grad_cam(page, data_dir, originals_dir):
    """Same input (a 224 px copy) -> the CAM from the features output equals captum's
    Grad-CAM of the torch model at the feature map's resolution."""
    from pneumoscan.explain.gradients import gradcam
    from pneumoscan.models import weights as checkpoint

    files = sorted((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    got = page.evaluate(SCORE_JS, [[_url(f, data_dir, originals_dir) for f in files], True])
    model, ckpt = checkpoint.load(None)
    ref = gradcam(model, ckpt, np.stack([load_gray(f, 224) for f in files]))
    for b, r in zip(got, ref):
        cam = np.array(b["heatmap"]["data"]).reshape(b["heatmap"]["height"], -1)
        assert cam.shape == r.shape and np.abs(cam - r).max() < 1e-3
        assert b["png"] > 1000  # explain=True also gives the overlay as a base64 PNG


@pytest.fixture
def batch_folder(tmp_path) -> Path:
    """Examples of both labels, a truncated JPEG and a photo of a cat (not an X-ray)."""
    from PIL import Image
    from skimage.data import chelsea

    folder = tmp_path / "batch"
    sub = folder / "ward-2"
    sub.mkdir(parents=True)
    for f in sorted(EXAMPLES.rglob("*.jpeg"))[::3]:
        shutil.copy2(f, (sub if "PNEUMONIA" in f.parts else folder) / f.name)
    xray = EXAMPLES / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"
    (folder / "broken.jpeg").write_bytes(xray.read_bytes()[:3000])
    Image.fromarray(chelsea()).save(folder / "cat.jpeg", quality=90)
    (folder / "notes.txt").write_text("not an image: skipped when a folder is dropped")
    return folder


def test_worklist_of_a_dropped_folder_in_triage_order_with_csv(page, batch_folder):
    images = sorted(p for p in batch_folder.rglob("*.jpeg"))
    # The model runs in the page's Web Worker (the page stays responsive during a batch).
    assert [w.url.rsplit("/", 2)[-2:] for w in page.workers] == [["app", "worker.js"]]
    page.set_input_files("#folder", str(batch_folder))
    page.wait_for_selector("#progress-line[data-state=done]", timeout=300_000)
    assert "Not for clinical use" in page.inner_text("#disclaimer")
    rows = page.eval_on_selector_all("#worklist tbody tr", """rows => rows.map(r => ({
        name: r.dataset.name, p: r.querySelector('[data-value]')?.dataset.value ?? null,
        cells: [...r.cells].map(c => c.textContent)}))""")
    assert len(rows) == len(images)  # notes.txt skipped
    n = len(images)
    assert page.inner_text("#progress-text") == f"{n} / {n} scored, 1 could not be read"
    scored = [float(r["p"]) for r in rows if r["p"] is not None]
    assert scored == sorted(scored, reverse=True) and len(scored) == len(images) - 1
    broken = rows[-1]
    assert broken["name"] == "batch/broken.jpeg" and "not a readable image" in broken["cells"][5]
    ref = python_predictions(images)
    by_name = {f"batch/{p.relative_to(batch_folder).as_posix()}": ref[str(p)] for p in images}
    assert by_name["batch/broken.jpeg"]["error"]  # Python refuses it too
    cat = next(r for r in rows if r["name"] == "batch/cat.jpeg")
    assert cat["cells"][4] == "OOD" and by_name["batch/cat.jpeg"]["ood"]["flagged"] is True
    assert cat["cells"][3] == "no label" and by_name["batch/cat.jpeg"]["label"] is None
    assert "out of distribution" in cat["cells"][5]
    for r in rows[:-1]:
        assert abs(float(r["p"]) - by_name[r["name"]]["probability"]) <= TOLERANCE
        assert r["cells"][3] == (by_name[r["name"]]["label"] or "no label")

    with page.expect_download() as download:
        page.click("#csv")
    table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [t["path"] for t in table] == [r["name"] for r in rows]
    assert [t["probability"] for t in table[:-1]] == [r["p"] for r in rows[:-1]]
    assert table[-1]["error"].startswith("batch/broken.jpeg:")
    cat_row = next(t for t in table if t["path"] == "batch/cat.jpeg")
    assert cat_row["ood_flagged"] == "true" and cat_row["label"] == ""

    page.click("#worklist tbody tr:nth-child(1)")  # the likeliest pneumonia
    page.wait_for_selector("#viewer:not([hidden])")
    assert page.get_attribute("#viewer", "data-name") == rows[0]["name"]
    painted = page.evaluate("""() => { const c = document.getElementById('view');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let colour = 0; for (let i = 0; i < d.length; i += 4)
          if (d[i] !== d[i + 1] || d[i + 1] !== d[i + 2]) colour++;
        return colour / (d.length / 4); }""")
    assert painted > 0.05  # the heatmap's colours over the gray X-ray


def test_serve_offers_the_same_page_with_a_switch(browser, site, tmp_path):
    """With a checked export cached (the `site` fixture made one), `pneumoscan serve` shows
    "on this computer" / "on the server" and serves the in-browser page under /local/."""
    from .serving import running_server

    with running_server(tmp_path / "server.log") as (url, _):
        page = browser.new_page()
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url)
        assert page.inner_text(".switch").split() == "on the server on this computer".split()
        page.wait_for_function("document.getElementById('mode-local').hasAttribute('href')"
                               " || document.getElementById('mode-local').title")
        assert not page.get_attribute("#mode-local", "title")
        page.click("#mode-local")
        page.wait_for_selector("body[data-ready=true]", timeout=120_000)
        assert page.url == f"{url}/local/" and page.is_visible("#mode-switch")
        assert page.evaluate(WASM_TYPE_JS) == "application/wasm"  # streaming compilation
        xray = EXAMPLES / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg"
        page.set_input_files("#files", str(xray))
        page.wait_for_selector("#progress-line[data-state=done]", timeout=60_000)
        # the label `pneumoscan predict` gives (which one depends on the shipped model)
        [expected] = make_predictor().predict([str(xray)])
        assert expected.label in ("NORMAL", "PNEUMONIA")
        assert page.inner_text("#worklist tbody tr td.label") == expected.label
        page.click("#mode-server")
        page.wait_for_url(f"{url}/")
    assert all(u.startswith(url) or u.startswith("blob:") for u in requests)


def test_files_dropped_on_the_page_are_scored(page):
    """A drop (a DataTransfer built in the page: what the OS hands over for dropped files)."""
    transfer = page.evaluate_handle("""async () => {
        const t = new DataTransfer();
        for (const [url, name] of [["/examples/NORMAL/NORMAL2-IM-1427-0001.jpeg", "a.jpeg"],
                                   ["/site/style.css", "b.jpeg"]]) {
          t.items.add(new File([await (await fetch(url)).blob()], name));
        }
        return t; }""")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#progress-line[data-state=done]", timeout=120_000)
    cells = page.eval_on_selector_all("#worklist tbody tr",
                                      "rs => rs.map(r => r.cells[3].textContent)")
    assert cells == ["NORMAL", "error"]
    assert "b.jpeg: not a readable image" in page.inner_text("#worklist tbody tr.failed")


def test_three_class_model_with_a_storage_round_trip(browser, tmp_path, data_dir,
                                                     originals_dir):
    """The shipped etiology model (3 classes, inputs stored as q75 JPEG after the resize):
    class probabilities, etiology and label as `pneumoscan predict --model etiology`."""
    from pneumoscan.cli import main

    site = tmp_path / "site"
    assert main(["export", "--web", str(site), "--model", "etiology",
                 "--data", str(data_dir)]) == 0
    contract = json.loads((site / "model" / "contract.json").read_text())
    assert contract["labels"] == ["NORMAL", "BACTERIAL", "VIRAL"]
    assert contract["preprocessing"]["storage_quality"] == 75
    pick = _subset(data_dir)
    files = pick["examples"][::4] + pick["originals"] + pick["test"][::5]
    root = serve_root(tmp_path / "root", site, examples=EXAMPLES, data=data_dir,
                      originals=originals_dir)
    with static_server(root) as origin:
        page, requests = open_site(browser, origin)
        got = page.evaluate(SCORE_JS, [[_url(f, data_dir, originals_dir) for f in files],
                                       True])
        page.close()
    assert all(u.startswith(origin) or u.startswith("blob:") for u in requests)
    ref = python_predictions(files, "--model", "etiology")
    worst = {}
    for f, b in zip(files, got):
        r = ref[str(f)]
        assert (b["label"], b["etiology"]) == (r["label"], r["etiology"]), f
        dp = max(abs(b["class_probabilities"][k] - v) for k, v in r["class_probabilities"].items())
        dp = max(dp, abs(b["probability"] - r["probability"]))
        kind = "copies" if f.is_relative_to(data_dir) else "originals"
        worst[kind] = max(worst.get(kind, 0.0), dp)
        # scaled by its peak; all 0 where no region argues for pneumonia (some normals)
        assert b["png"] > 1000 and max(b["heatmap"]["data"]) in (0.0, 1.0)
    print(f"etiology model, max |dp| over any class: {worst}")
    assert worst["copies"] <= TOLERANCE and worst["originals"] <= TOLERANCE
