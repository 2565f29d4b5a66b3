"""Shared fixtures: the real dataset (via PNEUMOSCAN_DATA) and small real subsets of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .web_harness import CHROMIUM, FLAGS

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def _data_root() -> Path:
    return Path(os.environ.get("PNEUMOSCAN_DATA") or REPO / "data" / "chest_xray")


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """`pneumoscan predict` caches ONNX exports: tests use their own folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("onnx-cache")
        mp.setenv("PNEUMOSCAN_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = _data_root()
    if not (root / "train").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"PNEUMOSCAN_DATA={root} holds no dataset; CI must provide it")
        pytest.skip(f"no dataset at {root}: set PNEUMOSCAN_DATA")
    return root


@pytest.fixture(scope="session")
def originals_dir(data_dir) -> Path:
    d = data_dir.parent / "originals"
    if not d.is_dir():
        pytest.skip(f"no full-size originals beside {data_dir}")
    return d


def _copy_first(src: Path, dst: Path, n: int, step: int = 1) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.suffix == ".jpeg")[::step][:n]
    return [Path(shutil.copy2(f, dst / f.name)) for f in files]


@pytest.fixture(scope="session")
def small_data(data_dir, tmp_path_factory) -> Path:
    """A Kaggle-layout copy with real images: 24 train images per class (spread over the
    folder so that many patients appear), 6 test and 2 official-val per class."""
    root = tmp_path_factory.mktemp("small") / "chest_xray"
    for label in ("NORMAL", "PNEUMONIA"):
        _copy_first(data_dir / "train" / label, root / "train" / label, 24, step=50)
        _copy_first(data_dir / "test" / label, root / "test" / label, 6, step=30)
        _copy_first(data_dir / "val" / label, root / "val" / label, 2)
    return root


@pytest.fixture(scope="session")
def small_data_with_bad_file(small_data, tmp_path_factory) -> Path:
    """small_data plus one truncated JPEG in train/PNEUMONIA."""
    root = tmp_path_factory.mktemp("bad") / "chest_xray"
    shutil.copytree(small_data, root)
    good = sorted((root / "train" / "PNEUMONIA").iterdir())[0]
    (root / "train" / "PNEUMONIA" / "person99999_bacteria_1.jpeg").write_bytes(
        good.read_bytes()[:300])
    return root


@pytest.fixture(scope="session")
def tiny_run(small_data_with_bad_file, tmp_path_factory):
    """A one-epoch fit on ~48 real images at 64 px, with one unreadable training image."""
    from pneumoscan.core.config import load_config
    from pneumoscan.training.train import fit

    cfg = load_config(None, ["image_size=64", "epochs=1", "batch_size=8", "val_fraction=0.2",
                             "precision=32-true"])
    return fit(cfg, small_data_with_bad_file, tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="session")
def etiology_run(small_data, tmp_path_factory):
    """The three-class (NORMAL / BACTERIAL / VIRAL) counterpart of tiny_run: one epoch at
    64 px on small_data (task=etiology)."""
    from pneumoscan.core.config import load_config
    from pneumoscan.training.train import fit

    cfg = load_config(None, ["image_size=64", "epochs=1", "batch_size=8", "val_fraction=0.2",
                             "precision=32-true", "task=etiology"])
    return fit(cfg, small_data, tmp_path_factory.mktemp("etiology") / "run")


@pytest.fixture(scope="session")
def tiny_seeds(small_data_with_bad_file, tmp_path_factory) -> Path:
    """`pneumoscan train seeds=0,1` with tiny_run's settings: DIR/seed-0, DIR/seed-1 (one
    train/val split) and the ensemble DIR/ensemble built from them."""
    from pneumoscan.cli import main

    out = tmp_path_factory.mktemp("seeds") / "tiny"
    code = main(["train", "--data", str(small_data_with_bad_file), "--out", str(out),
                 "seeds=0,1", "image_size=64", "epochs=1", "batch_size=8", "val_fraction=0.2",
                 "precision=32-true"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright (never `playwright install`); CI must have it."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} missing: apt-get install chromium (never 'playwright install')"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()
