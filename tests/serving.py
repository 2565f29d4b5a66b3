"""Start a real `pneumoscan serve` process on a free local port (shared by the serve tests)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(log_path: Path, *extra: str, timeout: float = 90.0,
                   env: dict[str, str] | None = None):
    """Yield (base URL, process) of `pneumoscan serve` on 127.0.0.1, its output going to
    log_path (a file, so that a full pipe never blocks it); stop it afterwards. `env`: more
    environment variables for it."""
    port = free_port()
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    log = open(log_path, "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen([sys.executable, "-m", "pneumoscan.cli", "serve", "--host",
                             "127.0.0.1", "--port", str(port), *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}: {log_path.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def predict_cli_json(path: str) -> dict:
    """`pneumoscan predict --format json PATH`, parsed (the server runs the same shipped ONNX
    graph by default, so the two must agree to float precision)."""
    import json

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-m", "pneumoscan.cli", "predict", "--format", "json",
                          path],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)
