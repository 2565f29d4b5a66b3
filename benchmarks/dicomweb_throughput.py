"""Throughput of `pneumoscan dicomweb --once` over N one-image studies in a real Orthanc,
beside `pneumoscan predict` (and `predict --dicom-out`) on the same DICOM files. Each command
runs as its own process, timed wall clock from start to exit (start-up included); the ONNX
export is cached beforehand so no timing includes it. Figures, not a test.

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


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pneumoscan.cli", *argv], env=env,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return seconds


def dicomweb(files: list[Path], folder: Path, spool: Path, env: dict) -> float:
    """Seconds of `dicomweb --once` over a fresh Orthanc holding `files`."""
    server = Orthanc(folder).start()
    try:
        for f in files:
            server.upload(f)
        seconds = timed(["dicomweb", server.dicomweb, "--once", "--spool", str(spool)], env)
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
        rows: dict[str, list[float]] = {"predict": [], "predict --dicom-out": [],
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
    base = min(rows["predict"])
    result = {"studies": len(files), "load_average_1min_before_each": loads,
              "seconds": rows,
              "images_per_s": {k: len(files) / min(v) for k, v in rows.items()},
              "time_ratio_to_predict": {k: min(v) / base for k, v in rows.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
