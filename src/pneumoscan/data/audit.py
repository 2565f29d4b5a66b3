"""Read-only dataset checks: counts, patients, image sizes, unreadable files, duplicates, plots."""

from __future__ import annotations

import json
import os
import random
import statistics
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from . import LABELS, Record, find_root, scan

SAMPLE_GRID = 4  # samples_<LABEL>.png shows up to SAMPLE_GRID x SAMPLE_GRID train images
SAMPLE_SEED = 0


def audit(data_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Audit a dataset folder without changing it; optionally write plots and audit.json.

    Args:
        data_dir: a folder holding the Kaggle layout {train,val,test}/{NORMAL,PNEUMONIA}/.
        out_dir: if given, created if needed and filled with class_distribution.png,
            samples_NORMAL.png, samples_PNEUMONIA.png and audit.json.

    Returns:
        A JSON-serialisable summary with the keys data_dir, n_images, counts, etiology,
        patients, image_stats, unreadable, duplicates, prevalence and plots.

    Raises:
        DatasetNotFound: when data_dir does not hold the layout.
    """
    root = find_root(data_dir).resolve()
    records = scan(root)
    splits = list(dict.fromkeys(r.split for r in records))  # scan order: train, val, test
    headers = _inspect_all([r.path for r in records])
    counts = {s: {lab: _count(records, s, label=lab) for lab in LABELS} for s in splits}
    summary = {
        "data_dir": str(root),
        "n_images": len(records),
        "counts": counts,
        "etiology": {s: dict(sorted(Counter(r.etiology for r in records if r.split == s).items()))
                     for s in splits},
        "patients": {s: len({r.patient for r in records if r.split == s}) for s in splits},
        "image_stats": {s: _image_stats([h for r, h in zip(records, headers) if r.split == s])
                        for s in splits},
        "unreadable": [{"path": r.path, "error": h["error"]}
                       for r, h in zip(records, headers) if h["error"]],
        "duplicates": _duplicates(records),
        "prevalence": {s: counts[s]["PNEUMONIA"] / max(1, sum(counts[s].values()))
                       for s in splits},
        "plots": [],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        bad = {u["path"] for u in summary["unreadable"]}
        summary["plots"] = [str(p) for p in _write_plots(summary, records, bad, out)]
        with open(out / "audit.json", "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def _count(records: list[Record], split: str, label: str) -> int:
    return sum(1 for r in records if r.split == split and r.label == label)


def _inspect(path: str) -> dict:
    """Header facts (size, mode) and whether the whole file decodes. Never raises."""
    info = {"width": None, "height": None, "mode": None, "error": None}
    try:
        with Image.open(path) as img:
            info.update(width=img.width, height=img.height, mode=img.mode)
            img.load()  # the full decode: catches truncated or corrupt pixel data
    except Exception as e:  # one bad file must never stop the audit
        info["error"] = f"{type(e).__name__}: {e}"
    return info


def _inspect_all(paths: list[str]) -> list[dict]:
    # PIL releases the GIL while decoding, so threads give real parallelism here.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(_inspect, paths))


def _image_stats(headers: list[dict]) -> dict:
    ok = [h for h in headers if h["width"] is not None]
    stats = {"n": len(ok)}
    for key in ("width", "height"):
        values = [h[key] for h in ok]
        stats[key] = ({"min": min(values), "median": statistics.median(values),
                       "max": max(values)} if values else None)
    stats["modes"] = dict(sorted(Counter(h["mode"] for h in ok).items()))
    return stats


def _duplicates(records: list[Record]) -> dict:
    """Byte-identical files. A group spanning splits is listed under across_splits; its members
    that share a split are also listed under within_split, so each list stands on its own."""
    by_sha: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.sha256:  # "" = unreadable, reported elsewhere
            by_sha[r.sha256].append(r)
    within, across = [], []
    for group in by_sha.values():
        if len({r.split for r in group}) > 1:
            across.append(_members(group))
        by_split: dict[str, list[Record]] = defaultdict(list)
        for r in group:
            by_split[r.split].append(r)
        within.extend(_members(g) for g in by_split.values() if len(g) > 1)
    return {"within_split": within, "across_splits": across,
            "n_within": len(within), "n_across": len(across)}


def _members(group: list[Record]) -> list[dict]:
    return [{"split": r.split, "path": r.path, "patient": r.patient, "label": r.label}
            for r in group]


def _write_plots(summary: dict, records: list[Record], bad: set[str], out: Path) -> list[Path]:
    written = [_plot_distribution(summary, out / "class_distribution.png")]
    for label in LABELS:
        paths = [r.path for r in records
                 if r.split == "train" and r.label == label and r.path not in bad]
        if paths:
            written.append(_plot_samples(paths, label, out / f"samples_{label}.png"))
    return written


def _figure(**kwargs):
    # A bare Figure, not pyplot: no global backend switch and nothing left open.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _plot_distribution(summary: dict, path: Path) -> Path:
    """Grouped bars per split (NORMAL, PNEUMONIA); PNEUMONIA stacked by etiology."""
    splits = list(summary["counts"])
    fig = _figure(figsize=(2.2 * len(splits) + 2.5, 4.2))
    ax = fig.add_subplot()
    width = 0.38
    pneumonia_kinds = sorted({e for s in splits for e in summary["etiology"][s]} - {"normal"})
    colors = {"bacteria": "tab:red", "virus": "tab:orange", "unknown": "tab:gray"}
    for i, s in enumerate(splits):
        n_normal = summary["counts"][s]["NORMAL"]
        ax.bar(i - width / 2, n_normal, width, color="tab:blue",
               label="NORMAL" if i == 0 else None)
        ax.text(i - width / 2, n_normal, str(n_normal), ha="center", va="bottom", fontsize=8)
        bottom = 0
        for kind in pneumonia_kinds:
            n = summary["etiology"][s].get(kind, 0)
            ax.bar(i + width / 2, n, width, bottom=bottom, color=colors.get(kind, "tab:purple"),
                   label=f"PNEUMONIA ({kind})" if i == 0 else None)
            bottom += n
        ax.text(i + width / 2, bottom, str(summary["counts"][s]["PNEUMONIA"]),
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("images")
    ax.set_title("Images per split and class")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _plot_samples(paths: list[str], label: str, path: Path) -> Path:
    """A grid of train images chosen with a fixed seed, titled with their file names."""
    n = min(len(paths), SAMPLE_GRID * SAMPLE_GRID)
    chosen = sorted(random.Random(SAMPLE_SEED).sample(sorted(paths), n))
    rows = -(-n // SAMPLE_GRID)
    fig = _figure(figsize=(2.4 * SAMPLE_GRID, 2.6 * rows))
    for i, p in enumerate(chosen):
        ax = fig.add_subplot(rows, SAMPLE_GRID, i + 1)
        with Image.open(p) as img:
            img.draft("L", (256, 256))  # only a thumbnail is shown; skip decoding full size
            ax.imshow(img.convert("L"), cmap="gray", vmin=0, vmax=255)
        ax.set_title(Path(p).name, fontsize=7)
        ax.axis("off")
    fig.suptitle(f"train / {label}: {n} samples (seed {SAMPLE_SEED})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def format_table(summary: dict) -> str:
    """A plain-text report of an audit() summary.

    Examples:
        >>> print(format_table(audit("data/chest_xray")))  # doctest: +SKIP
    """
    root = summary["data_dir"]
    splits = list(summary["counts"])
    kinds = sorted({e for s in splits for e in summary["etiology"][s]} - {"normal"})
    lines = [f"Dataset audit of {root} ({summary['n_images']} images)", ""]
    header = ["split", *LABELS, *kinds, "patients", "% pneumonia"]
    rows = [[s, *(summary["counts"][s][lab] for lab in LABELS),
             *(summary["etiology"][s].get(k, 0) for k in kinds),
             summary["patients"][s], f"{100 * summary['prevalence'][s]:.1f}"] for s in splits]
    lines += _columns(header, rows)
    lines += ["", "Image sizes (min / median / max) and PIL modes"]
    rows = [[s, _range(st["width"]), _range(st["height"]),
             ", ".join(f"{m}: {n}" for m, n in st["modes"].items())]
            for s, st in summary["image_stats"].items()]
    lines += _columns(["split", "width", "height", "modes"], rows)
    lines += ["", f"Unreadable files: {len(summary['unreadable'])}"]
    lines += [f"  {_rel(u['path'], root)}: {u['error']}" for u in summary["unreadable"]]
    dup = summary["duplicates"]
    lines += ["", f"Byte-identical duplicates: {dup['n_within']} groups within a split, "
                  f"{dup['n_across']} across splits"]
    for kind in ("across_splits", "within_split"):
        lines += [f"  {kind}: {_group(g, root)}" for g in dup[kind]]
    if summary["plots"]:
        lines += ["", "Plots:", *(f"  {p}" for p in summary["plots"])]
    return "\n".join(lines)


def _columns(header: list, rows: list[list]) -> list[str]:
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    # First column left-aligned (names), the rest right-aligned (numbers).
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths))) for row in cells]


def _range(stat: dict | None) -> str:
    return "-" if stat is None else f"{stat['min']} / {stat['median']:g} / {stat['max']}"


def _rel(path: str, root: str) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def _group(members: list[dict], root: str) -> str:
    text = " == ".join(_rel(m["path"], root) for m in members)
    notes = []
    if len({m["patient"] for m in members}) > 1:
        notes.append("different patient ids")
    if len({m["label"] for m in members}) > 1:
        notes.append("CONFLICTING LABELS")
    return text + (f"  [{', '.join(notes)}]" if notes else "")
