"""DICOM input, built on the fly from real test JPEGs: each variant must decode to the same
picture and score as its JPEG source, and no patient tag may leak into any output."""

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumoscan import cli
from pneumoscan.data import is_image_file, scan
from pneumoscan.data.decode import ImageError, is_dicom, load_gray
from pneumoscan.inference.predictor import expand_inputs
from pneumoscan.inference.runtime import load_torch

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "SECRET-4711"
# Probability tolerances. 8-bit, windowed, VOI-LUT and lossless files decode to the identical
# array as the JPEG (difference 0). The JPEG-in-DICOM is decoded by libjpeg to RGB rather
# than by PIL to luma: CLOSE. A 12-bit file without any window is auto-windowed over its
# own min..max (as viewers do), which stretches a JPEG whose brightest pixel is below 255:
# a real contrast change, so STRETCHED (measured up to ~0.06 on these images).
EXACT, CLOSE, STRETCHED = 1e-6, 0.03, 0.10


def _dataset(shape, photometric="MONOCHROME2", bits=8, samples=1, syntax=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "20200101"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    return ds


def _write(ds, pixels, path):
    ds.PixelData = pixels.tobytes() if isinstance(pixels, np.ndarray) else pixels
    ds.save_as(path, enforce_file_format=True)
    return path


def _gray(jpeg):
    """The JPEG's gray pixels as load_gray decodes them (the luma plane, no colour round trip)."""
    with Image.open(jpeg) as img:
        img.draft("L", img.size)
        return np.asarray(img.convert("L"))


def _variants(jpeg, folder):
    """name -> (DICOM path, tolerance); every one displays as the JPEG does."""
    g = _gray(jpeg)
    g16 = g.astype(np.uint16) * 16  # 8-bit picture held in 12 stored bits
    # A LINEAR window whose output range maps 0..4080 straight back onto 0..255.
    window = {"WindowCenter": 2040.5, "WindowWidth": 4081}
    out = {}

    out["mono2_8bit"] = _write(_dataset(g.shape), g, folder / "mono2_8bit.dcm"), EXACT
    out["mono1_8bit"] = _write(_dataset(g.shape, "MONOCHROME1"), 255 - g,
                               folder / "mono1_8bit.dcm"), EXACT
    ds = _dataset(g.shape, bits=12)
    for k, v in window.items():
        setattr(ds, k, v)
    out["mono2_12bit_window"] = _write(ds, g16, folder / "mono2_12bit_window.dcm"), EXACT
    ds = _dataset(g.shape, "MONOCHROME1", bits=12)
    for k, v in window.items():
        setattr(ds, k, v)
    out["mono1_12bit_window"] = _write(ds, 4080 - g16, folder / "mono1_12bit_window.dcm"), EXACT
    # Stored = (value - intercept) / slope; the Modality LUT must undo it before the window.
    ds = _dataset(g.shape, bits=16)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, -1024, "US"
    for k, v in window.items():
        setattr(ds, k, v)
    stored = ((g16.astype(np.int32) + 1024) // 2).astype(np.uint16)
    out["mono2_16bit_rescale_window"] = _write(ds, stored, folder / "rescale"), EXACT  # no suffix
    # A VOI LUT sequence (12-bit in, 16-bit out) instead of a window. (An 8-bit-output LUT
    # with more than 256 entries is mis-indexed by pydicom 3.0.2's apply_voi, so not used.)
    ds = _dataset(g.shape, bits=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [min(i, 4080) // 16 * 257 for i in range(4096)])  # LUT Data
    ds.VOILUTSequence = [item]
    out["mono2_12bit_voi_lut"] = _write(ds, g16, folder / "voi_lut.dcm"), EXACT
    out["mono2_12bit_no_voi"] = _write(_dataset(g.shape, bits=12), g16,
                                       folder / "no_voi.dcm"), STRETCHED
    # The JPEG's own bytes, encapsulated: decoded by pylibjpeg-libjpeg, not PIL.
    ds = _dataset(g.shape, "YBR_FULL_422", samples=3, syntax=JPEGBaseline8Bit)
    _write(ds, encapsulate([jpeg.read_bytes()]), folder / "jpeg_baseline.dcm")
    out["jpeg_baseline"] = folder / "jpeg_baseline.dcm", CLOSE
    ds = _dataset(g.shape)
    ds.PixelData = g.tobytes()
    ds.compress(JPEG2000Lossless, g)
    ds.save_as(folder / "j2k_lossless.dcm", enforce_file_format=True)
    out["jpeg2000_lossless"] = folder / "j2k_lossless.dcm", EXACT
    return out


@pytest.fixture(scope="module")
def sources(data_dir):
    """Two real test JPEGs per class."""
    picked = []
    for label in ("NORMAL", "PNEUMONIA"):
        picked += sorted((data_dir / "test" / label).glob("*.jpeg"))[::97][:2]
    return picked


@pytest.fixture(scope="module")
def predictor():
    return load_torch()


def test_every_variant_scores_as_its_jpeg_source(sources, predictor, tmp_path):
    worst = {}
    for i, jpeg in enumerate(sources):
        folder = tmp_path / str(i)
        folder.mkdir()
        variants = _variants(jpeg, folder)
        paths = [str(jpeg)] + [str(p) for p, _ in variants.values()]
        results = predictor.predict(paths)
        assert all(r.error is None for r in results), [r.error for r in results]
        ref = results[0].probability
        for (name, (_, tol)), r in zip(variants.items(), results[1:]):
            diff = abs(r.probability - ref)
            worst[name] = max(worst.get(name, 0.0), diff)
            assert diff <= tol, (name, jpeg.name, r.probability, ref)
            if tol == EXACT:
                assert r.label == results[0].label
    assert len(worst) == 9
    print("largest |probability difference| per variant:",
          {k: round(v, 4) for k, v in worst.items()})


def test_exact_variants_decode_to_the_same_pixels(sources, tmp_path):
    jpeg = sources[0]
    ref = load_gray(jpeg, 224)
    for name, (path, tol) in _variants(jpeg, tmp_path).items():
        a = load_gray(path, 224)
        if tol == EXACT:
            assert np.array_equal(a, ref), name
        else:
            assert np.abs(a.astype(int) - ref).mean() < 12, name


def test_dicom_found_by_content_in_folders(sources, tmp_path, data_dir):
    g = _gray(sources[0])
    _write(_dataset(g.shape), g, tmp_path / "1.2.840.113619.2.55.3")  # UID-named, no suffix
    _write(_dataset(g.shape), g, tmp_path / "IMG0001")
    (tmp_path / "README").write_text("not an image")
    found = expand_inputs([str(tmp_path)])
    assert sorted(found) == sorted(str(tmp_path / n) for n in ("1.2.840.113619.2.55.3",
                                                                "IMG0001"))
    assert is_dicom(tmp_path / "IMG0001") and not is_dicom(tmp_path / "README")
    assert not is_image_file(tmp_path / "README")
    # A training folder picks extensionless DICOM up too.
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True)
            shutil.copy(tmp_path / "IMG0001", root / split / label / "IM-0001-0001")
    assert len(scan(root)) == 4


def test_multi_frame_and_undecodable_syntax_are_clear_errors(sources, tmp_path):
    g = _gray(sources[0])
    ds = _dataset(g.shape)
    ds.NumberOfFrames = 2
    _write(ds, np.stack([g, g]), tmp_path / "cine.dcm")
    with pytest.raises(ImageError, match=r"cine.dcm: multi-frame DICOM \(2 frames\)"):
        load_gray(tmp_path / "cine.dcm", 64)
    ds = _dataset(g.shape, syntax=MPEG2MPML)
    _write(ds, encapsulate([b"\x00" * 64]), tmp_path / "video.dcm")
    with pytest.raises(ImageError, match="video.dcm: cannot decode DICOM transfer syntax MPEG2"):
        load_gray(tmp_path / "video.dcm", 64)
    ds = _dataset(g.shape)
    _write(ds, g.tobytes()[:100], tmp_path / "short.dcm")  # truncated pixel data
    with pytest.raises(ImageError, match="short.dcm: "):
        load_gray(tmp_path / "short.dcm", 64)
    with pytest.raises(ImageError, match="too large"):
        load_gray(_write(_dataset(g.shape), g, tmp_path / "ok.dcm"), 64, max_pixels=1000)
    ds = _dataset(g.shape, bits=12)
    ds.WindowCenter, ds.WindowWidth = 100, 0  # a zero-width LINEAR window is invalid
    _write(ds, g.astype(np.uint16), tmp_path / "window.dcm")
    with pytest.raises(ImageError, match="window.dcm: invalid DICOM display settings"):
        load_gray(tmp_path / "window.dcm", 64)


def test_patient_tags_never_reach_messages_logs_or_outputs(sources, tmp_path, caplog):
    g = _gray(sources[0])
    good = _write(_dataset(g.shape), g, tmp_path / "good.dcm")
    ds = _dataset(g.shape)
    ds.NumberOfFrames = 2
    bad = _write(ds, np.stack([g, g]), tmp_path / "bad.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:400])
    assert PATIENT_NAME.encode() in good.read_bytes()  # the tags are there to leak
    for fmt in ("json", "csv", "table"):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(["predict", str(good), str(bad), str(truncated), "--format", fmt])
        assert code == cli.SOME_FAILED
        text = out.getvalue() + err.getvalue() + caplog.text
        assert "good.dcm" in text and "bad.dcm" in text and "truncated.dcm" in text
        for secret in (PATIENT_NAME, "Doe", PATIENT_ID, "20200101"):
            assert secret not in text, (fmt, secret)
        if fmt == "json":
            rows = json.loads(out.getvalue())["predictions"]
            assert rows[0]["probability"] is not None and rows[1]["error"]
