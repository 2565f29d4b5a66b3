"""Throughput of `pneumoscan dicomweb --once` over N one-image studies in a real Orthanc,
beside `pneumoscan predict` (and `predict --dicom-out`) on the same DICOM files. Each command
runs as its own process, timed wall clock from start to exit (start-up included) and by CPU
seconds (the process's user + system time, plus Orthanc's for dicomweb): on a CPU shared with
other jobs the wall clock swings several-fold, CPU time much less. The ONNX export is cached
beforehand so no timing includes it. Figures, not a test.

    PYTHONPATH=src PNEUMOSCAN_DATA=/work/shared/data/chest_xray \\
        python benchmarks/dicomweb_throughput.py [--studies 100] [--repeats 1]

Needs the Debian packages orthanc and orthanc-dicomweb (tests/orthanc.py starts a throwaway
server on a free loopback port). Inputs: the first N test X-rays of $PNEUMOSCAN_DATA (224 px
copies) as 8-bit CR instances with synthetic patient tags, one study each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pneumoscan.data import default_data_dir  # noqa: E402
from tests.dicom_inputs import radiograph, write  # noqa: E402
from tests.orthanc import Orthanc  # noqa: E402


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(argv: list[str], env: dict, server_pid: int | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one pneumoscan command (+ the server's CPU)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = cpu_of(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pneumoscan.cli", *argv], env=env,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if server_pid:
        cpu += cpu_of(server_pid) - server_before
    if out.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return seconds, cpu


def dicomweb(files: list[Path], folder: Path, spool: Path, env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of `dicomweb --once` over a fresh Orthanc holding `files`."""
    server = Orthanc(folder).start()
    try:
        for f in files:
            server.upload(f)
        seconds = timed(["dicomweb", server.dicomweb, "--once", "--spool", str(spool)], env,
                        server.proc.pid)
        assert server.count_instances() == 3 * len(files), "not every result stored"
        return seconds
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    data = Path(default_data_dir())
    xrays = sorted((data / "test").glob("*/*.jpeg"))[::3][:args.studies]
    with tempfile.TemporaryDirectory(prefix="dicomweb-bench-") as tmp:
        tmp = Path(tmp)
        files = [write(radiograph(x), tmp / "in" / f"{i:04d}.dcm") for i, x in enumerate(xrays)]
        env = {**os.environ, "PNEUMOSCAN_CACHE": str(tmp / "cache"),
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"),
                                              os.environ.get("PYTHONPATH", "")])}
        timed(["predict", *map(str, files[:32]), "--format", "json"], env)  # cache the export
        rows: dict[str, list[tuple[float, float]]] = {"predict": [], "predict --dicom-out": [],
                                        "dicomweb --once": []}
        loads = []
        for r in range(args.repeats):  # the order alternates: contention drifts
            order = list(rows) if r % 2 == 0 else list(rows)[::-1]
            for name in order:
                loads.append(os.getloadavg()[0])
                if name == "predict":
                    rows[name].append(timed(["predict", *map(str, files), "--format", "json"],
                                            env))
                elif name == "predict --dicom-out":
                    rows[name].append(timed(["predict", *map(str, files), "--format", "json",
                                             "--dicom-out", str(tmp / f"out{r}")], env))
                else:
                    rows[name].append(dicomweb(files, tmp / f"orthanc{r}", tmp / "spool",
                                               env))
    wall = {k: [w for w, _ in v] for k, v in rows.items()}
    cpu = {k: [c for _, c in v] for k, v in rows.items()}
    result = {"studies": len(files), "load_average_1min_before_each": loads,
              "wall_seconds": wall, "cpu_seconds": cpu,
              "images_per_wall_s_best": {k: len(files) / min(v) for k, v in wall.items()},
              "wall_ratio_to_predict_best": {k: min(v) / min(wall["predict"])
                                             for k, v in wall.items()},
              "cpu_ratio_to_predict_best": {k: min(v) / min(cpu["predict"])
                                            for k, v in cpu.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
