"""Speed and memory of the in-browser site (`pneumoscan export --web`) in headless Debian
chromium: page ready (navigation -> model loaded and warmed, cold: a fresh browser context
each run, so nothing is cached), per image end to end through `window.pneumoscan.score`,
Grad-CAM's extra time, and a worklist of many images dropped as one folder (time, the tab's
memory, the longest task that blocked the page's main thread). Prints medians of several
runs, wall time beside the CPU time chromium's processes spent: on a machine shared with other
jobs the wall time measures the contention too.

    PYTHONPATH=src python benchmarks/browser_speed.py [--model etiology] [--runs 5]
        [--images 20] [--worklist 200] [--steps] [--site DIR] [--data DIR]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.web_screening import (  # noqa: E402
    _cpu_seconds,
    _renderer_rss_mib,
    launch_chromium,
    site_under_test,
    worklist_folder,
)
from pneumoscan.data import default_data_dir  # noqa: E402
from tests.web_harness import serve_root, static_server  # noqa: E402

# Score each URL's image through the JS API, one after the other; per image the API's own
# elapsed_ms (decode + model + decision rules + CAM [+ PNG]) and the wall time around it.
TIMED_JS = """async ([urls, explain]) => {
  const blobs = await Promise.all(urls.map(async (u) => (await fetch(u)).blob()));
  const out = [];
  for (let i = 0; i < blobs.length; i++) {
    const t = performance.now();
    const r = await window.pneumoscan.score(blobs[i], {name: urls[i], explain});
    out.push({api: r.elapsed_ms, wall: performance.now() - t});
  }
  return out;
}"""

# Long tasks on the page's main thread (a frozen page): recorded from page start.
LONGTASKS_JS = """() => {
  window.__long = [];
  new PerformanceObserver((l) => {
    for (const e of l.getEntries()) window.__long.push(e.duration);
  }).observe({type: "longtask", buffered: true});
}"""


# --steps: the cold load taken apart, one step per evaluate, so that chromium's CPU time can
# be read between steps (a page of its own beside the site: ORT alone, no worker).
STEPS_HTML = """<!doctype html><html><body><script type="module" src="steps.js"></script></body>
</html>"""
STEPS_JS = """import * as ort from "./ort/ort.wasm.bundle.min.mjs";
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;
ort.env.wasm.wasmPaths = { wasm: new URL("ort/ort-wasm-simd-threaded.wasm", location.href).href };
const get = async (u) => new Uint8Array(await (await fetch(u)).arrayBuffer());
let graph, session;
window.steps = {
  runtime: async () => { await ort.InferenceSession.create(await get("model/identity.onnx")); },
  fetch: async () => { graph = await get("model/model.onnx"); },
  session: async (level) => { session = await ort.InferenceSession.create(graph, {
    executionProviders: ["wasm"], graphOptimizationLevel: level,
    freeDimensionOverrides: { batch: 1 } }); },
  run: async (n) => { for (let i = 0; i < n; i++) await session.run({ image: new ort.Tensor(
    "uint8", new Uint8Array(224 * 224), [1, 1, 224, 224]) }); },
};
document.body.dataset.ok = "1";
"""


def _run_queue_s(pids: list[int]) -> float:
    """Seconds the threads of these processes spent runnable but waiting for a CPU."""
    total = 0
    for p in pids:
        try:
            for t in Path(f"/proc/{p}/task").iterdir():
                total += int((t / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def steps(browser, origin: str, site: Path, pids, runs: int) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(tiny, site / "model" / "identity.onnx")
    (site / "steps.html").write_text(STEPS_HTML)
    (site / "steps.js").write_text(STEPS_JS)
    plan = [("runtime start-up (wasm compile + init)", "steps.runtime()"),
            ("model fetch", "steps.fetch()"), ("session", "(l) => steps.session(l)"),
            ("first run", "steps.run(1)"), ("runs 2-6 (each)", "steps.run(5)")]
    print("\ncold load taken apart (chromium CPU ms / wall ms per step; median of "
          f"{runs}; a fresh context each, then a reload for the return visit):")
    for level in ("all", "basic", "disabled"):
        rows: dict[str, list] = {}
        for _ in range(runs):
            ctx = browser.new_context()
            page = ctx.new_page()
            for visit in ("cold", "return"):
                if visit == "cold":
                    page.goto(f"{origin}/site/steps.html")
                else:
                    page.reload()
                page.wait_for_selector("body[data-ok]", state="attached")
                for name, js in plan:
                    cpu0, t = _cpu_seconds(pids()), time.perf_counter()
                    page.evaluate(js, level) if "(l)" in js else page.evaluate(js)
                    n = 5 if "2-6" in name else 1
                    rows.setdefault(f"{visit}: {name}", []).append(
                        ((_cpu_seconds(pids()) - cpu0) * 1000 / n,
                         (time.perf_counter() - t) * 1000 / n))
            ctx.close()
        print(f"  graphOptimizationLevel {level!r}: " + "; ".join(
            f"{k} {med([c for c, _ in v]):.0f}/{med([w for _, w in v]):.0f}"
            for k, v in rows.items()), flush=True)


def med(values) -> float:
    return statistics.median(values) if values else float("nan")


def cold_loads(browser, origin: str, pids, runs: int) -> list[dict]:
    out = []
    for _ in range(runs):
        ctx = browser.new_context()  # fresh: no HTTP cache, no compiled-wasm cache
        page = ctx.new_page()
        cpu0, wait0, t = _cpu_seconds(pids()), _run_queue_s(pids()), time.perf_counter()
        page.goto(f"{origin}/site/")
        page.wait_for_selector("body[data-ready=true]", timeout=300_000)
        wall = (time.perf_counter() - t) * 1000
        cpu = (_cpu_seconds(pids()) - cpu0) * 1000
        waited = (_run_queue_s(pids()) - wait0) * 1000
        parts = json.loads(page.get_attribute("#status", "data-timings"))
        # navigation start -> ready as the page's own clock saw it
        at = page.get_attribute("#status", "data-ready-at")  # (absent before the worker)
        in_page = float(at) if at else float("nan")
        # the same page again (a return visit: the HTTP cache holds the files, and chromium's
        # code cache the compiled WebAssembly)
        cpu0, t = _cpu_seconds(pids()), time.perf_counter()
        page.reload()
        page.wait_for_selector("body[data-ready=true]", timeout=300_000)
        warm, warm_cpu = (time.perf_counter() - t) * 1000, (_cpu_seconds(pids()) - cpu0) * 1000
        out.append({"wall": wall, "cpu": cpu, "waited": waited, "in_page": in_page,
                    "warm_wall": warm,
                    "warm_cpu": warm_cpu, **parts})
        ctx.close()
    return out


def per_image(page, urls: list[str], pids, explain: bool) -> dict:
    cpu0 = _cpu_seconds(pids())
    got = page.evaluate(TIMED_JS, [urls, explain])
    cpu = (_cpu_seconds(pids()) - cpu0) * 1000 / len(urls)
    return {"api": med([g["api"] for g in got]), "wall": med([g["wall"] for g in got]),
            "cpu_mean": cpu}


def worklist(browser, origin: str, folder: Path, pids) -> dict:
    page = browser.new_page()
    page.add_init_script(LONGTASKS_JS)
    page.goto(f"{origin}/site/")
    page.wait_for_selector("body[data-ready=true]", timeout=300_000)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    peak = {"rss": _renderer_rss_mib(pids()), "heap": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _renderer_rss_mib(pids()))
            time.sleep(0.2)

    def heap() -> float:
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        return metrics["JSHeapUsedSize"] / 2**20

    start = {"rss": peak["rss"], "heap": heap()}
    page.evaluate("window.__long = []")
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    cpu0, t0 = _cpu_seconds(pids()), time.perf_counter()
    page.set_input_files("#folder", str(folder))
    while not page.query_selector("#progress-line[data-state=done]"):
        peak["heap"] = max(peak["heap"], heap())
        time.sleep(0.5)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(pids()) - cpu0
    n = len(page.query_selector_all("#worklist tbody tr.scored"))
    longest = page.evaluate("Math.max(0, ...window.__long)")
    clicks = []
    for i in range(1, 6):
        row = f"#worklist tbody tr:nth-child({i})"
        name = page.get_attribute(row, "data-name")
        page.click(row)
        while page.get_attribute("#viewer", "data-name") != name:  # (the page's CSP: no
            time.sleep(0.02)                                     # wait_for_function)
        clicks.append(float(page.get_attribute("#viewer", "data-render-ms")))
    end_heap = heap()
    stop.set()
    thread.join()
    page.close()
    return {"n": n, "wall_s": wall, "per_image_ms": 1000 * wall / max(n, 1),
            "cpu_per_image_ms": 1000 * cpu / max(n, 1), "longest_task_ms": longest,
            "rss_start": start["rss"], "rss_peak": peak["rss"], "heap_start": start["heap"],
            "heap_peak": max(peak["heap"], end_heap), "heap_end": end_heap,
            "click_ms": med(clicks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(default_data_dir()))
    ap.add_argument("--site", default=None, help="an exported site (default: export one)")
    ap.add_argument("--model", default=None, help="run folder or shipped name")
    ap.add_argument("--runs", type=int, default=5, help="cold page loads, and passes per set")
    ap.add_argument("--images", type=int, default=20, help="images per set for per-image times")
    ap.add_argument("--worklist", type=int, default=200, help="images in the dropped folder")
    ap.add_argument("--steps", action="store_true",
                    help="also take a cold load apart step by step (CPU per step)")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    data = Path(args.data).resolve()
    originals = data.parent / "originals"
    tmp = Path(tempfile.mkdtemp(prefix="browser-speed-"))
    site = site_under_test(args.site, args.model, data, tmp)
    root = serve_root(tmp / "root", site, originals=originals, data=data)
    tests = sorted((data / "test").rglob("*.jpeg"))
    full = sorted(originals.rglob("*.jpeg"))
    sets = {"full-size originals": [f"/originals/{f.relative_to(originals).as_posix()}"
                                    for f in full[:args.images]],
            "224 px test copies": [f"/data/{f.relative_to(data).as_posix()}"
                                   for f in tests[::max(1, len(tests) // args.images)]
                                   [:args.images]]}
    folder = worklist_folder((full + tests)[:args.worklist], tmp)

    with static_server(root) as origin, sync_playwright() as p:
        browser, pids = launch_chromium(p)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the "
              f"start (other jobs included); {browser.version}, headless; model "
              f"{args.model or 'default'}", flush=True)
        if args.steps:
            steps(browser, origin, site, pids, args.runs)
        loads = cold_loads(browser, origin, pids, args.runs)
        print(f"\npage ready, {len(loads)} cold loads (median; min-max of wall):")
        print(f"  goto -> model loaded and warmed: wall {med([x['wall'] for x in loads]):.0f} ms "
              f"({min(x['wall'] for x in loads):.0f}-{max(x['wall'] for x in loads):.0f}); "
              f"chromium CPU {med([x['cpu'] for x in loads]):.0f} ms; in page from navigation "
              f"start {med([x['in_page'] for x in loads]):.0f} ms; chromium's threads waited "
              f"{med([x['waited'] for x in loads]):.0f} ms (summed over threads) for a CPU")
        print(f"  reload (a return visit, warm caches): wall "
              f"{med([x['warm_wall'] for x in loads]):.0f} ms; chromium CPU "
              f"{med([x['warm_cpu'] for x in loads]):.0f} ms")
        keys = [k for k in loads[0] if k not in ("wall", "cpu", "waited", "in_page",
                                                 "warm_wall", "warm_cpu")]
        print("  parts of the cold load (in page, wall, ms): " + ", ".join(
            f"{k} {med([x[k] for x in loads]):.0f}" for k in keys), flush=True)

        page = browser.new_page()
        page.goto(f"{origin}/site/")
        page.wait_for_selector("body[data-ready=true]", timeout=300_000)
        page.evaluate(TIMED_JS, [sets["224 px test copies"][:3], True])  # warm every path
        print(f"\nper image, end to end through window.pneumoscan.score ({args.runs} passes "
              f"of {args.images} images; median over images of the median over passes):")
        for name, urls in sets.items():
            for explain in (False, True):
                passes = [per_image(page, urls, pids, explain) for _ in range(args.runs)]
                label = "+ Grad-CAM PNG" if explain else "score        "
                print(f"  {name:20s} {label}: wall {med([x['wall'] for x in passes]):.0f} ms "
                      f"(API elapsed_ms {med([x['api'] for x in passes]):.0f}); chromium CPU "
                      f"{med([x['cpu_mean'] for x in passes]):.0f} ms/image", flush=True)
        page.close()
        if args.worklist:
            wl = worklist(browser, origin, folder, pids)
            print(f"\nworklist: {wl['n']} images dropped as one folder ({min(67, wl['n'])} "
                  f"full-size originals, the rest 224 px copies): {wl['wall_s']:.1f} s wall, "
                  f"{wl['per_image_ms']:.0f} ms/image wall, {wl['cpu_per_image_ms']:.0f} "
                  f"ms/image chromium CPU; longest main-thread task {wl['longest_task_ms']:.0f} "
                  f"ms; tab (renderer processes) RSS {wl['rss_start']:.0f} MiB before, peak "
                  f"{wl['rss_peak']:.0f} MiB; JS heap (CDP JSHeapUsedSize) "
                  f"{wl['heap_start']:.0f} MiB before, peak {wl['heap_peak']:.0f} MiB, "
                  f"{wl['heap_end']:.0f} MiB at the end; row click -> X-ray with its "
                  f"overlay drawn: median {wl['click_ms']:.0f} ms")
        browser.close()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
