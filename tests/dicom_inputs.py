"""DICOM inputs for the tests, built on the fly from real X-ray JPEGs with synthetic patient
and study tags (the names below must never appear outside the DICOM files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "SECRET-4711"


def radiograph(jpeg: Path, study_uid: str | None = None, patient_id: str = PATIENT_ID,
               patient_name: str = PATIENT_NAME, modality: str = "CR") -> Dataset:
    """A CR (or DX-modality) instance holding the JPEG's gray pixels, 8-bit MONOCHROME2."""
    with Image.open(jpeg) as img:
        gray = np.asarray(img.convert("L"))
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate, ds.PatientSex = "20200101", "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "S1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC-0001", "Ref^Doctor"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "AP"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = gray.tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The 'Error' lines dciodvfy (dicom3tools) prints for a file; skips the test where
    dciodvfy is not installed, except in CI (.ci/run installs it)."""
    import os
    import shutil
    import subprocess

    import pytest

    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy missing in CI: .ci/run installs dicom3tools")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def pdf_document(study_uid: str) -> Dataset:
    """A non-image object (Encapsulated PDF, modality DOC) in the given study."""
    from pydicom.uid import EncapsulatedPDFStorage

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = EncapsulatedPDFStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DOC", 2, 1
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "referral"
    ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return ds


def corrupt(jpeg: Path, study_uid: str) -> Dataset:
    """A radiograph whose JPEG pixel data is garbage: stored by a PACS, undecodable."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = radiograph(jpeg, study_uid)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4])
    ds["PixelData"].VR = "OB"
    return ds


def multi_frame(jpeg: Path, study_uid: str) -> Dataset:
    """The radiograph twice, as a two-frame object (not scored: one radiograph expected)."""
    ds = radiograph(jpeg, study_uid)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return ds
