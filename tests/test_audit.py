import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pneumoscan.data import DatasetNotFound, find_root
from pneumoscan.data.audit import audit, format_table

PER_FOLDER = 4
FOLDERS = {"train": "train", "val": "val-official", "test": "test"}


@pytest.fixture(scope="module")
def data_dir() -> Path:
    path = Path(os.environ.get("PNEUMOSCAN_DATA") or "/work/shared/data/chest_xray")
    if not (path / "train").is_dir():
        pytest.skip(f"chest X-ray data not found at {path} (set PNEUMOSCAN_DATA)")
    return path


@pytest.fixture(scope="module")
def small(data_dir, tmp_path_factory):
    """A few real images per folder, plus one truncated JPEG and one train->test duplicate."""
    src_root = find_root(data_dir)
    root = tmp_path_factory.mktemp("audit") / "chest_xray"
    for folder in FOLDERS:
        for label in ("NORMAL", "PNEUMONIA"):
            (root / folder / label).mkdir(parents=True)
            for src in sorted((src_root / folder / label).glob("*.jpeg"))[:PER_FOLDER]:
                shutil.copy(src, root / folder / label / src.name)
    first = sorted((root / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    truncated = root / "train" / "PNEUMONIA" / "person9998_bacteria_1.jpeg"
    truncated.write_bytes(first.read_bytes()[:200])
    # Cut mid-scan: the header still parses, only the full decode can catch it.
    half = root / "train" / "PNEUMONIA" / "person9997_bacteria_1.jpeg"
    half.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    duplicate = root / "test" / "PNEUMONIA" / "person9999_bacteria_1.jpeg"
    shutil.copy(first, duplicate)
    out = root.parent / "out"
    return {"root": root, "out": out, "truncated": truncated, "half": half, "first": first,
            "duplicate": duplicate, "summary": audit(root, out)}


def test_counts_match_the_copied_files(small):
    s = small["summary"]
    n = PER_FOLDER
    # The truncated files are still counted (they are listed, just not decodable).
    assert s["counts"] == {"train": {"NORMAL": n, "PNEUMONIA": n + 2},
                           "val-official": {"NORMAL": n, "PNEUMONIA": n},
                           "test": {"NORMAL": n, "PNEUMONIA": n + 1}}
    assert s["n_images"] == 6 * n + 3
    assert s["prevalence"]["val-official"] == 0.5
    assert s["prevalence"]["train"] == pytest.approx((n + 2) / (2 * n + 2))
    assert sum(s["etiology"]["test"].values()) == 2 * n + 1
    assert s["etiology"]["train"]["normal"] == n
    assert 1 <= s["patients"]["train"] <= 2 * n + 2


def test_truncated_jpegs_are_unreadable_and_the_rest_decode(small):
    s = small["summary"]
    bad = {str(small[k].resolve()) for k in ("truncated", "half")}
    assert {u["path"] for u in s["unreadable"]} == bad
    assert len(s["unreadable"]) == 2
    assert all(u["error"] for u in s["unreadable"])
    # Only the 200-byte stub lacks a header; the half file still gives its size and mode.
    assert s["image_stats"]["train"]["n"] == 2 * PER_FOLDER + 1
    stats = s["image_stats"]["test"]
    assert stats["n"] == 2 * PER_FOLDER + 1
    assert stats["width"]["min"] <= stats["width"]["median"] <= stats["width"]["max"]
    assert sum(stats["modes"].values()) == stats["n"]


def test_duplicate_across_splits_is_found(small):
    dup = small["summary"]["duplicates"]
    assert dup["n_across"] == len(dup["across_splits"]) >= 1
    names = [{Path(m["path"]).name for m in group} for group in dup["across_splits"]]
    assert {small["first"].name, small["duplicate"].name} in names
    group = next(g for g in dup["across_splits"]
                 if small["duplicate"].name in {Path(m["path"]).name for m in g})
    assert sorted(m["split"] for m in group) == ["test", "train"]
    assert all(len({m["split"] for m in g}) == 1 for g in dup["within_split"])


def test_plots_and_json_are_written(small):
    s, out = small["summary"], small["out"]
    expected = {out / n for n in ("class_distribution.png", "samples_NORMAL.png",
                                  "samples_PNEUMONIA.png")}
    assert {Path(p) for p in s["plots"]} == expected
    for p in expected:
        with Image.open(p) as img:
            assert img.format == "PNG"
            img.load()
            assert img.width > 100 and img.height > 100
    assert json.loads((out / "audit.json").read_text()) == s


def test_audit_is_read_only_and_deterministic(small, tmp_path):
    before = sorted(p.relative_to(small["root"]) for p in small["root"].rglob("*"))
    again = audit(small["root"], tmp_path)
    after = sorted(p.relative_to(small["root"]) for p in small["root"].rglob("*"))
    assert before == after
    assert {k: v for k, v in again.items() if k != "plots"} == \
        {k: v for k, v in small["summary"].items() if k != "plots"}
    with Image.open(tmp_path / "samples_NORMAL.png") as a, \
            Image.open(small["out"] / "samples_NORMAL.png") as b:
        assert a.tobytes() == b.tobytes()


def test_without_out_dir_nothing_is_written(small):
    s = audit(small["root"])
    assert s["plots"] == []
    assert s["counts"] == small["summary"]["counts"]


def test_format_table_names_splits_and_problems(small):
    text = format_table(small["summary"])
    for word in ("train", "val-official", "test", "NORMAL", "PNEUMONIA"):
        assert word in text
    assert small["truncated"].name in text and small["half"].name in text
    assert small["duplicate"].name in text


def test_missing_dataset_raises(tmp_path):
    with pytest.raises(DatasetNotFound):
        audit(tmp_path)


def test_full_dataset_known_totals(data_dir):
    s = audit(data_dir)
    assert s["counts"] == {"train": {"NORMAL": 1341, "PNEUMONIA": 3875},
                           "val-official": {"NORMAL": 8, "PNEUMONIA": 8},
                           "test": {"NORMAL": 234, "PNEUMONIA": 390}}
    assert s["n_images"] == 5856
    assert s["etiology"]["train"]["bacteria"] == 2530
    assert s["etiology"]["test"]["virus"] == 148
    assert s["prevalence"]["test"] == pytest.approx(0.625)
    assert s["unreadable"] == []
    assert s["duplicates"]["n_within"] >= 1
