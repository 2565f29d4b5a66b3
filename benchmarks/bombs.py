"""What decompression bombs cost `pneumoscan serve` (figures, not a test; issue #18 item 2).

    python benchmarks/bombs.py [--max-megapixels 36]

Starts a real server (one worker, default settings) on a free loopback port, warms it up
with real X-rays, then sends one at a time:
  1. a deflated DICOM declaring 10,000 x 10,000 16-bit pixels (100 Mpx, ~195 KB on disk);
  2. a deflated DICOM declaring 64 x 64 over 300 MB of zeros (~300 KB);
  3. an encapsulated DICOM whose header says 64 x 64 and whose JPEG says 20,000 x 15,000;
  4. a 16-bit PNG just under the server's pixel limit (the costliest image it accepts);
then two of (4) at once while an unrelated request (a full-size original X-ray, and
/healthz) is timed. Prints each request's status and seconds, the server's resident memory
before, at its peak (sampled every 10 ms) and one second after each step.
Targets (issue #18): no request over 5 s or 1 GB of extra memory, the unrelated request
answered within 1 s, RSS back within 10% of its pre-attack level.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from serve_load import rss_mb, start_server  # noqa: E402

from tests.hostile_inputs import deflated_bomb, dicom_bytes, jpeg_declaring  # noqa: E402
from tests.test_dicom import _dataset  # noqa: E402


class Peak:
    """The largest RSS of a process while the block runs, sampled every 10 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid)[0])
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: what a request cost the server, whatever
    else the machine was running meanwhile."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post(url: str, name: str, data: bytes, route: str = "/v1/predict"):
    t = time.perf_counter()
    with httpx.Client(timeout=120) as c:
        r = c.post(f"{url}{route}", files={"file": (name, data)})
    return r.status_code, time.perf_counter() - t, r.json().get("detail", "")


def png16(pixels: int) -> bytes:
    side = int(pixels ** 0.5)
    a = np.zeros((side - 1, side), np.uint16)
    a[::7, ::3] = 65535
    a[1::5, ::2] = 1234
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-megapixels", type=float, default=36)
    args = ap.parse_args()
    limit = int(args.max_megapixels * 1e6)
    original = sorted((REPO / "examples" / "PNEUMONIA").glob("*.jpeg"))[0].read_bytes()
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = _dataset((64, 64), syntax=JPEGBaseline8Bit)
    ds.PixelData = encapsulate([jpeg_declaring(20_000, 15_000, REPO / "examples" / "NORMAL"
                                               / "NORMAL2-IM-1427-0001.jpeg")])
    ds["PixelData"].VR = "OB"
    bombs = [("deflated 100 Mpx DICOM", "bomb1.dcm",
              deflated_bomb(10_000, 10_000, 2 * 10_000 * 10_000)),
             ("deflated DICOM, 64x64 header over 300 MB", "bomb2.dcm",
              deflated_bomb(64, 64, 300 * 2**20)),
             ("encapsulated DICOM, 64x64 header, 20000x15000 JPEG", "bomb3.dcm",
              dicom_bytes(ds)),
             (f"16-bit PNG just under the limit ({limit / 1e6:.0f} Mpx)", "big16.png",
              png16(limit))]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}; "
          f"pixel limit {limit:,}")
    for label, _, data in bombs:
        print(f"#   {label}: {len(data) / 1024:,.0f} KB")
    url, proc = start_server("auto", "--max-megapixels", str(args.max_megapixels))
    try:
        small = _dataset((64, 64))
        small.PixelData = bytes(64 * 64)
        for _ in range(5):  # warm-up: the arenas of a server that has worked a little,
            post(url, "warm.jpeg", original)  # and pydicom imported
            post(url, "warm.dcm", dicom_bytes(small))
        calm = sorted(post(url, "calm.jpeg", original)[1] for _ in range(5))[2]
        time.sleep(1)
        before = rss_mb(proc.pid)[0]
        print(f"server RSS before: {before:,.0f} MiB; the unrelated full-size X-ray alone: "
              f"{calm:.2f} s (median of 5)")
        print("| request | status | seconds | server CPU s | peak RSS MiB (+) | RSS 1 s after |")
        print("|---|---|---|---|---|---|")
        for label, name, data in bombs:
            cpu = cpu_seconds(proc.pid)
            with Peak(proc.pid) as peak:
                status, seconds, detail = post(url, name, data)
            cpu = cpu_seconds(proc.pid) - cpu
            time.sleep(1)
            after = rss_mb(proc.pid)[0]
            print(f"| {label} | {status} | {seconds:.2f} | {cpu:.2f} | {peak.peak:,.0f} "
                  f"(+{peak.peak - before:,.0f}) | {after:,.0f} |")
            if status != 200:
                print(f"|   {detail[:110]} | | | | | |")
        # Two of the costliest accepted images at once, and an unrelated request meanwhile.
        big = bombs[-1]
        cpu = cpu_seconds(proc.pid)
        with Peak(proc.pid) as peak, ThreadPoolExecutor(4) as pool:
            attack = [pool.submit(post, url, big[1], big[2]) for _ in range(2)]
            time.sleep(0.3)  # both are being decoded
            t = time.perf_counter()
            health = httpx.get(f"{url}/healthz", timeout=60).status_code
            t_health = time.perf_counter() - t
            status_u, t_unrelated, _ = post(url, "unrelated.jpeg", original)
            results = [f.result() for f in attack]
        cpu = cpu_seconds(proc.pid) - cpu
        time.sleep(1)
        after = rss_mb(proc.pid)[0]
        for i, (status, seconds, _) in enumerate(results):
            print(f"| two at once: PNG {i + 1} | {status} | {seconds:.2f} | "
                  f"{cpu:.2f} (all four) | {peak.peak:,.0f} (+{peak.peak - before:,.0f}) | "
                  f"{after:,.0f} |")
        print(f"| unrelated full-size X-ray during the two | {status_u} | {t_unrelated:.2f} "
              f"| | | |")
        print(f"| unrelated /healthz during the two | {health} | {t_health:.3f} | | | |")
        print(f"server RSS after: {after:,.0f} MiB ({100 * (after - before) / before:+.1f}% of "
              f"before)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
