"""A real, throwaway Orthanc (Debian packages orthanc + orthanc-dicomweb) for the DICOMweb
tests and benchmark: its own config and storage folder, a free loopback port, no DICOM port,
stopped (by its own process id) when done."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def available() -> str | None:
    """None when Orthanc with its DICOMweb plugin can run here, else why not."""
    if shutil.which("Orthanc") is None:
        return "Orthanc not installed (apt-get install orthanc orthanc-dicomweb)"
    if not PLUGIN.is_file():
        return f"{PLUGIN} missing (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """start() / stop() / restart() on the same storage and port (to take it down mid-run)."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = Path(folder), port or free_port()
        self.proc: subprocess.Popen | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {"Name": "pneumoscan-test", "StorageDirectory": str(self.folder / "db"),
                  "IndexDirectory": str(self.folder / "db"), "HttpPort": self.port,
                  "DicomServerEnabled": False, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "Plugins": [str(PLUGIN)],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (self.folder / "orthanc.json").write_text(json.dumps(config))

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    def start(self, timeout: float = 60.0) -> Orthanc:
        log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen(["Orthanc", str(self.folder / "orthanc.json")],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}); see "
                                   f"{self.folder / 'orthanc.log'}")
            try:
                if httpx.get(f"{self.rest}/system", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on port {self.port} in {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None

    def upload(self, path: Path) -> None:
        r = httpx.post(f"{self.rest}/instances", content=Path(path).read_bytes(), timeout=60)
        r.raise_for_status()

    def count_instances(self) -> int:
        return httpx.get(f"{self.rest}/statistics", timeout=30).json()["CountInstances"]
