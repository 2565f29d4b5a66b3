"""Latency, throughput and memory of `pneumoscan serve` on 127.0.0.1 (figures, not a test).

    python benchmarks/serve_load.py [--requests 500] [--concurrency 16] [--repeats 3]
        [--runtime torch|onnx]

Starts a real server (one worker) on a free local port, then
1. single-client latency of POST /v1/predict: a 224 px JPEG of the test split and a full-size
   original of examples/ (median and p95 over --single requests each, after a warm-up);
2. a mixed load: --requests requests from --concurrency client threads, about 60% 224 px
   X-rays, 20% full-size originals, 20% bad files (text, empty, truncated JPEG); every
   answer is checked (status, and probability against an in-process Predictor);
3. throughput of 224 px X-rays alone at --concurrency, vs batch predict (pneumoscan bench);
and prints the server's resident memory (now and peak). Phases 2-3 run --repeats times;
the median is printed. The client threads share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from pneumoscan.data import default_data_dir
from pneumoscan.inference.runtime import make_predictor

REPO = Path(__file__).resolve().parents[1]


def start_server(runtime: str = "torch", *options: str) -> tuple[str, subprocess.Popen]:
    """`pneumoscan serve` on a free loopback port (with more serve `options`), once /healthz
    answers; shared by load_run.py and bombs.py."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "pneumoscan.cli", "serve", "--port",
                             str(port), "--runtime", runtime, *options],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("server did not start")


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MiB of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def post(client: httpx.Client, url: str, name: str, data: bytes) -> tuple[int, dict, float]:
    t = time.perf_counter()
    r = client.post(f"{url}/v1/predict", files={"file": (name, data, "image/jpeg")})
    return r.status_code, r.json(), (time.perf_counter() - t) * 1000


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else values[0]


def single_latency(url: str, files: list[tuple[str, bytes]], n: int) -> list[float]:
    with httpx.Client(timeout=60) as c:
        post(c, url, *files[0])  # warm-up
        return [post(c, url, *files[i % len(files)])[2] for i in range(n)]


def run_load(url: str, jobs: list[tuple[str, bytes, str, int]], expected: dict,
             concurrency: int) -> dict:
    """jobs: (name, data, kind, expected status). Returns latencies per kind, wall, errors."""
    with httpx.Client(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:
        t = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            answers = list(pool.map(lambda j: post(c, url, j[0], j[1]), jobs))
        wall = time.perf_counter() - t
    latency, wrong, server_errors = {}, 0, 0
    for (name, _, kind, status), (got, body, ms) in zip(jobs, answers):
        latency.setdefault(kind, []).append(ms)
        server_errors += got >= 500
        ok = got == status and (status != 200
                                or abs(body["probability"] - expected[name]) < 1e-6)
        wrong += not ok
    return {"latency": latency, "wall": wall, "wrong": wrong, "5xx": server_errors}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--single", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                        help="the server's runtime (onnx: exported and checked here first)")
    args = parser.parse_args()

    small_paths = sorted((default_data_dir() / "test").rglob("*.jpeg"))[::16][:40]
    big_paths = sorted((REPO / "examples").rglob("*.jpeg"))
    if not small_paths:
        sys.exit("no test split: set PNEUMOSCAN_DATA")
    # The same runtime as the server's; with onnx this exports and checks the graph into the
    # cache that `serve --runtime onnx` reads.
    predictor = make_predictor(None, args.runtime, [str(p) for p in small_paths])
    expected = {p.name: r.probability for p, r in
                zip(small_paths + big_paths,
                    predictor.predict([str(p) for p in small_paths + big_paths], batch_size=1))}
    small = [(p.name, p.read_bytes()) for p in small_paths]
    big = [(p.name, p.read_bytes()) for p in big_paths]
    bad = [("notes.txt", b"not an image", 415), ("empty.jpeg", b"", 422),
           ("cut.jpeg", big[0][1][:5000], 422)]

    rng = random.Random(0)
    mixed = []
    for i in range(args.requests):
        u = rng.random()
        if u < 0.6:
            mixed.append((*small[i % len(small)], "224 px", 200))
        elif u < 0.8:
            mixed.append((*big[i % len(big)], "full-size", 200))
        else:
            name, data, status = bad[i % len(bad)]
            mixed.append((name, data, "bad file", status))
    only_small = [(*small[i % len(small)], "224 px", 200) for i in range(args.requests)]

    url, proc = start_server(args.runtime)
    try:
        cpu = platform.processor() or platform.machine()
        print(f"machine: {cpu}, {os.cpu_count()} cores; server: 1 worker on 127.0.0.1, "
              f"runtime {args.runtime}; "
              f"median of {args.repeats} runs where repeated")
        print(f"server memory after start: {rss_mb(proc.pid)[0]:.0f} MiB RSS")
        print("\nsingle client, POST /v1/predict latency (ms):")
        for kind, files in (("224 px JPEG", small), ("full-size original", big)):
            ms = single_latency(url, files, args.single)
            print(f"  {kind:20s} p50 {statistics.median(ms):6.1f}   p95 {pct(ms, 95):6.1f}"
                  f"   (n={len(ms)})")

        for title, jobs in ((f"mixed load ({args.requests} requests: ~60% 224 px, ~20% "
                             f"full-size, ~20% bad files)", mixed),
                            (f"224 px only ({args.requests} requests)", only_small)):
            runs = [run_load(url, jobs, expected, args.concurrency)
                    for _ in range(args.repeats)]
            valid = sum(1 for j in jobs if j[3] == 200)
            print(f"\n{title}, {args.concurrency} concurrent clients:")
            print(f"  5xx answers: {sum(r['5xx'] for r in runs)}; wrong answers "
                  f"(status or probability): {sum(r['wrong'] for r in runs)}")
            wall = statistics.median(r["wall"] for r in runs)
            print(f"  wall {wall:.2f} s; {len(jobs) / wall:.1f} requests/s, "
                  f"{valid / wall:.1f} valid images/s")
            for kind in runs[0]["latency"]:
                p50 = statistics.median(statistics.median(r["latency"][kind]) for r in runs)
                p95 = statistics.median(pct(r["latency"][kind], 95) for r in runs)
                print(f"  {kind:12s} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms")
        now, peak = rss_mb(proc.pid)
        print(f"\nserver memory: {now:.0f} MiB RSS now, {peak:.0f} MiB peak")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
