"""Figures of the in-browser site (`pneumoscan export --web`) in headless Debian chromium:
parity with `pneumoscan predict` over the 16 examples, the full-size originals and 100 test
images; page-ready time; per-image time; Grad-CAM's extra time; the tab's memory over a
200-image worklist. Wall times and the CPU seconds of chromium's processes are both printed:
on a machine shared with other jobs the wall time measures the contention too.

    PYTHONPATH=src python benchmarks/web_screening.py [--data DIR] [--n-worklist 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pneumoscan.data import default_data_dir  # noqa: E402
from tests.conftest import EXAMPLES  # noqa: E402
from tests.web_harness import (  # noqa: E402
    CHROMIUM,
    FLAGS,
    SCORE_JS,
    open_site,
    python_predictions,
    serve_root,
    static_server,
)

CLK = os.sysconf("SC_CLK_TCK")



def site_under_test(site: str | None, model: str | None, data: Path, tmp: Path) -> Path:
    """The exported site to measure: `site` as given, or `model` exported into tmp/site."""
    if site:
        return Path(site)
    from pneumoscan.web import build_site
    from pneumoscan.web.build import parity_images

    build_site(tmp / "site", model, lambda: parity_images(model, data))
    return tmp / "site"

def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            pass
    return total / CLK


def _renderer_rss_mib(pids: list[int]) -> float:
    """Resident memory of chromium's renderer processes (the tab)."""
    total = 0
    for p in pids:
        try:
            if b"--type=renderer" not in Path(f"/proc/{p}/cmdline").read_bytes():
                continue
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _browser_pid(browser_pids_before: set[int]) -> int:
    new = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
           and int(d.name) not in browser_pids_before]
    for p in new:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        # /usr/bin/chromium is a wrapper script that execs /usr/lib/chromium/chromium
        if cmd.split(b"\0")[0].endswith(b"/chromium") and b"--type=" not in cmd:
            return p
    raise RuntimeError("chromium's browser process not found")


def launch_chromium(playwright):
    """Debian chromium, headless, and a function listing its process tree's pids now (the
    browser process and every renderer and helper it started), for CPU accounting."""
    before = {int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()}
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
    top = _browser_pid(before)
    return browser, lambda: _tree(top)


def worklist_folder(files: list[Path], tmp: Path) -> Path:
    """tmp/worklist holding copies of `files` in order (Playwright's folder upload skips
    symlinks), named NNN-name so that two files with one name stay two."""
    folder = tmp / "worklist"
    folder.mkdir()
    for i, f in enumerate(files):
        shutil.copyfile(f, folder / f"{i:03d}-{f.name}")
    return folder


def _url(path: Path, roots: dict[str, Path]) -> str:
    for prefix, folder in roots.items():
        if path.is_relative_to(folder):
            return f"/{prefix}/{path.relative_to(folder).as_posix()}"
    raise ValueError(path)


def parity(page, sets: dict[str, list[Path]], roots: dict[str, Path],
           model: str | None = None) -> list[dict]:
    rows = []
    for name, files in sets.items():
        wall = time.perf_counter()
        got = page.evaluate(SCORE_JS, [[_url(f, roots) for f in files], False])
        wall = time.perf_counter() - wall
        ref = python_predictions(files, *(["--model", model] if model else []))
        dp = np.array([abs(g["probability"] - ref[str(f)]["probability"])
                       for f, g in zip(files, got)])
        rows.append({"set": name, "n": len(files), "max_dp": float(dp.max()),
                     "mean_dp": float(dp.mean()),
                     "labels_equal": sum(g["label"] == ref[str(f)]["label"]
                                         for f, g in zip(files, got)),
                     "etiology_equal": sum(g["etiology"] == ref[str(f)]["etiology"]
                                           for f, g in zip(files, got)),
                     "ood_equal": sum(g["ood"]["flagged"] == ref[str(f)]["ood"]
                                      for f, g in zip(files, got)),
                     "ms_median": statistics.median(g["elapsed_ms"] for g in got),
                     "wall_s": wall})
    return rows


def gradcam_extra(page, files: list[Path], roots: dict[str, Path]) -> dict:
    urls = [_url(f, roots) for f in files]
    page.evaluate(SCORE_JS, [urls[:2], True])  # warm both paths
    plain = page.evaluate(SCORE_JS, [urls, False])
    explained = page.evaluate(SCORE_JS, [urls, True])
    return {"n": len(files), "score_ms": statistics.median(g["elapsed_ms"] for g in plain),
            "score_with_heatmap_png_ms": statistics.median(g["elapsed_ms"] for g in explained)}


def worklist(browser, origin: str, folder: Path, pids) -> dict:
    page, _ = open_site(browser, origin)
    peak = {"rss": _renderer_rss_mib(pids())}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _renderer_rss_mib(pids()))
            time.sleep(0.2)

    start_rss = peak["rss"]
    cpu0, t0 = _cpu_seconds(pids()), time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    page.set_input_files("#folder", str(folder))
    page.wait_for_selector("#progress-line[data-state=done]", timeout=3_600_000)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(pids()) - cpu0
    n = len(page.query_selector_all("#worklist tbody tr"))
    t = time.perf_counter()
    page.click("#worklist tbody tr:nth-child(1)")
    page.wait_for_selector("#viewer:not([hidden])")
    view_ms = float(page.get_attribute("#viewer", "data-render-ms"))
    click_wall = (time.perf_counter() - t) * 1000
    heap = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize : null")
    stop.set()
    thread.join()
    page.close()
    return {"n": n, "wall_s": wall, "per_image_ms": 1000 * wall / n,
            "cpu_per_image_ms": 1000 * cpu / n, "renderer_rss_start_mib": start_rss,
            "renderer_rss_peak_mib": peak["rss"],
            "js_heap_mib": heap / 2**20 if heap else None,
            "view_click_render_ms": view_ms, "view_click_wall_ms": click_wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--site", default=None, help="an exported site (default: export one)")
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--n-worklist", type=int, default=200)
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--model", default=None, help="run folder or shipped name (default model)")
    ap.add_argument("--parity-only", action="store_true", help="only the parity table")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    data = Path(args.data).resolve()
    originals = data.parent / "originals"
    tmp = Path(tempfile.mkdtemp(prefix="web-bench-"))
    site = site_under_test(args.site, args.model, data, tmp)
    roots = {"examples": EXAMPLES, "originals": originals, "data": data}
    root = serve_root(tmp / "root", site, **roots)
    tests = sorted((data / "test").rglob("*.jpeg"))
    sets = {"examples": sorted(EXAMPLES.rglob("*.jpeg")),
            "originals": sorted(originals.rglob("*.jpeg")),
            "test": tests[::max(1, len(tests) // args.n_test)][:args.n_test]}
    # The worklist: full-size originals first, then test copies, as one dropped folder.
    folder = worklist_folder((sets["originals"] + tests)[:args.n_worklist], tmp)

    with static_server(root) as origin, sync_playwright() as p:
        browser, pids = launch_chromium(p)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the "
              f"start (other jobs included); headless chromium, WebAssembly, 1 thread",
              flush=True)
        loads = []
        for _ in range(0 if args.parity_only else args.loads):  # fresh contexts: no cache
            ctx = browser.new_context()
            page = ctx.new_page()
            cpu0, t = _cpu_seconds(pids()), time.perf_counter()
            page.goto(f"{origin}/site/")
            page.wait_for_selector("body[data-ready=true]", timeout=300_000)
            loads.append(((time.perf_counter() - t) * 1000,
                          float(page.get_attribute("#status", "data-load-ms")),
                          1000 * (_cpu_seconds(pids()) - cpu0)))
            parts = json.loads(page.get_attribute("#status", "data-timings"))
            print("  load parts (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()))
            ctx.close()
        print(f"page ready (goto -> model loaded and warmed), {len(loads)} cold loads: wall ms "
              + ", ".join(f"{w:.0f}" for w, _, _ in loads) + "; in-page load ms "
              + ", ".join(f"{m:.0f}" for _, m, _ in loads) + "; chromium CPU ms "
              + ", ".join(f"{c:.0f}" for _, _, c in loads), flush=True)
        page, requests = open_site(browser, origin)
        print("\n| set | n | max abs dp | mean abs dp | labels equal | OOD flags equal | "
              "etiology equal | median ms/image (API, end to end) |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        for name, files in sets.items():
            r = parity(page, {name: files}, roots, args.model)[0]
            print(f"| {r['set']} | {r['n']} | {r['max_dp']:.4f} | {r['mean_dp']:.5f} | "
                  f"{r['labels_equal']}/{r['n']} | {r['ood_equal']}/{r['n']} | "
                  f"{r['etiology_equal']}/{r['n']} | "
                  f"{r['ms_median']:.0f} |", flush=True)
        if args.parity_only:
            browser.close()
            return
        cam = gradcam_extra(page, sets["examples"][:8], roots)
        print(f"\nGrad-CAM: median ms/image {cam['score_ms']:.0f} without, "
              f"{cam['score_with_heatmap_png_ms']:.0f} with the CAM rendered to a PNG "
              f"(the CAM itself comes from the same forward pass)", flush=True)
        page.close()
        wl = worklist(browser, origin, folder, pids)
        print(f"worklist of {wl['n']} images dropped as one folder: {wl['wall_s']:.1f} s wall, "
              f"{wl['per_image_ms']:.0f} ms/image wall, {wl['cpu_per_image_ms']:.0f} ms/image "
              f"chromium CPU time; tab (renderer) RSS {wl['renderer_rss_start_mib']:.0f} MiB "
              f"before, peak {wl['renderer_rss_peak_mib']:.0f} MiB; JS heap at the end "
              f"{wl['js_heap_mib']:.0f} MiB; row click -> X-ray with overlay drawn "
              f"{wl['view_click_render_ms']:.0f} ms in page "
              f"({wl['view_click_wall_ms']:.0f} ms as Playwright saw it)")
        browser.close()
    foreign = [u for u in requests if not u.startswith(origin) and not u.startswith("blob:")]
    print(f"requests outside {origin}: {len(foreign)}; load average at the end "
          f"{os.getloadavg()[0]:.1f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
