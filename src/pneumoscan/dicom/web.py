"""A small DICOMweb client (QIDO-RS, WADO-RS, STOW-RS over httpx) and the local spool.

Only what the loop needs: search studies and instances, read an SR's metadata, retrieve one
instance, store Part 10 files. A server that is down, times out or answers 5xx/429 is retried
with exponential backoff, saying so; after the last try ServerDown is raised and the loop
stops for this run. Response bodies carry patient attributes: none is ever put into a
message, only status codes, UIDs and exception type names.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom

log = logging.getLogger(__name__)

DICOM_PART = 'multipart/related; type="application/dicom"'
RADIOGRAPHS = ("CR", "DX")
PAGE = 100  # QIDO results asked per request


class ServerDown(RuntimeError):
    """The server could not be reached, or kept failing, after every retry."""


class RequestFailed(RuntimeError):
    """The server answered this one request with an error (4xx): other work may go on."""


@dataclass(frozen=True)
class Retry:
    attempts: int = 4      # retries after the first try
    backoff: float = 1.0   # seconds before the first retry, doubled each time


@dataclass(frozen=True)
class Instance:
    """One instance as QIDO-RS lists it (no patient attribute is kept)."""

    study: str
    series: str
    sop: str
    sop_class: str
    modality: str
    series_description: str
    rows: int | None
    frames: int


def _value(item: dict, tag: str, default=None):
    values = item.get(tag, {}).get("Value")
    return values[0] if values else default


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a multipart/related response (RFC 2046), in order."""
    match = re.search(r'boundary="?([^";,\s]+)"?', content_type, re.IGNORECASE)
    if not match:
        raise RequestFailed(f"multipart response without a boundary ({content_type[:80]})")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        _headers, _, data = chunk.partition(b"\r\n\r\n")
        parts.append(data[:-2] if data.endswith(b"\r\n") else data)
    return parts


class DicomWebClient:
    """QIDO/WADO/STOW against one DICOMweb root, e.g. http://localhost:8042/dicom-web."""

    def __init__(self, url: str, retry: Retry = Retry(), timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.retry = retry
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self.retry.attempts + 1):
            try:
                response = self.http.request(method, f"{self.url}/{path}", **kwargs)
            except httpx.TransportError as e:
                problem = f"unreachable ({type(e).__name__})"
            else:
                if response.status_code < 500 and response.status_code != 429:
                    if response.status_code >= 400:
                        raise RequestFailed(f"{method} {path.split('?')[0]}: HTTP "
                                            f"{response.status_code}")
                    return response
                problem = f"answers HTTP {response.status_code}"
            if attempt == self.retry.attempts:
                raise ServerDown(f"DICOMweb server {self.url} {problem} after "
                                 f"{attempt + 1} tries")
            delay = self.retry.backoff * 2 ** attempt
            log.warning("DICOMweb server %s %s; retry %d of %d in %.1f s", self.url, problem,
                        attempt + 1, self.retry.attempts, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _search(self, path: str, params: list[tuple[str, str]]) -> list[dict]:
        found, offset = [], 0
        while True:
            page = [*params, ("limit", str(PAGE)), ("offset", str(offset))]
            r = self._request("GET", path, params=page,
                              headers={"Accept": "application/dicom+json"})
            batch = r.json() if r.content else []
            found += batch
            if len(batch) < PAGE:
                return found
            offset += PAGE

    def studies(self, study: str | None = None) -> list[str]:
        """Study Instance UIDs of the studies holding CR or DX images (one study if given)."""
        params = [("ModalitiesInStudy", ",".join(RADIOGRAPHS)), ("includefield", "0020000D")]
        if study:
            params.append(("StudyInstanceUID", study))
        uids = (_value(s, "0020000D") for s in self._search("studies", params))
        return list(dict.fromkeys(u for u in uids if u))

    def instances(self, study: str) -> list[Instance]:
        fields = ["00080060", "0008103E", "00280010", "00280008"]
        items = self._search(f"studies/{study}/instances",
                             [("includefield", f) for f in fields])
        return [Instance(study, _value(i, "0020000E", ""), _value(i, "00080018", ""),
                         _value(i, "00080016", ""), _value(i, "00080060", ""),
                         _value(i, "0008103E", ""), _value(i, "00280010"),
                         int(_value(i, "00280008", 1) or 1)) for i in items]

    def metadata(self, inst: Instance) -> pydicom.Dataset:
        r = self._request("GET", f"studies/{inst.study}/series/{inst.series}/instances/"
                                 f"{inst.sop}/metadata",
                          headers={"Accept": "application/dicom+json"})
        from .results import no_values_in_messages

        with no_values_in_messages():
            return pydicom.Dataset.from_json(r.json()[0])

    def retrieve(self, inst: Instance) -> bytes:
        """The instance as a Part 10 file, in whatever transfer syntax the server holds."""
        r = self._request("GET", f"studies/{inst.study}/series/{inst.series}/instances/"
                                 f"{inst.sop}",
                          headers={"Accept": f'{DICOM_PART}; transfer-syntax=*'})
        parts = multipart_parts(r.headers.get("content-type", ""), r.content)
        if len(parts) != 1:
            raise RequestFailed(f"WADO-RS of instance {inst.sop}: {len(parts)} parts, not 1")
        return parts[0]

    def store(self, files: list[bytes]) -> tuple[set[str], dict[str, str]]:
        """STOW-RS: (SOP Instance UIDs stored, {SOP Instance UID: failure reason})."""
        boundary = uuid.uuid4().hex
        body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom"
                        b"\r\n\r\n" + f + b"\r\n" for f in files) + f"--{boundary}--\r\n".encode()
        try:
            r = self._request("POST", "studies", content=body,
                              headers={"Content-Type": f"{DICOM_PART}; boundary={boundary}",
                                       "Accept": "application/dicom+json"})
        except RequestFailed as e:  # 409 & co.: nothing stored
            return set(), {"*": str(e)}
        answer = r.json() if r.content else {}
        stored = {_value(s, "00081155") for s in answer.get("00081199", {}).get("Value", [])}
        failed = {_value(s, "00081155"): f"refused (reason {_value(s, '00081197')})"
                  for s in answer.get("00081198", {}).get("Value", [])}
        return stored - {None}, failed


class Spool:
    """Results not yet stored, as Part 10 files, one folder per server. A result is written
    here before it is sent and removed only once the server confirmed it: a crash, a server
    that goes down or refuses loses nothing, and the next run sends what is left."""

    def __init__(self, root: str | Path, url: str):
        self.folder = Path(root) / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]

    def add(self, ds: pydicom.Dataset, kind: str) -> Path:
        from .results import save_atomic

        return save_atomic(ds, self.folder / f"{kind}_{ds.SOPInstanceUID}.dcm")

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm")) if self.folder.is_dir() else []

    def covered(self, checksum: str) -> set[str]:
        """Source SOP Instance UIDs whose result from this model waits here."""
        from .results import no_values_in_messages, result_of

        done = set()
        for path in self.folder.glob("SR_*.dcm") if self.folder.is_dir() else []:
            with no_values_in_messages():
                result = result_of(pydicom.dcmread(path, force=True))
            if result and result["checksum"] == checksum:
                done.update(result["source_uids"])
        return done

    @staticmethod
    def sop_of(path: Path) -> str:
        return path.stem.split("_", 1)[1]

    @staticmethod
    def remove(path: Path) -> None:
        os.unlink(path)
