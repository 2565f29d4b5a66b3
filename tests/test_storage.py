"""Preprocessing.storage_quality: every input stored as the training copies were (JPEG q75)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pneumoscan.core.preprocessing import Preprocessing
from pneumoscan.data.decode import load_gray, load_many


def test_old_contracts_have_no_storage_step():
    d = Preprocessing().to_dict()
    d.pop("storage_quality")
    assert Preprocessing.from_dict(d).storage_quality == 0


def test_roundtrip_brings_an_original_to_its_copy(data_dir, originals_dir):
    name = "NORMAL2-IM-1437-0001.jpeg"  # the val image whose score moved most
    copy = load_gray(data_dir / "val" / "NORMAL" / name, 224).astype(int)
    plain = load_gray(originals_dir / "val" / "NORMAL" / name, 224).astype(int)
    stored = load_gray(originals_dir / "val" / "NORMAL" / name, 224, storage_quality=75)
    # q75 blocks: the stored original is closer to the copy than the plain decode is
    assert np.abs(stored.astype(int) - copy).mean() < np.abs(plain - copy).mean()
    # and storing a copy again at q75 barely moves it (same quantisation tables)
    again = load_gray(data_dir / "val" / "NORMAL" / name, 224, storage_quality=75)
    assert np.abs(again.astype(int) - copy).mean() < 1.0


def test_load_many_and_file_objects_apply_it_alike(data_dir):
    path = sorted((data_dir / "val" / "PNEUMONIA").iterdir())[0]
    one = load_gray(path, 224, storage_quality=75)
    many, ok, errors = load_many([path], 224, storage_quality=75)
    from_bytes = load_gray(io.BytesIO(path.read_bytes()), 224, storage_quality=75)
    assert ok == [0] and not errors
    assert np.array_equal(one, many[0]) and np.array_equal(one, from_bytes)
    assert not np.array_equal(one, load_gray(path, 224))


def test_roundtrip_is_a_real_jpeg_at_that_quality(data_dir):
    path = sorted((data_dir / "val" / "NORMAL").iterdir())[0]
    low = load_gray(path, 224, storage_quality=10)
    # quality 10 leaves visible 8x8 blocks: neighbouring pixels inside a block agree more
    # than across block edges
    a = low.astype(int)
    inside = np.abs(np.diff(a, axis=1))[:, [k for k in range(223) if k % 8 != 7]].mean()
    across = np.abs(np.diff(a, axis=1))[:, 7::8].mean()
    assert across > inside
    assert Image.fromarray(low).mode == "L"
