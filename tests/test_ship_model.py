"""scripts/ship_model.py: a real tiny run shipped into a copy of the weights folder."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pneumoscan.core import contract
from pneumoscan.inference.onnx import read_metadata
from pneumoscan.inference.runtime import make_predictor, shipped_graph

from .conftest import EXAMPLES, REPO

SCRIPT = REPO / "scripts" / "ship_model.py"


def ship(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=900)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def old_run(tiny_run, tmp_path) -> Path:
    """tiny_run as code before 44eb558 wrote it: best_epoch and history.csv from 0."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run.dir, run)
    meta = json.loads((run / contract.META).read_text())
    meta["best_epoch"] -= 1
    (run / contract.META).write_text(json.dumps(meta, indent=2) + "\n")
    rows = list(csv.DictReader(open(run / "history.csv", newline="")))
    for r in rows:
        r["epoch"] = str(int(r["epoch"]) - 1)
    with open(run / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return run


@pytest.fixture
def weights(tmp_path) -> Path:
    out = tmp_path / "weights"
    shutil.copytree(REPO / "src" / "pneumoscan" / "weights", out)
    return out


def test_ships_a_run_in_todays_format_with_a_checked_graph(old_run, weights, tmp_path,
                                                           small_data_with_bad_file):
    before, etiology = digests(old_run), digests(weights / "etiology")
    docs = tmp_path / "docs"
    done = ship(old_run, "--as", "default", "--weights-dir", weights, "--history-dir", docs,
                "--data", small_data_with_bad_file)
    assert done.returncode == 0, done.stderr
    assert digests(old_run) == before  # RUN is never written
    assert digests(weights / "etiology") == etiology  # the other model untouched
    assert sorted(p.name for p in weights.iterdir()) == ["default", "etiology"]  # no leftovers
    target = weights / "default"
    ran = json.loads((old_run / contract.META).read_text())
    shipped = json.loads((target / contract.META).read_text())
    assert shipped["best_epoch"] == ran["best_epoch"] + 1  # counted from 1 now
    assert {k: v for k, v in shipped.items() if k != "best_epoch"} == \
        {k: v for k, v in ran.items() if k != "best_epoch"}
    for f in (contract.WEIGHTS, contract.OOD):
        assert digests(target)[f] == before[f]
    # The graph is the one prediction uses, and carries the shipped contract.
    graph = target / contract.GRAPH
    assert shipped_graph(target) == graph
    meta = read_metadata(graph)
    assert {k: v for k, v in meta.items() if k != "path"} == shipped
    assert "model.onnx exported" in done.stdout and "parity on" in done.stdout
    # history.csv counted from 1, its best row the contract's best_epoch (as shipped).
    rows = list(csv.DictReader(open(docs / "history.csv", newline="")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert (docs / "curves.png").is_file() and (docs / "config.yaml").is_file()
    # The shipped folder predicts with ONNX Runtime, no export needed.
    predictor = make_predictor(target, runtime="onnx")
    assert predictor.backend.path == str(graph)  # the shipped graph, not a new export
    results = predictor.predict(sorted(str(p) for p in EXAMPLES.rglob("*.jpeg"))[:2])
    assert len(results) == 2 and all(0.0 <= r.probability <= 1.0 for r in results)


def test_refusals_write_nothing(tiny_run, weights, tmp_path):
    before = digests(weights)
    run = tmp_path / "run"
    shutil.copytree(tiny_run.dir, run)
    # A binary run cannot replace the three-class model.
    done = ship(run, "--as", "etiology", "--weights-dir", weights)
    assert done.returncode == 2 and "cannot replace the etiology model" in done.stderr
    # A weights file that is not the one the contract names.
    blob = bytearray((run / contract.WEIGHTS).read_bytes())
    blob[-1] ^= 1
    (run / contract.WEIGHTS).write_bytes(bytes(blob))
    done = ship(run, "--as", "default", "--weights-dir", weights)
    assert done.returncode == 2 and "does not match weights_sha256" in done.stderr
    shutil.copy2(tiny_run.dir / contract.WEIGHTS, run / contract.WEIGHTS)
    # No history.csv and no --epoch-base: which way best_epoch counts is not guessed.
    (run / "history.csv").unlink()
    done = ship(run, "--as", "default", "--weights-dir", weights, "--dry-run")
    assert done.returncode == 2 and "--epoch-base" in done.stderr
    done = ship(run, "--as", "default", "--weights-dir", weights, "--dry-run", "--epoch-base",
                "1")
    assert done.returncode == 0 and "already in today's format" in done.stdout
    assert "nothing written" in done.stdout
    # A folder without the gate or the weights.
    (run / contract.OOD).unlink()
    done = ship(run, "--as", "default", "--weights-dir", weights)
    assert done.returncode == 2 and "missing ood.safetensors" in done.stderr
    done = ship(tmp_path, "--as", "default", "--weights-dir", weights)
    assert done.returncode == 2 and "missing model.json, model.safetensors" in done.stderr
    assert digests(weights) == before
