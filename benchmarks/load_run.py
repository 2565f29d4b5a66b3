"""A load run of `pneumoscan serve` on 127.0.0.1 with valid and hostile uploads (figures, not a
test; issue #18).

    python benchmarks/load_run.py [--clients 32] [--seconds 30] [--runtime auto]

Starts a real server (one worker, default settings) on a free local port, scores each valid
image once on its own (the single-request reference), then runs --clients client threads
for --seconds seconds, each posting a random pick of:
- valid X-rays: the 16 full-size originals of examples/ and 8 224 px test-split images;
- hostile files: a truncated JPEG (422), random bytes (415), a 1x1 PNG (422), a text file
  named .png (415), and now and then an upload over the 20 MB limit (413).
Prints requests, 5xx answers (must be 0), wrong answers (a valid image whose probability
differs from its reference by more than 1e-6, or any unexpected status; must be 0),
client-side errors (connection reset or timeout), p50/p99 latency and the server's peak
resident memory. The client threads share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx

from pneumoscan.data import default_data_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from serve_load import rss_mb, start_server  # noqa: E402

TOLERANCE = 1e-6
OVERSIZE = 21 * 2**20  # over the server's default 20 MB limit


def tiny_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))


def uploads() -> tuple[dict[str, bytes], dict[str, tuple[bytes, int]]]:
    """(valid name -> bytes, hostile name -> (bytes, expected status))."""
    valid = {p.name: p.read_bytes() for p in sorted((REPO / "examples").rglob("*.jpeg"))}
    test = default_data_dir() / "test"
    for label in ("NORMAL", "PNEUMONIA"):
        for p in sorted((test / label).glob("*.jpeg"))[:4]:
            valid[p.name] = p.read_bytes()
    original = next(iter(valid.values()))
    hostile = {
        "broken.jpeg": (original[:3000], 422),
        "noise.jpeg": (random.Random(0).randbytes(5000), 415),
        "tiny.png": (tiny_png(), 422),
        "notes.png": (b"these are my notes, not an image\n" * 20, 415),
        "huge.jpeg": (b"\xff\xd8\xff" + bytes(OVERSIZE), 413),
    }
    return valid, hostile


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.server_errors = self.wrong = self.client_errors = 0
        self.latencies: list[float] = []
        self.by_status: dict[int, int] = {}
        self.examples: list[str] = []

    def add(self, status: int | None, ms: float, wrong: str | None) -> None:
        with self.lock:
            self.requests += 1
            if status is None:
                self.client_errors += 1
                return
            self.latencies.append(ms)
            self.by_status[status] = self.by_status.get(status, 0) + 1
            self.server_errors += status >= 500
            if wrong:
                self.wrong += 1
                if len(self.examples) < 5:
                    self.examples.append(wrong)


def client(url: str, jobs: list[tuple[str, bytes, int | float]], stop: float, seed: int,
           tally: Tally) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=120) as c:
        while time.monotonic() < stop:
            name, data, expect = rng.choice(jobs)
            t = time.perf_counter()
            try:
                r = c.post(f"{url}/v1/predict", files={"file": (name, data, "image/jpeg")})
            except httpx.TransportError as e:
                # a server that refuses an oversize body at once may close before it is sent
                tally.add(None, 0, None if name == "huge.jpeg" else f"{name}: {e!r}")
                continue
            ms = (time.perf_counter() - t) * 1000
            wrong = None
            if isinstance(expect, float):
                if r.status_code != 200:
                    wrong = f"{name}: status {r.status_code} {r.text[:100]}"
                elif abs(r.json()["probability"] - expect) > TOLERANCE:
                    wrong = f"{name}: {r.json()['probability']} vs reference {expect}"
            elif r.status_code != expect:
                wrong = f"{name}: status {r.status_code}, expected {expect}"
            tally.add(r.status_code, ms, wrong)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, load average "
            f"{os.getloadavg()[0]:.1f} at start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--runtime", default="auto")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    valid, hostile = uploads()
    url, proc = start_server(args.runtime)
    try:
        rss_start = rss_mb(proc.pid)[0]
        reference = {}
        with httpx.Client(timeout=60) as c:
            for name, data in valid.items():
                r = c.post(f"{url}/v1/predict", files={"file": (name, data, "image/jpeg")})
                r.raise_for_status()
                reference[name] = r.json()["probability"]
        # ~80% valid, ~19% hostile files of the first four kinds, ~1% oversize uploads
        jobs = [(n, d, reference[n]) for n, d in valid.items()] * 8
        jobs += [(n, d, s) for n, (d, s) in hostile.items() if n != "huge.jpeg"] * 9
        jobs += [("huge.jpeg", *hostile["huge.jpeg"])] * 2
        tally = Tally()
        stop = time.monotonic() + args.seconds
        threads = [threading.Thread(target=client, args=(url, jobs, stop, i, tally))
                   for i in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        rss_end, rss_peak = rss_mb(proc.pid)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    lat = tally.latencies
    print(f"load: {args.clients} clients for {args.seconds:g} s ({elapsed:.1f} s with the "
          f"last answers), runtime {args.runtime}")
    print(f"requests {tally.requests} ({tally.requests / elapsed:.1f}/s); statuses "
          f"{dict(sorted(tally.by_status.items()))}; client-side errors "
          f"{tally.client_errors}")
    print(f"5xx {tally.server_errors}; wrong answers {tally.wrong}")
    for e in tally.examples:
        print(f"  wrong: {e}")
    print(f"latency p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms")
    print(f"server RSS: {rss_start:.0f} MiB after start, {rss_end:.0f} MiB at the end, peak "
          f"{rss_peak:.0f} MiB; server alive at the end: {alive}")


if __name__ == "__main__":
    main()
