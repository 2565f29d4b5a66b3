"""Ship a training run as one of the package's models: src/pneumoscan/weights/{default,etiology}.

    python scripts/ship_model.py RUN --as default|etiology [--dry-run]

RUN is read, never written. The script
1. refuses RUN unless it holds model.json, model.safetensors and ood.safetensors whose sha256
   match the contract, with the labels of the model it replaces (binary or three classes);
2. writes the contract in today's format: runs trained before commit 44eb558 counted
   best_epoch from 0 (history.csv too); the shipped model.json counts from 1, as train does now;
3. copies the weights and the OOD gate, and exports model.onnx the way the shipped graphs were
   made (`pneumoscan export --model src/pneumoscan/weights/NAME --out .../model.onnx`: fp32,
   opset 17, parity-checked against PyTorch on 64 images of the run's carved val split; an
   export off by more than 1e-3 in probability is refused);
4. checks that prediction will use that graph (runtime.shipped_graph) and prints what it did;
5. for the default model, writes the run's history.csv (epochs counted from 1), config.yaml
   and curves.png into docs/shipped-model/, where `pneumoscan evaluate --report` reads the
   shipped model's history from (the etiology model keeps none).

The new folder is built beside the old one and swapped in only when all of this passed; on
any error the old model stays. The reports, model cards and pages that quote the shipped
model's figures are regenerated after this, by their own commands.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pneumoscan.core import contract
from pneumoscan.core.errors import CheckpointError, ExportError

REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO / "src" / "pneumoscan" / "weights"
# The default model's run history lives in docs/ (evaluation/report.py reads it from there).
HISTORY_DIR = REPO / "docs" / "shipped-model"
# The commit from which train writes best_epoch (and history.csv's epoch) counted from 1.
ONE_BASED_SINCE = "44eb558666903088b31487d6148e4f8f0c5405bc"
LABELS = {"default": ["NORMAL", "PNEUMONIA"], "etiology": ["NORMAL", "BACTERIAL", "VIRAL"]}
FILES = (contract.META, contract.WEIGHTS, contract.OOD)


class Refused(Exception):
    pass


def _epoch_base(run: Path, meta: dict) -> tuple[int | None, str]:
    """0 or 1 (how RUN counts best_epoch) and why; None when history.csv does not tell.
    history.csv is the witness: train writes it with model.json and nobody converts it, while
    a model.json may have been converted by hand (as 44eb558 did for the shipped ones), so the
    git_sha it was trained at only makes the hint of the refusal."""
    history = run / "history.csv"
    if history.is_file():
        with open(history, newline="") as f:
            first = next(csv.DictReader(f), None)
        if first is not None and first.get("epoch", "").strip() in ("0", "1"):
            return int(first["epoch"]), f"{history.name} starts at epoch {first['epoch']}"
    hint, sha = "", meta.get("git_sha")
    if sha:
        rc = subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor",
                             ONE_BASED_SINCE, sha], capture_output=True).returncode
        if rc in (0, 1):
            hint = (f"; trained at {sha[:10]}, {'after' if rc == 0 else 'before'} 44eb558, so "
                    f"{rc ^ 1} unless its model.json was converted since")
    return None, f"no history.csv{hint}"


def plan(run: Path, name: str, epoch_base: int | None = None) -> tuple[dict, list[str]]:
    """The model.json to ship and what was changed in it; Refused if RUN cannot be shipped."""
    missing = [f for f in FILES if not (run / f).is_file()]
    if missing:
        raise Refused(f"{run}: not a shippable run, missing {', '.join(missing)}"
                      + (" (fit the gate on a copy: pneumoscan fit-ood --model COPY)"
                         if missing == [contract.OOD] else ""))
    meta = json.loads((run / contract.META).read_text())
    try:
        ckpt = contract.read(run)  # validates the contract and the OOD file's sha256
    except CheckpointError as e:
        raise Refused(str(e)) from None
    if not meta.get("weights_sha256"):
        raise Refused(f"{run / contract.META}: no weights_sha256 (an older contract)")
    if ckpt.ood_gate is None:
        raise Refused(f"{run / contract.META}: declares no OOD gate; the shipped models have one")
    try:
        contract.check_sha256(run / contract.WEIGHTS, meta["weights_sha256"], "weights_sha256")
    except CheckpointError as e:
        raise Refused(str(e)) from None
    if ckpt.labels != LABELS[name]:
        raise Refused(f"{run}: labels {ckpt.labels} cannot replace the {name} model "
                      f"({LABELS[name]})")
    changes = []
    if "best_epoch" in meta:
        base, why = (epoch_base, "--epoch-base") if epoch_base is not None \
            else _epoch_base(run, meta)
        if base is None:
            raise Refused(f"{run}: cannot tell whether best_epoch counts from 0 or 1 ({why}); "
                          f"pass --epoch-base 0 or 1")
        if base == 0:
            meta["best_epoch"] = int(meta["best_epoch"]) + 1
            changes.append(f"best_epoch {meta['best_epoch'] - 1} -> {meta['best_epoch']} "
                           f"(counted from 1; {why})")
    contract.Checkpoint.from_json(meta)  # still a valid contract
    return meta, changes


def write_history(run: Path, out: Path) -> str:
    """RUN's history.csv (epochs shifted to count from 1), config.yaml and its curves into
    out; what was written. RUN without a history.csv: nothing (said so)."""
    from pneumoscan.evaluation.plots import training_curves

    if not (run / "history.csv").is_file():
        return f"warning: {run} has no history.csv: {out} left as it was (stale)"
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shift = 1 - int(rows[0]["epoch"])  # a run of older code counted from 0
    for r in rows:
        r["epoch"] = str(int(r["epoch"]) + shift)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    training_curves([{k: (int(v) if k == "epoch" else float(v)) for k, v in r.items() if v != ""}
                     for r in rows], out / "curves.png")
    done = ["history.csv" + (" (epochs counted from 1)" if shift else ""), "curves.png"]
    if (run / "config.yaml").is_file():
        shutil.copy2(run / "config.yaml", out / "config.yaml")
        done.append("config.yaml")
    return f"{out}: {', '.join(done)} from {run}"


def ship(run: Path, name: str, weights_dir: Path, data: str | None, dry_run: bool = False,
         epoch_base: int | None = None, history_dir: Path = HISTORY_DIR) -> int:
    from pneumoscan.data import default_data_dir

    run, target = run.resolve(), weights_dir / name
    meta, changes = plan(run, name, epoch_base)
    data = data or str(default_data_dir())
    vm = meta.get("val_metrics", {})
    print(f"run: {run}\n  {meta['model_name']}, labels {meta['labels']}, threshold "
          f"{meta['threshold']:.4f}, T {meta.get('temperature', 1.0):.4f}, OOD threshold "
          f"{meta['ood']['threshold']:.2f}, val AUROC {vm.get('auroc', float('nan')):.4f}, "
          f"weights {meta['weights_sha256'][:12]}, trained at {str(meta.get('git_sha'))[:10]}")
    print("contract: " + ("; ".join(changes) if changes else "already in today's format"))
    if dry_run:
        print(f"dry run: would replace {target} ({', '.join(FILES)}, {contract.GRAPH} "
              f"exported with parity images from {data})"
              + (f" and the history in {history_dir}" if name == "default" else "")
              + "; nothing written")
        return 0
    from pneumoscan.inference.export import export_from_data
    from pneumoscan.inference.runtime import shipped_graph

    new, old = target.with_name(f".{name}.new"), target.with_name(f".{name}.old")
    for d in (new, old):
        shutil.rmtree(d, ignore_errors=True)
    new.mkdir(parents=True)
    try:
        for f in FILES[1:]:
            shutil.copy2(run / f, new / f)
        (new / contract.META).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():
            target.rename(old)
        new.rename(target)
        # A relative model path, as the shipped graphs were exported (it lands in the graph's
        # contract as "path").
        where = os.path.relpath(target) if target.is_relative_to(Path.cwd()) else str(target)
        report = export_from_data(where, target / contract.GRAPH, data)["fp32"]
        if shipped_graph(target) != target / contract.GRAPH:
            raise Refused(f"{target / contract.GRAPH} is not recognised as the graph of "
                          f"{target / contract.WEIGHTS} (runtime.shipped_graph)")
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        if old.exists():
            shutil.rmtree(target, ignore_errors=True)
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    print(f"shipped: {target}: {', '.join(FILES)} copied, {contract.GRAPH} exported (fp32, "
          f"opset 17); parity on {report['n']} val images: max |dp| "
          f"{report['max_abs_prob_diff']:.2e}, label flips {report['label_flips']}")
    if name == "default":
        print(write_history(run, history_dir))
    print("next: regenerate the docs that quote the shipped model, then run the tests")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="run folder (model.json, model.safetensors, "
                                          "ood.safetensors); never modified")
    p.add_argument("--as", dest="name", required=True, choices=sorted(LABELS))
    p.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR,
                   help=f"where the shipped models live (default {WEIGHTS_DIR})")
    p.add_argument("--data", help="dataset of the run's carved val split, for the export's "
                                  "parity images (default $PNEUMOSCAN_DATA)")
    p.add_argument("--epoch-base", type=int, choices=(0, 1),
                   help="how RUN counts best_epoch, when neither history.csv nor git tells")
    p.add_argument("--history-dir", type=Path, default=HISTORY_DIR,
                   help=f"where the default model's history goes (default {HISTORY_DIR})")
    p.add_argument("--dry-run", action="store_true", help="check and say what would change")
    args = p.parse_args(argv)
    try:
        return ship(args.run, args.name, args.weights_dir, args.data, args.dry_run,
                    args.epoch_base, args.history_dir)
    except (Refused, CheckpointError, ExportError, OSError) as e:
        print(f"ship_model: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
