"""`pneumoscan dicomweb` against a real Orthanc (started here on a free loopback port with a
throwaway config and storage): CR/DX studies built from real test X-rays, results read back
through QIDO-RS/WADO-RS, a second pass that stores nothing, a server stopped mid-run, a
non-image object, a multi-frame object and a corrupt instance. Nothing is mocked."""

import io
import json
import logging
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pydicom
import pytest

from pneumoscan import cli
from pneumoscan.dicom.loop import Loop
from pneumoscan.dicom.results import ModelIdentity, result_of
from pneumoscan.dicom.web import DicomWebClient, Retry, Spool
from pneumoscan.inference.runtime import make_predictor
from pneumoscan.models.weights import load

from . import orthanc as orthanc_mod
from .dicom_inputs import (
    PATIENT_ID,
    PATIENT_NAME,
    corrupt,
    dciodvfy_errors,
    multi_frame,
    pdf_document,
    radiograph,
    write,
)

FAST = Retry(attempts=2, backoff=0.05)


@pytest.fixture(scope="module", autouse=True)
def needs_orthanc():
    why = orthanc_mod.available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why}: .ci/run installs it")
        pytest.skip(why)


def _xrays(data_dir: Path, n: int) -> list[Path]:
    """n real test X-rays, alternating PNEUMONIA and NORMAL."""
    sick = sorted((data_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[::7]
    well = sorted((data_dir / "test" / "NORMAL").glob("*.jpeg"))[::7]
    return [p for pair in zip(sick, well) for p in pair][:n]


def _run(argv):
    out, err, logs = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger().addHandler(handler)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(argv)
    finally:
        logging.getLogger().removeHandler(handler)
    return code, out.getvalue(), err.getvalue() + logs.getvalue()


def _predict(paths: list[Path]) -> dict[str, float]:
    """SOP Instance UID -> `pneumoscan predict`'s probability for that file."""
    code, out, err = _run(["predict", *map(str, paths), "--format", "json"])
    assert code == 0, err
    rows = json.loads(out)["predictions"]
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: r["probability"]
            for p, r in zip(paths, rows)}


def _results(server, tmp: Path) -> dict[str, dict[str, list]]:
    """Study UID -> {"SR": [(result_of, path)], "SC": [path]} read back over QIDO + WADO."""
    client = DicomWebClient(server.dicomweb)
    out: dict[str, dict[str, list]] = {}
    try:
        for study in client.studies():
            entry = out.setdefault(study, {"SR": [], "SC": []})
            for inst in client.instances(study):
                if not inst.series_description.startswith("pneumoscan"):
                    continue
                path = tmp / f"{inst.sop}.dcm"
                path.write_bytes(client.retrieve(inst))
                ds = pydicom.dcmread(path)
                assert ds.StudyInstanceUID == study
                if inst.modality == "SR":
                    entry["SR"].append((result_of(ds), path))
                else:
                    entry["SC"].append(path)
    finally:
        client.close()
    return out


@pytest.fixture(scope="module")
def pacs(data_dir, tmp_path_factory):
    """An Orthanc holding three studies: A one CR + a two-frame object; B one DX image + a
    PDF; C two CR images + one corrupt instance. Yields (server, source files, sources to
    score, corrupt SOP UID)."""
    folder = tmp_path_factory.mktemp("pacs")
    xrays = _xrays(data_dir, 4)
    a, b, c = (pydicom.uid.generate_uid() for _ in range(3))
    files = folder / "files"
    scored = [write(radiograph(xrays[0], a), files / "a1.dcm"),
              write(radiograph(xrays[1], b, modality="DX"), files / "b1.dcm"),
              write(radiograph(xrays[2], c), files / "c1.dcm"),
              write(radiograph(xrays[3], c), files / "c2.dcm")]
    bad = corrupt(xrays[0], c)
    others = [write(multi_frame(xrays[1], a), files / "a2.dcm"),
              write(pdf_document(b), files / "b2.dcm"), write(bad, files / "c3.dcm")]
    server = orthanc_mod.Orthanc(folder / "orthanc").start()
    try:
        for f in scored + others:
            server.upload(f)
        yield server, scored, bad.SOPInstanceUID, folder
    finally:
        server.stop()


@pytest.fixture(scope="module")
def first_pass(pacs):
    server, _, _, folder = pacs
    return _run(["dicomweb", server.dicomweb, "--once", "--spool", str(folder / "spool"),
                 "--retries", "1", "--backoff", "0.05"])


def test_round_trip_stores_one_sr_and_one_sc_per_image_with_predicts_probability(
        pacs, first_pass, tmp_path):
    server, scored, bad_uid, _ = pacs
    code, out, err = first_pass
    assert code == 1, out + err  # the corrupt instance is a failure, reported
    assert "studies seen 3, scored 3, skipped 0; images scored 4; objects stored 8" in out
    expected = _predict(scored)
    results = _results(server, tmp_path)
    assert len(results) == 3
    found = {}
    for entry in results.values():
        assert len(entry["SR"]) == len(entry["SC"]) >= 1
        for result, _ in entry["SR"]:
            (source,) = result["source_uids"]
            found[source] = result["probability"]
    assert found.keys() == expected.keys()
    for uid, p in expected.items():
        assert found[uid] == pytest.approx(p, abs=1e-6)
    checksum = load(None)[1].extra["weights_sha256"]
    assert all(r["checksum"] == checksum for e in results.values() for r, _ in e["SR"])


def test_stored_objects_pass_dciodvfy(pacs, first_pass, tmp_path):
    results = _results(pacs[0], tmp_path)
    paths = [p for e in results.values() for p in e["SC"] + [path for _, path in e["SR"]]]
    assert len(paths) == 8
    for p in paths:
        assert dciodvfy_errors(p) == [], p.name


def test_skips_and_failures_are_reported_with_reasons(pacs, first_pass):
    _, _, bad_uid, _ = pacs
    code, out, err = first_pass
    assert "skipped instance: 1 x multi-frame image" in out
    assert "skipped instance: 1 x non-image object (Encapsulated PDF Storage)" in out
    (failure,) = [line for line in out.splitlines() if line.strip().startswith("failed:")]
    assert bad_uid in failure and "DICOM" in failure
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe", "20200101"):
        assert secret not in out + err


def test_second_pass_stores_nothing_new(pacs, first_pass):
    server, _, _, folder = pacs
    before = server.count_instances()
    code, out, err = _run(["dicomweb", server.dicomweb, "--once", "--spool",
                           str(folder / "spool")])
    assert "scored 0" in out and "objects stored 0" in out, out
    # A and B are done; C's two images are done too, its corrupt instance is tried again
    # (and fails again: reported, never marked done).
    assert "2 x already holds this model's result" in out and "failed 1" in out
    assert server.count_instances() == before
    assert code == 1


def test_server_stopped_mid_run_loses_nothing(data_dir, tmp_path):
    """Orthanc is stopped as soon as the first two studies are scored: their results wait
    in the spool, the other studies are left; after a restart the next pass sends the spool
    and does the rest. Every study ends with exactly one SR and one SC."""
    xrays = _xrays(data_dir, 4)
    sources = [write(radiograph(x), tmp_path / "in" / f"{i}.dcm") for i, x in enumerate(xrays)]
    server = orthanc_mod.Orthanc(tmp_path / "orthanc").start()
    try:
        for f in sources:
            server.upload(f)
        ckpt = load(None)[1]
        spool = Spool(tmp_path / "spool", server.dicomweb)

        def stop_on_first_scored(kind, study):
            if kind == "scored":
                server.stop()

        client = DicomWebClient(server.dicomweb, FAST)
        loop = Loop(client, spool, ModelIdentity.from_checkpoint(ckpt),
                    lambda paths: make_predictor(None, "auto", paths),
                    on_event=stop_on_first_scored, batch=2)
        first = loop.run_once()
        assert first.stopped and "unreachable" in first.stopped
        assert first.images_scored == 2 and first.stored == 0 and first.spooled == 4
        assert len(spool.pending()) == 4

        server.start()
        loop.on_event = lambda kind, study: None
        second = loop.run_once()
        client.close()
        assert second.ok, second.text()
        assert second.stored == 8  # 4 from the spool + 2 studies scored now
        assert second.images_scored == 2
        assert second.studies_skipped["already holds this model's result"] == 2
        assert spool.pending() == []
        results = _results(server, tmp_path)
        expected = _predict(sources)
        assert len(results) == 4
        for entry in results.values():
            assert len(entry["SR"]) == len(entry["SC"]) == 1
            result = entry["SR"][0][0]
            assert result["probability"] == pytest.approx(
                expected[result["source_uids"][0]], abs=1e-6)
    finally:
        server.stop()


def test_server_down_is_retried_then_reported(tmp_path):
    url = f"http://127.0.0.1:{orthanc_mod.free_port()}/dicom-web"
    code, out, err = _run(["dicomweb", url, "--once", "--spool", str(tmp_path),
                           "--retries", "2", "--backoff", "0.01"])
    assert code == 1
    assert "retry 1 of 2" in err and "retry 2 of 2" in err
    assert "stopped early" in out and "unreachable" in out
