"""Issue #18, items 1, 2, 3 and 9: hostile files, decompression bombs, odd folder entries and
a corrupted decoded-image cache. Every file is built on the fly from a real X-ray; every bad
one must come back as its own error naming it and the problem (a 422 in the server, a row in
`predict`, a skipped file in `train`), never as a crash of the batch, request or run."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from pneumoscan import cli
from pneumoscan.core.config import load_config
from pneumoscan.data import cache, scan
from pneumoscan.data.decode import ImageError, load_gray
from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.serve.app import Settings, create_app
from pneumoscan.training.train import fit

from .hostile_inputs import (
    deflated_bomb,
    dicom_bytes,
    jpeg_declaring,
    nested_sequences,
)
from .test_dicom import _dataset

SCORED = "scored"


def build_hostile(folder: Path, source: Path) -> dict[str, tuple[str, str]]:
    """Write each hostile case into `folder`; name -> (path, SCORED or a regex of its error)."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}

    def put(name, payload, expect):
        (folder / name).write_bytes(payload)
        cases[name] = (str(folder / name), expect)

    # BitsAllocated 1 with 8 bits of data per pixel: pydicom returns an (8, 64, 64) array,
    # on which PIL raised TypeError (HTTP 500, no CSV rows, train aborted).
    ds = _dataset((64, 64))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.PixelData = bytes(64 * 64)
    put("bits1.dcm", dicom_bytes(ds), r"bits1\.dcm: unexpected DICOM pixel array")
    # 50,000 nested sequences before the pixel data: RecursionError in pydicom.
    ds = _dataset((64, 64))
    ds.PixelData = bytes(64 * 64)
    raw = dicom_bytes(ds)
    at = raw.index(b"\xe0\x7f\x10\x00")
    put("nested.dcm", raw[:at] + nested_sequences(50_000) + raw[at:],
        r"nested\.dcm: cannot decode: its structure is nested too deeply")
    # Deflated: a 64x64 header over 300 MB of zeros (300 KB on disk); pydicom inflated all
    # of it before anything was checked.
    put("deflated-lying.dcm", deflated_bomb(64, 64, 300 * 2**20),
        r"deflated-lying\.dcm: deflated DICOM inflates to more than 16 MiB")
    # Deflated, 10,000 x 10,001 declared: refused from the header after inflating 4 MiB.
    put("deflated-huge.dcm", deflated_bomb(10_001, 10_000, 2 * 10_001 * 10_000),
        r"deflated-huge\.dcm: image too large \(10000x10001 pixels, limit 100000000\)")
    # Encapsulated JPEG whose DICOM header says 64x64 but whose JPEG says 20000x15000: it
    # was decoded (+1.45 GB) before any check.
    ds = _dataset((64, 64), syntax=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([jpeg_declaring(20_000, 15_000, source)])
    ds["PixelData"].VR = "OB"
    put("jpeg-bomb.dcm", dicom_bytes(ds),
        r"jpeg-bomb\.dcm: image too large \(the compressed image is 20000x15000 pixels")
    ds = _dataset((64, 64), syntax=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([jpeg_declaring(640, 480, source)])
    ds["PixelData"].VR = "OB"
    put("jpeg-lying.dcm", dicom_bytes(ds), r"jpeg-lying\.dcm: the compressed image is "
                                            r"640x480 pixels but the DICOM header says 64x64")
    return cases


@pytest.fixture(scope="module")
def source(data_dir) -> Path:
    return sorted((data_dir / "test" / "NORMAL").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def hostile(source, tmp_path_factory) -> dict[str, tuple[str, str]]:
    return build_hostile(tmp_path_factory.mktemp("hostile") / "in", source)


def test_each_hostile_file_is_its_own_error(hostile):
    for path, expect in hostile.values():
        with pytest.raises(ImageError) as e:
            load_gray(path, 64)
        assert re.search(expect, str(e.value)), str(e.value)


def test_predict_on_a_folder_prints_a_row_per_file(hostile, source, capsys):
    folder = Path(next(iter(hostile.values()))[0]).parent
    shutil.copy(source, folder / "good.jpeg")
    try:
        for fmt in ("csv", "json"):
            assert cli.main(["predict", str(folder), "--format", fmt]) == cli.SOME_FAILED
            out, err = capsys.readouterr()
            assert "Traceback" not in err
            if fmt == "json":
                rows = json.loads(out)["predictions"]
            else:
                import csv

                rows = list(csv.DictReader(io.StringIO(out)))
            by_name = {Path(r["path"]).name: r for r in rows}
            assert set(by_name) == {*hostile, "good.jpeg"}
            assert by_name["good.jpeg"]["label"] in ("NORMAL", "PNEUMONIA")
            for name, (_, expect) in hostile.items():
                assert re.search(expect, by_name[name]["error"]), by_name[name]
    finally:
        (folder / "good.jpeg").unlink()


def test_server_answers_each_with_422_and_the_batch_with_one_result_each(hostile, source):
    with TestClient(create_app(Settings())) as c:
        for name, (path, expect) in hostile.items():
            r = c.post("/v1/predict", files={"file": (name, Path(path).read_bytes())})
            assert r.status_code == 422, (name, r.status_code, r.text)
            assert re.search(expect.replace("limit 100000000", "limit 36000000"),
                             r.json()["detail"]), r.json()
        files = [("files", ("good.jpeg", source.read_bytes()))] + [
            ("files", (name, Path(path).read_bytes())) for name, (path, _) in hostile.items()]
        r = c.post("/v1/predict/batch", files=files)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results[0]["status"] == 200 and results[0]["label"] in ("NORMAL", "PNEUMONIA")
        assert [x["status"] for x in results[1:]] == [422] * len(hostile)
        for x, name in zip(results[1:], hostile):
            assert x["error"].startswith(f"{name}: "), x


def test_server_pixel_limit_is_sized_for_x_rays(source):
    """36 Mpx by default (a setting, `serve --max-megapixels`): a 16-bit PNG of 7,000 x 7,000
    is refused from its header; one of 2,000 x 2,000 is scored."""
    assert Settings().max_pixels == 36_000_000
    from .test_bad_inputs import _png_header_only

    with TestClient(create_app(Settings())) as c:
        r = c.post("/v1/predict", files={"file": ("big.png", _png_header_only(7000, 7000))})
        assert r.status_code == 422
        assert r.json()["detail"] == "big.png: image too large (7000x7000 pixels, limit 36000000)"
        a = np.zeros((2000, 2000), np.uint16)
        a[::7, ::3] = 65535
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        r = c.post("/v1/predict", files={"file": ("ok16.png", buf.getvalue())})
        assert r.status_code == 200, r.text


def test_training_folder_skips_and_reports_each(hostile, small_data, tmp_path):
    root = tmp_path / "chest_xray"
    shutil.copytree(small_data, root)
    for path, _ in hostile.values():
        shutil.copy(path, root / "train" / "PNEUMONIA")
    cfg = load_config(None, ["image_size=48", "epochs=1", "batch_size=8", "val_fraction=0.2",
                             "model=custom-cnn", "pretrained=false", "precision=32-true"])
    run = fit(cfg, root, tmp_path / "run")
    skipped = (run.dir / "skipped.txt").read_text()
    for name in hostile:
        assert f"{name}: " in skipped, name
    assert "Traceback" not in skipped


# --- bombs: the real size is checked before decoding, and what is decoded stays lean


def test_valid_compressed_dicom_still_decodes(source, tmp_path):
    """The frame-header check reads every codestream pydicom decodes: RLE, JPEG-LS and
    JPEG 2000 files made from a real X-ray decode to the same picture."""
    from pydicom.uid import JPEG2000Lossless

    with Image.open(source) as img:
        g = np.asarray(img.convert("L").resize((256, 200)))
    plain = load_gray(io.BytesIO(dicom_bytes(_with_pixels(_dataset(g.shape), g))), 64)
    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds = _dataset(g.shape)
        ds.compress(syntax, g)
        np.testing.assert_array_equal(load_gray(io.BytesIO(dicom_bytes(ds)), 64), plain)


def _with_pixels(ds, a):
    ds.PixelData = a.tobytes()
    return ds


def test_deflated_dicom_within_bounds_decodes_as_its_plain_twin(source):
    with Image.open(source) as img:
        g = np.asarray(img.convert("L").resize((300, 240))).astype(np.uint16) * 16
    plain = _with_pixels(_dataset(g.shape, bits=12), g)
    deflated = _with_pixels(_dataset(g.shape, bits=12, syntax=DeflatedExplicitVRLittleEndian), g)
    np.testing.assert_array_equal(load_gray(io.BytesIO(dicom_bytes(deflated)), 64),
                                  load_gray(io.BytesIO(dicom_bytes(plain)), 64))


def test_display_table_equals_the_per_pixel_path():
    """16-bit images are mapped through a table over their value range: the same numbers as
    the float path on every pixel (signed, unsigned, rescaled, windowed, MONOCHROME1)."""
    from pneumoscan.data import dicom_pixels
    from pneumoscan.data.decode import _stretch16

    rng = np.random.default_rng(0)
    for signed, extra in [(False, {}), (True, {}), (False, {"RescaleSlope": 0.5,
                                                            "RescaleIntercept": -100}),
                          (False, {"WindowCenter": 900, "WindowWidth": 700}),
                          (True, {"RescaleSlope": 2, "RescaleIntercept": 30})]:
        ds = _dataset((400, 300), bits=12)
        ds.PixelRepresentation = int(signed)
        for k, v in extra.items():
            setattr(ds, k, v)
        a = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, (400, 300))
        a = a.astype(np.int16 if signed else np.uint16)
        for photometric in ("MONOCHROME2", "MONOCHROME1"):
            np.testing.assert_array_equal(
                dicom_pixels.display(a, ds, photometric),
                dicom_pixels._display_values(a, ds, photometric, None))
    a = rng.integers(100, 60_000, (500, 400)).astype(np.uint16)
    f = a.astype(np.float32)
    lo, hi = float(f.min()), float(f.max())
    np.testing.assert_array_equal(np.asarray(_stretch16(Image.fromarray(a))),
                                  np.round((f - lo) * (255.0 / (hi - lo))).astype(np.uint8))


# --- folder scans: every entry that is not an image is named, none silently dropped


def _odd_folder(root: Path, source: Path) -> Path:
    folder = root / "odd"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(source, folder / "sub" / "good.jpeg")
    os.symlink("self-loop.jpeg", folder / "self-loop.jpeg")
    os.symlink("missing.jpeg", folder / "broken.jpeg")
    os.mkfifo(folder / "sub" / "pipe.jpeg")
    os.symlink("/dev/null", folder / "device.jpeg")
    return folder


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_folder_scan_names_loops_fifos_devices_and_broken_links(source, tmp_path, capsys):
    folder = _odd_folder(tmp_path, source)
    found = {Path(p).name for p in expand_inputs([str(folder)])}
    assert found == {"good.jpeg", "self-loop.jpeg", "broken.jpeg", "pipe.jpeg", "device.jpeg"}
    assert cli.main(["predict", str(folder), "--format", "csv"]) == cli.SOME_FAILED
    err = capsys.readouterr().err
    assert re.search(r"self-loop\.jpeg: symbolic link loop", err)
    assert re.search(r"broken\.jpeg: file not found", err)
    assert re.search(r"pipe\.jpeg: not a regular file \(a FIFO, socket or device\)", err)
    assert re.search(r"device\.jpeg: not a regular file", err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_training_scan_keeps_odd_entries_for_the_skipped_report(source, small_data, tmp_path):
    root = tmp_path / "chest_xray"
    shutil.copytree(small_data, root)
    normal = root / "train" / "NORMAL"
    os.symlink("loop.jpeg", normal / "loop.jpeg")
    os.mkfifo(normal / "pipe.jpeg")
    names = {Path(r.path).name for r in scan(root)}
    assert {"loop.jpeg", "pipe.jpeg"} <= names  # scan returned: the FIFO was not opened


_SCAN = """
import json, sys
from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.data.decode import load_gray, ImageError
found = expand_inputs([sys.argv[1]])
errors = {}
for p in found:
    try:
        load_gray(p, 32)
    except ImageError as e:
        errors[p] = str(e)
print(json.dumps({"found": found, "errors": errors}))
"""


def test_unreadable_subfolder_is_named(source, tmp_path):
    """chmod 000 does not stop root: as root, the scan runs without the capabilities that
    bypass file permissions (setpriv, util-linux)."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: chmod 000 would not stop reading")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    (tmp_path / "open").mkdir()
    shutil.copy(source, tmp_path / "open" / "good.jpeg")
    locked = tmp_path / "locked"
    locked.mkdir()
    shutil.copy(source, locked / "hidden.jpeg")
    locked.chmod(0)
    try:
        import pneumoscan  # the child imports the same tree as this test

        env = {**os.environ, "PYTHONPATH": str(Path(pneumoscan.__file__).parents[1])}
        out = subprocess.run([*prefix, sys.executable, "-c", _SCAN, str(tmp_path)], env=env,
                             capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o755)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["found"] == [str(locked), str(tmp_path / "open" / "good.jpeg")]
    assert result["errors"] == {str(locked): f"{locked}: unreadable folder (permission "
                                             f"denied), skipped"}


# --- the decoded-image cache: verified before reuse, rebuilt when it does not match


@pytest.fixture()
def built_cache(small_data, tmp_path):
    recs = [r for r in scan(small_data) if r.split == "train"]
    images, targets, _ = cache.decode(recs, 48, "bilinear", "disk", tmp_path / "c")
    [data] = (tmp_path / "c").glob("*.u8")
    return recs, np.array(images), targets, data, data.with_suffix(".json")


def _damage_half(data: Path):
    with open(data, "r+b") as f:
        f.write(b"\x7f" * (data.stat().st_size // 2))


def _cut_index(meta: Path):
    m = json.loads(meta.read_text())
    m["ok"] = m["ok"][:10]
    meta.write_text(json.dumps(m))


@pytest.mark.parametrize("damage, problem", [
    (_damage_half, "its checksum does not match"),
    (_cut_index, "its index does not list each image once"),
    (lambda d: d.write_bytes(d.read_bytes()[:1000]), "bytes, but its index lists"),
    (lambda d: d.with_suffix(".json").write_text("{not json"), "unreadable index"),
    (lambda d: d.with_suffix(".json").write_text("[]"), "unreadable index"),
], ids=["half-overwritten", "index-cut-short", "truncated", "corrupt-json", "wrong-json"])
def test_damaged_cache_is_rebuilt_with_a_warning(built_cache, tmp_path, damage, problem,
                                                 caplog):
    recs, images, targets, data, meta = built_cache
    damage(meta if damage is _cut_index else data)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data.cache"):
        again, targets_again, _ = cache.decode(recs, 48, "bilinear", "disk", tmp_path / "c")
    np.testing.assert_array_equal(np.array(again), images)
    np.testing.assert_array_equal(targets_again, targets)
    assert problem in caplog.text and "rebuilding it" in caplog.text


def test_intact_cache_is_reused_without_rebuilding(built_cache, tmp_path, caplog):
    recs, images, _, data, _ = built_cache
    stamp = data.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="pneumoscan.data.cache"):
        again, _, _ = cache.decode(recs, 48, "bilinear", "disk", tmp_path / "c")
    assert data.stat().st_mtime_ns == stamp and "reusing" in caplog.text
    np.testing.assert_array_equal(np.array(again), images)
