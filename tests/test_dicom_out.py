"""`--dicom-out` of predict and explain: a Secondary Capture and an SR per DICOM input, in
the input's study, valid by dciodvfy, holding the very probability predict printed; patient
attributes only inside those files. Inputs are built on the fly from real example X-rays."""

import io
import json
import logging
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pydicom
import pytest

from pneumoscan import cli
from pneumoscan.dicom.results import NOT_FOR_DIAGNOSIS, result_of
from pneumoscan.models.weights import load

from .conftest import EXAMPLES, REPO
from .dicom_inputs import PATIENT_ID, PATIENT_NAME, dciodvfy_errors, radiograph, write

SICK = EXAMPLES / "PNEUMONIA" / "person1946_bacteria_4874.jpeg"
WELL = EXAMPLES / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg"


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom-in")
    study = pydicom.uid.generate_uid()  # two images of one study
    sources = [write(radiograph(SICK, study), folder / "a.dcm"),
               write(radiograph(WELL, study), folder / "b.dcm")]
    jpeg = folder / WELL.name
    jpeg.write_bytes(WELL.read_bytes())
    return sources, jpeg


@pytest.fixture(scope="module")
def predicted(inputs, tmp_path_factory):
    sources, jpeg = inputs
    out = tmp_path_factory.mktemp("dicom-out")
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger().addHandler(handler)
    try:
        code, stdout, stderr = _run(["predict", *map(str, sources), str(jpeg), "--format",
                                     "json", "--dicom-out", str(out)])
    finally:
        logging.getLogger().removeHandler(handler)
    assert code == 0, stderr
    return out, json.loads(stdout), stdout + stderr + logs.getvalue(), stderr


def _read(folder: Path, kind: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in sorted(folder.glob(f"{kind}_*.dcm"))]


def test_every_object_passes_dciodvfy(predicted):
    out = predicted[0]
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 4  # SC + SR for each of the two DICOM inputs, none for the JPEG
    for f in files:
        assert dciodvfy_errors(f) == [], f.name


def test_results_join_the_source_study_and_reference_the_source(inputs, predicted):
    sources = [pydicom.dcmread(p) for p in inputs[0]]
    by_uid = {s.SOPInstanceUID: s for s in sources}
    scs, srs = _read(predicted[0], "SC"), _read(predicted[0], "SR")
    assert len(scs) == len(srs) == 2
    for ds in scs + srs:
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        assert ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
        assert ds.SOPInstanceUID not in by_uid
        assert (ds.PatientName, ds.PatientID) == (PATIENT_NAME, PATIENT_ID)
        assert ds.AccessionNumber == sources[0].AccessionNumber
    for sc in scs:
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
        assert max(sc.Rows, sc.Columns) >= 1024
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in by_uid
    assert {result_of(sr)["source_uids"][0] for sr in srs} == set(by_uid)


def test_sr_holds_predicts_probability_label_and_model(inputs, predicted):
    out, rows = predicted[0], predicted[1]["predictions"]
    by_source = {pydicom.dcmread(p).SOPInstanceUID: r for p, r in zip(inputs[0], rows)}
    checksum = load(None)[1].extra["weights_sha256"]
    for sr in _read(out, "SR"):
        result = result_of(sr)
        row = by_source[result["source_uids"][0]]
        assert result["probability"] == pytest.approx(row["probability"], abs=1e-6)
        assert result["label"] == row["label"]
        assert result["checksum"] == checksum
    assert {r["label"] for r in rows[:2]} == {"PNEUMONIA", "NORMAL"}


def test_non_dicom_input_gets_one_notice_and_patient_tags_stay_in_the_files(predicted):
    _, result, printed, stderr = predicted
    assert stderr.count("not DICOM") == 1
    assert len(result["predictions"]) == 3  # the JPEG is still scored
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe", "20200101", "ACC-0001"):
        assert secret not in printed


def test_sc_shows_the_result_text(predicted):
    """The text band below the image: not gray (yellow warning line), and the image above
    it is the X-ray with the overlay."""
    sc = _read(predicted[0], "SC")[0]
    pixels = sc.pixel_array
    band = pixels[-60:]
    yellow = (band[..., 0] > 200) & (band[..., 1] > 200) & (band[..., 2] < 80)
    assert yellow.sum() > 50
    assert NOT_FOR_DIAGNOSIS in sc.DerivationDescription


def test_etiology_model_sr_names_the_etiology(inputs, tmp_path):
    out = tmp_path / "dicom"
    code, stdout, stderr = _run(["predict", str(inputs[0][0]), "--format", "json", "--model",
                                 str(REPO / "src/pneumoscan/weights/etiology"),
                                 "--dicom-out", str(out)])
    assert code == 0, stderr
    row = json.loads(stdout)["predictions"][0]
    (sr,) = _read(out, "SR")
    result = result_of(sr)
    assert row["etiology"] in ("BACTERIAL", "VIRAL")
    assert result["etiology"] == row["etiology"] and result["ood"] == row["ood"]["flagged"]
    assert result["probability"] == pytest.approx(row["probability"], abs=1e-6)
    for f in out.glob("*.dcm"):
        assert dciodvfy_errors(f) == [], f.name


def test_explain_dicom_out(inputs, tmp_path):
    code, stdout, stderr = _run(["explain", str(inputs[0][1]), str(inputs[1]), "--out",
                                 str(tmp_path / "png"), "--dicom-out", str(tmp_path / "dcm")])
    assert code == 0, stderr
    files = sorted((tmp_path / "dcm").glob("*.dcm"))
    assert [f.name[:2] for f in files] == ["SC", "SR"]
    for f in files:
        assert dciodvfy_errors(f) == [], f.name
    assert stderr.count("not DICOM") == 1
    assert PATIENT_NAME not in stdout + stderr


def test_non_conformant_patient_attribute_is_never_quoted(tmp_path):
    """highdicom refuses PatientSex 'female' with an error quoting it, pydicom warns about
    a malformed name: the input is still scored, gets no DICOM result, and the notice names
    the file and the error type only."""
    ds = radiograph(WELL)
    ds.PatientSex = "female"
    ds.PatientName = "Roe^Richard^Q^Jr^extra=Xyzzy"
    source = write(ds, tmp_path / "odd.dcm")
    code, stdout, stderr = _run(["predict", str(source), "--format", "json", "--dicom-out",
                                 str(tmp_path / "out")])
    assert code == 0 and json.loads(stdout)["predictions"][0]["probability"] is not None
    assert "no DICOM result written" in stderr and "ValueError" in stderr
    for secret in ("female", "Roe", "Xyzzy"):
        assert secret not in stdout + stderr
    assert not list((tmp_path / "out").glob("*.dcm"))
