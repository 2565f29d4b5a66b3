"""Print the memory of building the training arrays with the memory vs the disk cache, for the
train split listed once (1x) and five times (5x) in a manifest, and how fast batches are read
from each (figures, not a pass/fail test).

    python benchmarks/cache_memory.py [--copies 1 5] [--size 224] [--repeats 3]

Each case runs in a fresh process: read the manifest (sha256 of every file), carve the
patient-grouped val split, decode train and val into the cache (what `pneumoscan train` does
before its first step), then report the process's peak RSS (VmHWM), its anonymous memory
(RssAnon: what cannot be dropped under pressure; file-backed memmap pages can), the time,
and RssAnon again after the read passes.
Read speed: images/s of one pass of shuffled batches of 32 (DataLoader over the train
ImageSet, no augmentation, one torch thread), median over repeats, from the in-memory array
vs the memmap with the file in the page cache (just written; a cold read from disk is slower).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status(key: str) -> int:
    """A /proc/self/status figure in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024
    return -1


def child(mode: str, manifest: str, cache_dir: str, size: int, repeats: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from pneumoscan.data import cache, load_records, split_train_val
    from pneumoscan.training.train import ImageSet

    before = _status("VmRSS")
    t = time.perf_counter()
    records = [r for r in load_records(manifest) if r.split == "train"]
    train, val = split_train_val(records, 0.1, 42)
    x_tr, y_tr, _ = cache.decode(train, size, "bilinear", mode, Path(cache_dir))
    x_va, _, _ = cache.decode(val, size, "bilinear", mode, Path(cache_dir))
    build_s = time.perf_counter() - t
    out = {"mode": mode, "n_images": len(x_tr) + len(x_va), "build_s": round(build_s, 1),
           "rss_before_mib": before, "peak_rss_mib": _status("VmHWM"),
           "rss_anon_mib": _status("RssAnon"),
           "decoded_mib": round((len(x_tr) + len(x_va)) * size * size / 2**20)}
    rates = []
    # One thread: collating a batch is a memory copy, and on a shared machine an OpenMP team
    # spinning on busy cores made it 1000x slower in one run.
    torch.set_num_threads(1)
    for _ in range(repeats):
        loader = DataLoader(ImageSet(x_tr, y_tr), batch_size=32, shuffle=True)
        t = time.perf_counter()
        n = sum(len(x) for x, _, _ in loader)
        rates.append(n / (time.perf_counter() - t))
    out["read_images_per_s"] = round(statistics.median(rates))
    out["rss_anon_after_reading_mib"] = _status("RssAnon")
    return out


def write_manifest(data_dir: Path, path: Path, copies: int) -> int:
    from pneumoscan.data import scan

    train = [r for r in scan(data_dir) if r.split == "train"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient"])  # no sha256: read_manifest hashes, as in use
        for _ in range(copies):  # repeated images: the same patient, so the split stays grouped
            w.writerows((r.path, r.label, r.patient) for r in train)
    return len(train) * copies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None)
    p.add_argument("--copies", type=int, nargs="+", default=[1, 5])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=3, metavar=("MODE", "MANIFEST", "CACHE_DIR"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.size, args.repeats)))
        return
    from pneumoscan.data import default_data_dir

    data_dir = Path(args.data or default_data_dir())
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"{os.cpu_count()} CPUs, {ram_gib:.0f} GiB RAM, load average "
          f"{os.getloadavg()[0]:.1f}; {data_dir} train split at {args.size} px")
    print(f"{'copies':>6} {'cache':>6} {'images':>7} {'decoded MiB':>11} {'build s':>7} "
          f"{'RSS before':>10} {'peak RSS':>8} {'RssAnon':>7} {'read img/s':>10} "
          f"{'RssAnon after read':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for copies in args.copies:
            manifest = Path(tmp) / f"train_x{copies}.csv"
            write_manifest(data_dir, manifest, copies)
            for mode in ("memory", "disk"):
                cache_dir = Path(tmp) / f"cache_{copies}_{mode}"
                cmd = [sys.executable, __file__, "--size", str(args.size), "--repeats",
                       str(args.repeats), "--child", mode, str(manifest), str(cache_dir)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                              text=True).stdout.splitlines()[-1])
                print(f"{copies:>5}x {mode:>6} {r['n_images']:>7} {r['decoded_mib']:>11} "
                      f"{r['build_s']:>7} {r['rss_before_mib']:>10} {r['peak_rss_mib']:>8} "
                      f"{r['rss_anon_mib']:>7} {r['read_images_per_s']:>10} "
                      f"{r['rss_anon_after_reading_mib']:>18}", flush=True)
                shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
