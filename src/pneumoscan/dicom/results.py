"""A result as DICOM objects a PACS files into the source's study (IHE AI Results).

For each scored DICOM radiograph two objects are written, with highdicom (no DICOM is encoded
by hand here):

- a Secondary Capture: the X-ray as displayed, the heatmap over it and a text band burnt in
  (label, probability, threshold, model, "NOT FOR DIAGNOSTIC USE"), because many PACS viewers
  show nothing but images;
- a Comprehensive 3D SR holding a TID 1500 measurement report: the finding "Pneumonia"
  present/absent at the stored threshold, the probability and the threshold as numbers, the
  etiology of a three-class model, the OOD flag, and the model with its weights' SHA-256 as
  the algorithm identification.

Both join the source's study (its patient and study modules are copied by highdicom) in new
series and reference the source instance. The patient attributes are read here and go only
into these files: nothing in this module prints or logs them.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

from ..explain.render import annotated

MANUFACTURER = "pneumoscan"
SC_SERIES_NUMBER, SR_SERIES_NUMBER = 9901, 9902  # high: clear of the modality's own series
SC_DESCRIPTION, SR_DESCRIPTION = "pneumoscan overlay", "pneumoscan result"
DISPLAY_SIDE = 1024  # long side of the Secondary Capture in pixels
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
NOT_FOR_DIAGNOSTIC_TEXT = f"RESEARCH TOOL - {NOT_FOR_DIAGNOSIS}"

# Codes. Where DICOM or SNOMED CT has no concept, a private scheme ("99" prefix, declared in
# the SR's Coding Scheme Identification Sequence).
PRIVATE_SCHEME = "99PNEUMOSCAN"
PNEUMONIA = CodedConcept("233604007", "SCT", "Pneumonia")
PROBABILITY = codes.DCM.Probability
THRESHOLD = CodedConcept("THRESHOLD", PRIVATE_SCHEME, "Decision threshold")
OOD_FLAG = CodedConcept("OOD", PRIVATE_SCHEME, "Input unlike the training X-rays")
ETIOLOGY = codes.SCT.Etiology
ETIOLOGIES = {"BACTERIAL": CodedConcept("53084003", "SCT", "Bacterial pneumonia"),
              "VIRAL": CodedConcept("75570004", "SCT", "Viral pneumonia")}
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
YES, NO = CodedConcept("373066001", "SCT", "Yes"), CodedConcept("373067005", "SCT", "No")


log = logging.getLogger(__name__)


@contextmanager
def no_values_in_messages():
    """While patient attributes are read or copied: pydicom and highdicom warn about a
    non-conformant value by quoting it (as a warning and a log line), so their warnings are
    held back and only counted. Callers must also report exceptions by type only."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for lg, disabled in zip(loggers, before):
            lg.disabled = disabled
    if caught:
        log.warning("%d warning(s) about DICOM attribute values held back (they may quote "
                    "patient attributes)", len(caught))


@dataclass(frozen=True)
class ModelIdentity:
    """What identifies the model in a result: the checksum decides whether a study already
    holds this model's result (dicomweb's idempotency)."""

    name: str
    version: str
    checksum: str  # sha256 of the weights file
    threshold: float

    @classmethod
    def from_checkpoint(cls, ckpt) -> ModelIdentity:
        checksum = str(ckpt.extra.get("weights_sha256") or "unknown")
        return cls(ckpt.model_name, str(ckpt.extra.get("package_version") or "unknown"),
                   checksum, float(ckpt.threshold))

    @property
    def tag(self) -> str:
        """Short form in series descriptions and burnt-in text."""
        return f"{self.name} {self.version} sha256:{self.checksum[:12]}"


@dataclass(frozen=True)
class Finding:
    """One image's result, as predict/explain computed it."""

    probability: float
    label: str | None  # None: the OOD gate flagged the image (no NORMAL/PNEUMONIA claim)
    etiology: str | None = None
    ood: bool | None = None


def read_source(path) -> pydicom.Dataset:
    """The source instance's header (no pixels): the modules copied into the results."""
    with no_values_in_messages():
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def render_overlay(gray: np.ndarray, heatmap: np.ndarray | None, finding: Finding,
                   model: ModelIdentity, method: str = "Grad-CAM") -> np.ndarray:
    """(H, W) uint8 displayed X-ray and (H, W) map in [0, 1] (or None) -> (h, w, 3) uint8
    RGB: the X-ray scaled to DISPLAY_SIDE on its long side, the map blended over it as the
    PNG overlays are (turbo, opacity growing with the value), and a black text band below."""

    label = finding.label or "no label"
    lines = [f"pneumoscan: {label}  p(pneumonia) = {finding.probability:.4f}  "
             f"threshold {model.threshold:.4f}"]
    if finding.etiology is not None:
        lines.append(f"likelier etiology if pneumonia: {finding.etiology}")
    if finding.ood:
        lines.append("WARNING: image unlike the training X-rays; probability unreliable")
    lines += [f"model {model.tag}; overlay: {method if heatmap is not None else 'none'}",
              NOT_FOR_DIAGNOSTIC_TEXT]
    return annotated(gray, heatmap, lines, DISPLAY_SIDE, highlight=NOT_FOR_DIAGNOSTIC_TEXT)


def _source_reference(source: pydicom.Dataset) -> pydicom.Dataset:
    ref = pydicom.Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def build_sc(source: pydicom.Dataset, rgb: np.ndarray, model: ModelIdentity,
             series_uid: str, instance_number: int = 1) -> hd.sc.SCImage:
    """The Secondary Capture of `rgb` (render_overlay's output) in the source's study."""
    orientation = source.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        source, rgb, "RGB", 8, "PATIENT", series_uid, SC_SERIES_NUMBER, hd.UID(),
        instance_number, MANUFACTURER,
        patient_orientation=tuple(orientation) if orientation and len(orientation) == 2
        else ("", ""),
        laterality=source.get("Laterality") or None)
    if "Laterality" not in sc:  # a chest is unpaired: say so rather than leave it unknown
        sc.ImageLaterality = source.get("ImageLaterality") or "U"
    sc.SeriesDescription = f"{SC_DESCRIPTION} {model.tag}"[:64]
    sc.BurnedInAnnotation = "YES"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = (f"{model.name} result burnt in over the displayed "
                                f"source image; {NOT_FOR_DIAGNOSIS}")[:1024]
    sc.SourceImageSequence = [_source_reference(source)]
    sc.ManufacturerModelName = model.name[:64]
    sc.SoftwareVersions = model.version[:64]
    return sc


def _algorithm(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=f"pneumoscan {model.name}"[:64], version=model.version[:64],
        parameters=[f"weights_sha256={model.checksum}", f"threshold={model.threshold!r}"])


def build_sr(source: pydicom.Dataset, finding: Finding, model: ModelIdentity,
             series_uid: str, instance_number: int = 1) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 measurement report of one image's finding, in the source's study."""
    algorithm = _algorithm(model)
    # An image the OOD gate flags gets no NORMAL/PNEUMONIA claim, only the flag below.
    evaluations = [] if finding.label is None else [hd.sr.QualitativeEvaluation(
        PNEUMONIA, codes.SCT.Present if finding.label == "PNEUMONIA" else codes.SCT.Absent)]
    if finding.etiology in ETIOLOGIES:
        evaluations.append(hd.sr.QualitativeEvaluation(ETIOLOGY, ETIOLOGIES[finding.etiology]))
    if finding.ood is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(OOD_FLAG, YES if finding.ood else NO))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(),
                                                     identifier="pneumonia screening"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(PROBABILITY, float(finding.probability), NO_UNITS,
                              algorithm_id=algorithm),
            hd.sr.Measurement(THRESHOLD, float(model.threshold), NO_UNITS,
                              algorithm_id=algorithm)],
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="pneumoscan", manufacturer_name=MANUFACTURER,
            model_name=model.name[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CHEST_XRAY, imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source], content=report[0], series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(),
        instance_number=instance_number, manufacturer=MANUFACTURER, is_complete=True)
    sr.SeriesDescription = f"{SR_DESCRIPTION} {model.tag}"[:64]
    scheme = pydicom.Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "pneumoscan private codes"
    scheme.CodingSchemeResponsibleOrganization = "pneumoscan"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


@dataclass
class SeriesPair:
    """The two new series' UIDs; one pair per study and run, so every result of a run in a
    study lands in one SC series and one SR series."""

    sc: str
    sr: str

    @classmethod
    def new(cls) -> SeriesPair:
        return cls(str(hd.UID()), str(hd.UID()))


def build_results(source: pydicom.Dataset, gray: np.ndarray, heatmap: np.ndarray | None,
                  finding: Finding, model: ModelIdentity, series: SeriesPair | None = None,
                  instance_number: int = 1, method: str = "Grad-CAM"
                  ) -> tuple[hd.sc.SCImage, hd.sr.Comprehensive3DSR]:
    """(Secondary Capture, SR) of one scored source instance."""
    series = series or SeriesPair.new()
    rgb = render_overlay(gray, heatmap, finding, model, method)
    with no_values_in_messages():
        return (build_sc(source, rgb, model, series.sc, instance_number),
                build_sr(source, finding, model, series.sr, instance_number))


def save_atomic(ds: pydicom.Dataset, path: Path) -> Path:
    """Write a Part 10 file under a temporary name, then rename: never a half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_results(source_path, gray: np.ndarray, heatmap: np.ndarray | None,
                  finding: Finding, model: ModelIdentity, out_dir: str | Path,
                  method: str = "Grad-CAM") -> list[Path]:
    """Build and write <stem>_sc.dcm and <stem>_sr.dcm for one DICOM input into out_dir
    (the stem is the new SOP Instance UID: no file name carries a patient attribute)."""
    sc, sr = build_results(read_source(source_path), gray, heatmap, finding, model,
                           method=method)
    out = Path(out_dir)
    with no_values_in_messages():
        return [save_atomic(sc, out / f"SC_{sc.SOPInstanceUID}.dcm"),
                save_atomic(sr, out / f"SR_{sr.SOPInstanceUID}.dcm")]


# ------------------------------------------------------------------ reading a result back

def _items(ds: pydicom.Dataset):
    """Every content item under ds, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _concept(item: pydicom.Dataset, attribute: str = "ConceptNameCodeSequence") -> str | None:
    seq = item.get(attribute)
    return str(seq[0].CodeValue) if seq else None


def result_of(sr: pydicom.Dataset) -> dict | None:
    """What a pneumoscan SR (a file, or WADO-RS metadata read with Dataset.from_json) says:
    {"checksum", "source_uids", "probability", "label", "etiology", "ood"}; None when it is
    not one of ours."""
    checksum = probability = label = etiology = ood = None
    etiologies = {code.value: name for name, code in ETIOLOGIES.items()}
    for item in _items(sr):
        value = str(item.get("TextValue", ""))
        if value.startswith("weights_sha256="):
            checksum = value.removeprefix("weights_sha256=")
        name = _concept(item)
        if name == PROBABILITY.value and item.get("MeasuredValueSequence"):
            measured = item.MeasuredValueSequence[0]
            probability = float(measured.get("FloatingPointValue") or measured.NumericValue)
        elif name == PNEUMONIA.value and item.get("ConceptCodeSequence"):
            present = _concept(item, "ConceptCodeSequence") == codes.SCT.Present.value
            label = "PNEUMONIA" if present else "NORMAL"
        elif name == ETIOLOGY.value and item.get("ConceptCodeSequence"):
            etiology = etiologies.get(_concept(item, "ConceptCodeSequence"))
        elif name == OOD_FLAG.value and item.get("ConceptCodeSequence"):
            ood = _concept(item, "ConceptCodeSequence") == YES.value
    if checksum is None:
        return None
    sources = [str(sop.ReferencedSOPInstanceUID)
               for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
               for series in study.get("ReferencedSeriesSequence", [])
               for sop in series.get("ReferencedSOPSequence", [])]
    return {"checksum": checksum, "source_uids": sources, "probability": probability,
            "label": label, "etiology": etiology, "ood": ood}
