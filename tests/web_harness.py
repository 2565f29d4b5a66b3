"""The exported in-browser site on a local static server, driven by Debian chromium through
Playwright (shared by tests/test_web_export.py and benchmarks/web_screening.py)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test output is not an access log
        pass


@contextlib.contextmanager
def static_server(root: Path):
    """Serve `root` (symlinks followed) on 127.0.0.1, as `python -m http.server` does;
    yield its origin."""
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def serve_root(root: Path, site: Path, **folders: Path) -> Path:
    """A folder holding the site and links to image folders, served under one origin."""
    root.mkdir(parents=True, exist_ok=True)
    for name, target in {"site": site, **folders}.items():
        link = root / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return root


def open_site(browser, origin: str, timeout_ms: int = 120_000, path: str = "site"):
    """A new page on the site, model loaded; returns (page, every URL it requested)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{origin}/{path}/")
    page.wait_for_selector("body[data-ready=true]", timeout=timeout_ms)
    return page, requests


# Fetch each image from the same origin and score it through window.pneumoscan.score.
SCORE_JS = """async ([urls, explain]) => {
  const out = [];
  for (const url of urls) {
    const blob = await (await fetch(url)).blob();
    try {
      const r = await window.pneumoscan.score(blob, {name: url, explain});
      out.push({probability: r.probability, label: r.label, ood: r.ood,
                class_probabilities: r.class_probabilities, etiology: r.etiology,
                warnings: r.warnings, elapsed_ms: r.elapsed_ms,
                heatmap: explain ? r.heatmap : null,
                png: r.heatmap_png ? r.heatmap_png.length : 0});
    } catch (e) { out.push({error: String(e.message || e)}); }
  }
  return out;
}"""

INPUTS_JS = """async (urls) => {
  const out = [];
  for (const url of urls) {
    const input = await window.pneumoscan.input(await (await fetch(url)).blob());
    let s = "";
    for (let i = 0; i < input.length; i += 0x8000) {
      s += String.fromCharCode(...input.subarray(i, i + 0x8000));
    }
    out.push(btoa(s));
  }
  return out;
}"""


def python_predictions(paths: list[Path], *extra: str) -> dict[str, dict]:
    """`pneumoscan predict --format json` on the files (the CLI's default runtime), by path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "pneumoscan.cli", "predict", "--format", "json",
                          *extra, *map(str, paths)], env=env, capture_output=True, text=True)
    if out.returncode not in (0, 1):  # 1: some file could not be read
        raise RuntimeError(out.stderr)
    return {p["path"]: p for p in json.loads(out.stdout)["predictions"]}
