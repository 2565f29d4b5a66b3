import shutil

import pytest

from pneumoscan.data import (
    KAGGLE_HELP,
    DatasetNotFound,
    find_root,
    name_family,
    parse_name,
    scan,
    select,
    split_train_val,
)


@pytest.mark.parametrize("name,label,patient,etiology", [
    ("IM-0115-0001.jpeg", "NORMAL", "IM-0115", "normal"),
    ("IM-0666-0001-0002.jpeg", "NORMAL", "IM-0666", "normal"),
    ("NORMAL2-IM-0001-0001.jpeg", "NORMAL", "NORMAL2-IM-0001", "normal"),
    ("NORMAL2-IM-1345-0001-0002.jpeg", "NORMAL", "NORMAL2-IM-1345", "normal"),
    ("person1_bacteria_1.jpeg", "PNEUMONIA", "person1", "bacteria"),
    ("person1_virus_6.jpeg", "PNEUMONIA", "person1", "virus"),
    ("person447_virus_921_1.jpeg", "PNEUMONIA", "person447", "virus"),
    ("scan_0007.png", "PNEUMONIA", "scan_0007", "unknown"),
])
def test_parse_name_every_pattern(name, label, patient, etiology):
    assert parse_name(name, label) == (patient, etiology)


def test_every_real_name_has_its_family(data_dir):
    """name_family: each file of the dataset falls in the batch its patient id names."""
    families = {}
    for path in data_dir.rglob("*.jpeg"):
        families.setdefault(name_family(path.name), set()).add(path.parent.name)
    assert families == {"IM": {"NORMAL"}, "NORMAL2-IM": {"NORMAL"}, "person": {"PNEUMONIA"}}
    assert name_family("scan_0007.png") == "other"


def test_every_real_name_matches_the_shipped_manifest(data_dir):
    import csv

    expected = {r["name"]: (r["patient"], r["etiology"])
                for r in csv.DictReader(open(data_dir / "manifest.csv"))}
    for name, (patient, etiology) in expected.items():
        label = "NORMAL" if etiology == "normal" else "PNEUMONIA"
        assert parse_name(name, label) == (patient, etiology), name


def test_scan_counts_real_dataset(data_dir):
    records = scan(data_dir)
    counts = {}
    for r in records:
        counts[(r.split, r.label)] = counts.get((r.split, r.label), 0) + 1
    assert counts == {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875,
                      ("val-official", "NORMAL"): 8, ("val-official", "PNEUMONIA"): 8,
                      ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}
    assert all(len(r.sha256) == 64 for r in records)


def test_val_split_grouped_by_patient_stratified_and_reproducible(data_dir):
    records = scan(data_dir)
    train, val = split_train_val(records, 0.1, seed=42)
    assert not {r.patient for r in train} & {r.patient for r in val}
    assert not {r.sha256 for r in train} & {r.sha256 for r in val}  # no duplicate leaks
    assert len(train) + len(val) == 5216
    assert 0.08 < len(val) / 5216 < 0.12
    prevalence = sum(r.label == "PNEUMONIA" for r in val) / len(val)
    assert abs(prevalence - 3875 / 5216) < 0.03
    again = split_train_val(records, 0.1, seed=42)[1]
    assert [r.path for r in again] == [r.path for r in val]
    other = split_train_val(records, 0.1, seed=7)[1]
    assert [r.path for r in other] != [r.path for r in val]
    assert not any(r.split == "test" for r in train + val)


def test_select_named_splits(small_data):
    records = scan(small_data)
    assert len(select(records, "test", 0.1, 0)) == 12
    assert len(select(records, "val-official", 0.1, 0)) == 4
    with pytest.raises(ValueError, match="unknown split"):
        select(records, "validation", 0.1, 0)


def test_nested_zip_layout_and_macosx_junk(small_data, tmp_path):
    nested = tmp_path / "data" / "chest_xray" / "chest_xray"
    shutil.copytree(small_data, nested)
    junk = tmp_path / "data" / "chest_xray" / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
    junk.mkdir(parents=True)
    (junk / "._IM-0001-0001.jpeg").write_bytes(b"\x00\x05")
    (nested / "train" / "NORMAL" / "._IM-0001-0001.jpeg").write_bytes(b"\x00\x05")
    assert find_root(tmp_path / "data") == nested
    assert len(scan(tmp_path / "data")) == len(scan(small_data))


def test_missing_dataset_message_has_kaggle_commands(tmp_path):
    with pytest.raises(DatasetNotFound) as e:
        scan(tmp_path / "nowhere")
    assert "kaggle datasets download -d paultimothymooney/chest-xray-pneumonia" in str(e.value)
    assert "kaggle datasets download" in KAGGLE_HELP
