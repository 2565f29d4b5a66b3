"""A catalogue of bad and unusual inputs, built on the fly from real images. Each goes through
predict (Predictor single and batch, the CLI) and a training folder: a bad file gets a clear
error naming it and the rest of the work goes on; a valid but unusual image is scored."""

import io
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pneumoscan import cli
from pneumoscan.core.config import load_config
from pneumoscan.data.decode import MAX_PIXELS, ImageError, load_gray
from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.inference.runtime import load_torch
from pneumoscan.training.train import fit

from .conftest import REPO

SCORED = "scored"
NON_UTF8 = b"caf\xe9-latin1.jpeg"  # a Latin-1 file name, not valid UTF-8


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data (a decompression bomb's
    header: decoding it would allocate width * height bytes)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def build_catalogue(folder, source) -> dict[str, tuple[str, str]]:
    """Write every case into `folder`; name -> (path, SCORED or a regex the error matches)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = source.read_bytes()
    with Image.open(source) as img:
        gray = img.convert("L").resize((256, 256))
    cases = {}

    def put(name, payload, expect):
        (folder / name).write_bytes(payload)
        cases[name] = (str(folder / name), expect)

    def save(name, img, expect=SCORED, **kw):
        img.save(folder / name, **kw)
        cases[name] = (str(folder / name), expect)

    put("empty.jpeg", b"", r"empty\.jpeg: empty file \(0 bytes\)")
    put("truncated.jpeg", raw[: len(raw) // 3], r"truncated\.jpeg: cannot decode image")
    put("text.jpeg", b"patient notes, not a picture\n" * 20,
        r"text\.jpeg: not a readable image")
    save("gray16.png", Image.fromarray(np.asarray(gray, np.uint16) * 257))
    alpha = gray.convert("RGBA")
    alpha.putalpha(200)
    save("alpha.png", alpha)
    save("cmyk.jpeg", gray.convert("CMYK"), format="JPEG")
    save("palette.png", gray.convert("P"))
    save("one-pixel.png", Image.new("L", (1, 1), 128), r"one-pixel\.png: image is 1x1 pixels")
    save("wide-4000x20.jpeg", gray.resize((4000, 20)))
    # 144 Mpx: over our 100 Mpx limit, under PIL's own guard (179 Mpx), which stops huge.png.
    put("bomb.png", _png_header_only(12_000, 12_000),
        r"bomb\.png: image too large \(12000x12000 pixels, limit 100000000\)")
    put("huge.png", _png_header_only(60_000, 60_000), r"huge\.png: image too large")
    (folder / "no-images").mkdir()
    (folder / "no-images" / "notes.txt").write_text("nothing to see")
    cases["no-images"] = (str(folder / "no-images"), r"no-images: folder holds no image files")
    os.symlink(folder / "loop-b.jpeg", folder / "loop-a.jpeg")
    os.symlink(folder / "loop-a.jpeg", folder / "loop-b.jpeg")
    cases["loop-a.jpeg"] = (str(folder / "loop-a.jpeg"), r"loop-a\.jpeg: symbolic link loop")
    odd = os.fsdecode(os.fsencode(folder) + b"/" + NON_UTF8)
    shutil.copyfile(source, odd)
    cases["non-utf8-name"] = (odd, SCORED)  # a valid image under an odd name is scored
    return cases


@pytest.fixture(scope="module")
def source(data_dir):
    return sorted((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def catalogue(source, tmp_path_factory):
    return build_catalogue(tmp_path_factory.mktemp("bad") / "inputs", source)


@pytest.fixture(scope="module")
def predictor():
    return load_torch()


def _check(result, expect):
    if expect == SCORED:
        assert result.error is None, result.error
        assert 0.0 <= result.probability <= 1.0
        # an image the OOD gate flags is scored but gets no label (decisions.decide)
        assert result.label in ("NORMAL", "PNEUMONIA") or (result.label is None and result.ood)
    else:
        assert result.probability is None and result.label is None
        assert result.error and re.search(expect, result.error), result.error


def test_each_case_alone(catalogue, predictor):
    for path, expect in catalogue.values():
        [result] = predictor.predict(expand_inputs([path]))
        _check(result, expect)


def test_all_cases_in_one_batch_between_good_images(catalogue, predictor, source):
    paths = [str(source)] + expand_inputs([p for p, _ in catalogue.values()]) + [str(source)]
    results = predictor.predict(paths, batch_size=4)
    assert [r.path for r in results] == paths
    for r, (_, expect) in zip(results[1:-1], catalogue.values()):
        _check(r, expect)
    assert results[0].probability == pytest.approx(results[-1].probability, abs=1e-6)


def test_unusual_valid_images_score_like_the_plain_gray(catalogue, predictor, source):
    """16-bit, alpha, CMYK and palette copies of one picture get nearly the same score."""
    plain = predictor.predict([catalogue["gray16.png"][0]])[0]
    for name in ("alpha.png", "cmyk.jpeg", "palette.png"):
        r = predictor.predict([catalogue[name][0]])[0]
        assert abs(r.probability - plain.probability) < 0.15, name


def test_cli_exit_codes_and_messages(catalogue, source, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    bad = [p for p, e in catalogue.values() if e != SCORED]
    # The real console (a subprocess, so stdout's own encoding is exercised): the whole batch.
    proc = subprocess.run([sys.executable, "-m", "pneumoscan.cli", "predict", str(source),
                           *[p for p, _ in catalogue.values()]],
                          capture_output=True, env=env, timeout=120)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    assert proc.returncode == cli.SOME_FAILED, err
    assert "Traceback" not in err
    for p in bad:
        assert f"error: {p}" in err
    assert out.count("PNEUMONIA") + out.count("NORMAL") >= 7  # the good and the unusual rows
    assert "caf" in out  # the non-UTF-8 name is printed (escaped), not a crash
    # One at a time, in-process: a good or unusual file exits 0, a bad one exits 1.
    with open(os.devnull, "w") as null:
        sys_out, sys_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = null
        try:
            assert cli.main(["predict", str(source), "--format", "json"]) == 0
            assert cli.main(["predict", catalogue["gray16.png"][0]]) == 0
            for name in ("truncated.jpeg", "bomb.png", "no-images"):
                code = cli.main(["predict", catalogue[name][0], "--format", "csv"])
                assert code == cli.SOME_FAILED, name
        finally:
            sys.stdout, sys.stderr = sys_out, sys_err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 000 does not stop root from reading")
def test_unreadable_permissions(source, tmp_path):
    locked = tmp_path / "locked.jpeg"
    shutil.copyfile(source, locked)
    locked.chmod(0)
    with pytest.raises(ImageError, match=r"locked\.jpeg: permission denied"):
        load_gray(locked, 64)


def test_pixel_limit_is_checked_before_decoding_and_configurable(source):
    assert MAX_PIXELS == 100_000_000
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's global is never changed
    with pytest.raises(ImageError, match=r"too large \(12000x12000 pixels"):
        load_gray(io.BytesIO(_png_header_only(12_000, 12_000)), 64, name="bomb.png")
    with pytest.raises(ImageError, match=r"too large \(224x224 pixels, limit 10000\)"):
        load_gray(source, 64, max_pixels=10_000)
    assert load_gray(source, 64, max_pixels=224 * 224).shape == (64, 64)


def test_training_folder_with_the_catalogue_present(small_data, source, tmp_path):
    root = tmp_path / "chest_xray"
    shutil.copytree(small_data, root)
    build_catalogue(root / "train" / "NORMAL", source)
    cfg = load_config(None, ["image_size=48", "epochs=1", "batch_size=8", "val_fraction=0.2",
                             "model=custom-cnn", "pretrained=false", "precision=32-true"])
    run = fit(cfg, root, tmp_path / "run")
    assert (run.dir / "model.safetensors").is_file() and run.val_metrics
    with open(run.dir / "skipped.txt", encoding="utf-8", errors="surrogateescape") as f:
        skipped = f.read()
    for name in ("empty.jpeg", "truncated.jpeg", "text.jpeg", "one-pixel.png", "bomb.png",
                 "huge.png", "loop-a.jpeg", "loop-b.jpeg"):
        assert f"{name}: " in skipped, name
    for name in ("gray16.png", "alpha.png", "cmyk.jpeg", "palette.png", "wide-4000x20.jpeg",
                 os.fsdecode(NON_UTF8)):
        assert name not in skipped, name
    assert len(run.skipped) == 8
    split = (run.dir / "split.csv").read_bytes()
    assert NON_UTF8 in split  # the odd name is written back byte for byte


# --- fuzzing: any bytes give a result or a clean ImageError, never another exception or hang


def _timeout(signum, frame):
    raise TimeoutError("load_gray took over 5 s on one input")


def _decode_or_image_error(payload: bytes):
    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(5)
    try:
        a = load_gray(io.BytesIO(payload), 32, name="fuzz")
        assert a.shape == (32, 32) and a.dtype == np.uint8
    except ImageError as e:
        assert str(e).startswith("fuzz: ")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _seeds() -> list[bytes]:
    """Small real encodings of one test image: JPEG, PNG, TIFF, BMP and DICOM."""
    root = os.environ.get("PNEUMOSCAN_DATA") or str(REPO / "data" / "chest_xray")
    files = sorted((Path(root) / "test" / "NORMAL").glob("*.jpeg"))
    if not files:
        return []
    with Image.open(files[0]) as img:
        gray = img.convert("L").resize((48, 40))
    out = [files[0].read_bytes()]
    for fmt in ("PNG", "TIFF", "BMP", "JPEG"):
        buf = io.BytesIO()
        gray.save(buf, format=fmt)
        out.append(buf.getvalue())
    from .test_dicom import _dataset, _write

    with tempfile.TemporaryDirectory() as tmp:
        out.append(_write(_dataset((40, 48)), np.asarray(gray), Path(tmp) / "s.dcm").read_bytes())
    return out


SEEDS = _seeds()
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(payload):
    _decode_or_image_error(payload)
    _decode_or_image_error(b"\0" * 128 + b"DICM" + payload)  # random bytes behind DICOM magic


@pytest.mark.skipif(not SEEDS, reason="no dataset: set PNEUMOSCAN_DATA")
@FUZZ
@given(st.data())
def test_fuzz_mutated_real_images(data):
    seed = bytearray(data.draw(st.sampled_from(SEEDS)))
    for _ in range(data.draw(st.integers(1, 12))):
        if not seed:
            break
        i = data.draw(st.integers(0, len(seed) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            seed[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            seed = seed[:i]
        else:
            seed[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    _decode_or_image_error(bytes(seed))
