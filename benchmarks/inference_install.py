"""The inference install (no PyTorch) beside the full one: size, start-up, memory, answers.

    python benchmarks/inference_install.py --infer-venv /work/venv-infer \
        --full-venv .venv [--runs 5] [--requests 160] [--json out.json]

--infer-venv: a virtual environment with only `pip install pneumoscan` (the wheel);
--full-venv: one with the training extra, run on this source tree with `--runtime torch`
(what `pneumoscan predict` / `serve` computed before the shipped ONNX graphs). Figures:
1. disk size of each environment (du);
2. `pneumoscan predict IMAGE` from process start to exit, wall and CPU seconds (--runs each);
3. every test-split image scored by both: max |probability difference|, label, etiology and
   OOD-flag disagreements (binary and etiology models);
4. `pneumoscan serve`: peak resident memory (VmHWM) while 16 client threads send the 16
   full-size originals of examples/ (--requests in all), and the answers of the two servers
   compared.
Not a test: the figures depend on the machine and its load (printed with them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def venv_size_mb(venv: Path) -> float:
    out = subprocess.run(["du", "-sb", str(venv)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0]) / 2**20


def command(venv: Path, full: bool) -> tuple[list[str], dict]:
    """How to run the CLI from `venv`: the full one on this source tree with torch forced,
    the inference one from its installed wheel, default runtime."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if full:
        env["PYTHONPATH"] = str(REPO / "src")
    return [str(venv / "bin" / "python"), "-m", "pneumoscan.cli"], env


def timed(argv: list[str], env: dict) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stdout


def start_up(venv: Path, full: bool, runs: int) -> dict:
    cli, env = command(venv, full)
    image = str(sorted(EXAMPLES.rglob("*.jpeg"))[0])
    extra = ["--runtime", "torch"] if full else []
    timed([*cli, "predict", image, *extra], env)  # warm the page cache
    walls, cpus = zip(*[timed([*cli, "predict", image, *extra], env)[:2] for _ in range(runs)])
    return {"wall_s": sorted(walls)[len(walls) // 2], "wall_min_s": min(walls),
            "cpu_s": sorted(cpus)[len(cpus) // 2]}


def scores(venv: Path, full: bool, folder: Path, model: str) -> list[dict]:
    cli, env = command(venv, full)
    extra = ["--runtime", "torch"] if full else []
    out = subprocess.run([*cli, "predict", str(folder), "--model", model, "--format", "json",
                          *extra], env=env, capture_output=True, text=True)
    return json.loads(out.stdout)["predictions"]


def parity(a: list[dict], b: list[dict]) -> dict:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    ok = [(x, y) for x, y in zip(a, b) if not x["error"] and not y["error"]]
    dp = max(abs(x["probability"] - y["probability"]) for x, y in ok)
    dc = max(abs(x["class_probabilities"][k] - y["class_probabilities"][k])
             for x, y in ok for k in x["class_probabilities"])
    return {"n": len(ok), "max_abs_prob_diff": dp, "max_abs_class_prob_diff": dc,
            "label_flips": sum(x["label"] != y["label"] for x, y in ok),
            "etiology_flips": sum(x["etiology"] != y["etiology"] for x, y in ok),
            "ood_flag_flips": sum(x["ood"] != y["ood"] for x, y in ok)}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_load(venv: Path, full: bool, requests: int, clients: int = 16) -> dict:
    cli, env = command(venv, full)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ["--runtime", "torch"] if full else []
    proc = subprocess.Popen([*cli, "serve", "--port", str(port), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1500):
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        idle = peak_rss_mb(proc.pid)
        originals = [(p.name, p.read_bytes()) for p in sorted(EXAMPLES.rglob("*.jpeg"))]
        answers, lock = {}, threading.Lock()

        def one(i: int) -> None:
            name, data = originals[i % len(originals)]
            with httpx.Client(timeout=300) as c:
                r = c.post(f"{url}/v1/predict", files={"file": (name, data, "image/jpeg")})
            assert r.status_code == 200, r.text
            with lock:
                answers[name] = r.json()

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(requests)))
        seconds = time.perf_counter() - start
        return {"idle_peak_rss_mb": idle, "peak_rss_mb": peak_rss_mb(proc.pid),
                "requests": requests, "clients": clients, "seconds": seconds,
                "answers": answers}
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--infer-venv", type=Path, required=True)
    parser.add_argument("--full-venv", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "PNEUMOSCAN_DATA", REPO / "data" / "chest_xray")))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--skip", nargs="*", default=[], choices=("size", "start", "parity",
                                                                  "serve"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    venvs = {"inference": (args.infer_venv, False), "full (torch)": (args.full_venv, True)}
    out: dict = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}}
    if "size" not in args.skip:
        out["venv_mb"] = {k: round(venv_size_mb(v), 1) for k, (v, _) in venvs.items()}
        print("venv MB:", out["venv_mb"], flush=True)
    if "start" not in args.skip:
        out["predict_one_image"] = {k: start_up(v, f, args.runs) for k, (v, f) in venvs.items()}
        print("predict one image:", out["predict_one_image"], flush=True)
    if "parity" not in args.skip:
        out["parity_test_split"] = {}
        for model in ("default", "etiology"):
            a, b = (scores(v, f, args.data / "test", model) for v, f in venvs.values())
            out["parity_test_split"][model] = parity(a, b)
            print(f"parity {model}:", out["parity_test_split"][model], flush=True)
    if "serve" not in args.skip:
        runs = {k: serve_load(v, f, args.requests) for k, (v, f) in venvs.items()}
        a, b = (r.pop("answers") for r in runs.values())
        runs["answers_max_abs_prob_diff"] = max(abs(a[k]["probability"] - b[k]["probability"])
                                                for k in a)
        runs["answers_label_flips"] = sum(a[k]["label"] != b[k]["label"] for k in a)
        out["serve_16_clients_originals"] = runs
        print("serve:", runs, flush=True)
    out["machine"]["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
