import csv
import json
import os

import numpy as np
import pytest

from pneumoscan.cli import main
from pneumoscan.core.config import load_config
from pneumoscan.data import cache, load_records, select
from pneumoscan.data.manifest import ManifestError, read_manifest
from pneumoscan.training.train import fit


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(small_data, folder="train"):
    return [(str(p), p.parent.name) for label in ("NORMAL", "PNEUMONIA")
            for p in sorted((small_data / folder / label).iterdir())]


def test_manifest_rows_become_records_with_relative_paths_and_defaults(small_data, tmp_path):
    a = sorted((small_data / "train" / "PNEUMONIA").iterdir())[0]
    b = sorted((small_data / "test" / "NORMAL").iterdir())[0]
    csv_dir = tmp_path / "lists"
    csv_dir.mkdir()
    m = _write(csv_dir / "m.csv", ["path", "label", "patient", "split"], [
        (os.path.relpath(a, csv_dir), "pneumonia", "", ""),
        (str(b), "NORMAL", "child-7", "test")])
    recs = read_manifest(m)
    assert [r.path for r in recs] == [str(a), str(b)]  # relative to the CSV's folder
    assert recs[0].split == "train" and recs[0].label == "PNEUMONIA"
    assert recs[0].patient == a.name.split("_")[0]  # from the file name when not given
    assert recs[0].etiology in ("bacteria", "virus")
    assert recs[1].patient == "child-7" and recs[1].split == "test"
    assert len(recs[0].sha256) == 64
    assert load_records(m) == recs
    assert select(recs, "test", 0.2, 0) == [recs[1]]


def test_manifest_errors_name_the_line(tmp_path):
    with pytest.raises(ManifestError, match=r"m1.csv line 1: missing column\(s\) label"):
        read_manifest(_write(tmp_path / "m1.csv", ["path", "split"], [("x.jpeg", "train")]))
    bad_label = _write(tmp_path / "m2.csv", ["path", "label"],
                       [("a.jpeg", "NORMAL"), ("b.jpeg", "covid")])
    with pytest.raises(ManifestError, match=r"m2.csv line 3: unknown label 'covid'"):
        read_manifest(bad_label)
    bad_split = _write(tmp_path / "m3.csv", ["path", "label", "split"],
                       [("a.jpeg", "NORMAL", "val")])
    with pytest.raises(ManifestError, match=r"m3.csv line 2: unknown split 'val'"):
        read_manifest(bad_split)
    with pytest.raises(ManifestError, match="no manifest file"):
        read_manifest(tmp_path / "absent.csv")


def test_missing_file_is_kept_then_skipped_at_decode(small_data, tmp_path, caplog):
    rows = _rows(small_data)[:3] + [(str(tmp_path / "gone.jpeg"), "NORMAL")]
    recs = read_manifest(_write(tmp_path / "m.csv", ["path", "label"], rows))
    assert "m.csv line 5: no such file" in caplog.text
    images, targets, skipped = cache.decode(recs, 48, "bilinear", "memory", tmp_path)
    assert images.shape == (3, 48, 48) and len(targets) == 3
    assert len(skipped) == 1 and "gone.jpeg" in skipped[0]


def test_disk_cache_equals_memory_and_is_reused_until_the_data_changes(small_data, tmp_path):
    recs = read_manifest(_write(tmp_path / "m.csv", ["path", "label"], _rows(small_data)[:10]))
    mem, y_mem, _ = cache.decode(recs, 48, "bilinear", "memory", tmp_path / "c")
    disk, y_disk, _ = cache.decode(recs, 48, "bilinear", "disk", tmp_path / "c")
    assert isinstance(disk, np.memmap)
    np.testing.assert_array_equal(mem, disk)
    np.testing.assert_array_equal(y_mem, y_disk)
    files = sorted((tmp_path / "c").glob("*.u8"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    cache.decode(recs, 48, "bilinear", "disk", tmp_path / "c")  # same images: reused
    assert files[0].stat().st_mtime_ns == stamp and len(list((tmp_path / "c").glob("*.u8"))) == 1
    cache.decode(recs, 56, "bilinear", "disk", tmp_path / "c")  # another size: a new file
    cache.decode(recs[:9], 48, "bilinear", "disk", tmp_path / "c")  # other images: new file
    assert len(list((tmp_path / "c").glob("*.u8"))) == 3
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_auto_cache_goes_to_disk_above_the_budget():
    assert cache.resolve_mode("auto", 1000, 224, budget_gb=1.0) == "memory"
    assert cache.resolve_mode("auto", 30_000, 224, budget_gb=1.0) == "disk"
    assert cache.resolve_mode("memory", 10**9, 224, budget_gb=1.0) == "memory"
    with pytest.raises(ValueError, match="cache must be one of"):
        cache.resolve_mode("ram", 1, 1, 1.0)


@pytest.fixture(scope="module")
def manifest_runs(small_data, tmp_path_factory):
    """Two 1-epoch 48 px fits on a manifest of the small train split plus a missing file:
    one with the memory cache, one with the disk cache."""
    tmp = tmp_path_factory.mktemp("manifest_fit")
    rows = [r + ("train",) for r in _rows(small_data)] + [
        (str(tmp / "missing_person1_virus_1.jpeg"), "PNEUMONIA", "train")]
    rows += [r + ("test",) for r in _rows(small_data, "test")]
    m = _write(tmp / "m.csv", ["path", "label", "split"], rows)
    keys = ["image_size=48", "epochs=1", "batch_size=8", "val_fraction=0.2",
            "precision=32-true", "model=custom-cnn", "pretrained=false"]
    mem = fit(load_config(None, keys + ["cache=memory"]), m, tmp / "mem")
    disk = fit(load_config(None, keys + ["cache=disk", f"cache_dir={tmp / 'cache'}"]), m,
               tmp / "disk")
    return m, mem, disk, tmp


def test_fit_from_manifest_lists_the_missing_file_in_skipped(manifest_runs):
    m, mem, _, _ = manifest_runs
    assert "missing_person1_virus_1.jpeg" in (mem.dir / "skipped.txt").read_text()
    meta = json.loads((mem.dir / "model.json").read_text())
    assert meta["n_train"] + meta["n_val"] == 48  # train rows only, the missing one skipped
    split = list(csv.DictReader(open(mem.dir / "split.csv")))
    assert not any("/test/" in r["path"] for r in split)


def test_disk_cache_fit_equals_memory_cache_fit(manifest_runs):
    _, mem, disk, tmp = manifest_runs
    assert disk.val_metrics == mem.val_metrics

    def history(run):  # every column but the epoch's wall time
        rows = list(csv.DictReader(open(run.dir / "history.csv")))
        assert all(float(r.pop("epoch_seconds")) > 0 for r in rows)
        return rows

    assert history(mem) == history(disk)
    assert len(list((tmp / "cache").glob("*.u8"))) == 2  # train and val
    assert not (mem.dir / "cache").exists()


def test_evaluate_reads_the_manifest_test_rows(manifest_runs, capsys):
    m, mem, _, _ = manifest_runs
    rc = main(["evaluate", "--manifest", str(m), "--split", "test", "--model", str(mem.dir),
               "--format", "json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["n"] == 12 and result["split"] == "test"


def test_cli_reports_a_bad_manifest_with_its_line(tmp_path, capsys):
    m = _write(tmp_path / "m.csv", ["path", "label"], [("a.jpeg", "maybe")])
    assert main(["train", "--manifest", str(m), "epochs=1"]) == 2
    assert "m.csv line 2: unknown label 'maybe'" in capsys.readouterr().err
