import io

import numpy as np
import pytest
import torch
from PIL import Image

from pneumoscan.core.preprocessing import Preprocessing
from pneumoscan.data.decode import ImageError, load_gray, load_many
from pneumoscan.models.transforms import to_model_input


def _save(tmp_path, name, img, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


def test_224_copy_decodes_to_gray(data_dir):
    path = next((data_dir / "test" / "NORMAL").iterdir())
    a = load_gray(path, 224)
    assert a.shape == (224, 224) and a.dtype == np.uint8 and a.std() > 10


def test_full_size_original_matches_its_224_copy(data_dir, originals_dir):
    import csv

    rows = [r for r in csv.DictReader(open(originals_dir / "manifest.csv"))
            if r["split"] == "test"][:4]
    for r in rows:
        big = load_gray(originals_dir / r["path"], 224).astype(float)
        small = load_gray(data_dir / r["path"], 224).astype(float)
        assert abs(big - small).mean() < 8, r["path"]  # same picture, different decoders


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_any_mode_becomes_gray(tmp_path, mode):
    ramp = np.tile(np.linspace(0, 255, 300), (200, 1)).astype(np.uint8)
    base = Image.fromarray(ramp, "L")
    if mode == "I;16":
        img = Image.fromarray(ramp.astype(np.uint16) * 16)  # 12-bit data in a 16-bit PNG
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    a = load_gray(_save(tmp_path, f"x.{fmt.lower()}", img, format=fmt), 64)
    assert a.shape == (64, 64)
    assert a[:, 0].mean() < 30 and a[:, -1].mean() > 220  # the ramp survives


def test_bad_files_raise_image_error_naming_the_file(tmp_path, data_dir):
    good = next((data_dir / "test" / "NORMAL").iterdir()).read_bytes()
    cases = {"empty.jpeg": b"", "text.jpeg": b"hello, not an image",
             "truncated.jpeg": good[:200]}
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ImageError, match=name):
            load_gray(tmp_path / name, 64)
    with pytest.raises(ImageError, match="not found"):
        load_gray(tmp_path / "missing.jpeg", 64)
    with pytest.raises(ImageError, match="too small"):
        load_gray(_save(tmp_path, "one.png", Image.new("L", (1, 1))), 64)


def test_load_many_keeps_going_past_a_bad_file(tmp_path, data_dir):
    good = sorted((data_dir / "test" / "NORMAL").iterdir())[:3]
    bad = tmp_path / "bad.jpeg"
    bad.write_bytes(b"\xff\xd8\xff junk")
    arr, ok, errors = load_many([good[0], bad, good[1], good[2]], 32)
    assert arr.shape == (3, 32, 32) and ok == [0, 2, 3]
    assert list(errors) == [1] and "bad.jpeg" in errors[1]


def test_model_input_normalisation():
    prep = Preprocessing(input_size=4)
    x = torch.tensor([0, 255], dtype=torch.uint8).repeat(8)[:16].reshape(1, 1, 4, 4)
    y = to_model_input(x, prep)
    assert y.shape == (1, 3, 4, 4)
    assert y.min().item() == -1.0 and y.max().item() == 1.0
    assert torch.equal(y[:, 0], y[:, 2])


def test_uniform_gray_jpeg_keeps_its_level(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (50, 40), 128).save(buf, format="JPEG")
    p = tmp_path / "gray.jpg"
    p.write_bytes(buf.getvalue())
    assert load_gray(p, 16).mean() == pytest.approx(128, abs=2)


def test_decodes_an_upload_held_in_memory_and_names_it(data_dir):
    path = next((data_dir / "test" / "PNEUMONIA").iterdir())
    from_file = load_gray(path, 64)
    from_bytes = load_gray(io.BytesIO(path.read_bytes()), 64, name="upload.jpeg")
    assert np.array_equal(from_file, from_bytes)
    with pytest.raises(ImageError, match="^upload.jpeg: "):
        load_gray(io.BytesIO(b"garbage"), 64, name="upload.jpeg")


def test_degrade_augmentation_blurs_and_recompresses_only_when_asked(data_dir):
    from pneumoscan.models.transforms import train_augmentation

    path = next((data_dir / "train" / "NORMAL").glob("*.jpeg"))
    x = torch.from_numpy(load_gray(path, 224)).unsqueeze(0)
    torch.manual_seed(0)
    plain = train_augmentation(0, 0, 0, 0, 0, False, degrade=0.0)(x)
    assert torch.equal(plain, x)  # every op at zero strength: the image is untouched
    degraded = train_augmentation(0, 0, 0, 0, 0, False, degrade=1.0)(x)
    assert degraded.shape == x.shape and degraded.dtype == torch.uint8

    def sharpness(img):  # mean absolute horizontal gradient
        return (img[..., 1:].float() - img[..., :-1].float()).abs().mean()

    assert sharpness(degraded) < sharpness(x)


def test_crop_aspect_augmentation_stretches_only_when_asked(data_dir):
    from torchvision.transforms import v2

    from pneumoscan.models.transforms import train_augmentation

    path = next((data_dir / "train" / "PNEUMONIA").glob("*.jpeg"))
    x = torch.from_numpy(load_gray(path, 224)).unsqueeze(0)
    plain = train_augmentation(0, 0, 0, 0, 0, False, crop_aspect=0.0)
    assert not any(isinstance(t, v2.RandomResizedCrop) for t in plain.transforms)
    aug = train_augmentation(0, 0, 0, 0, 0, False, crop_aspect=0.3, size=224)
    crop = aug.transforms[0]
    assert isinstance(crop, v2.RandomResizedCrop)
    assert crop.scale == (0.75, 1.0) and crop.ratio == pytest.approx((1 / 1.3, 1.3))
    torch.manual_seed(0)
    outs = [aug(x) for _ in range(4)]
    assert all(o.shape == x.shape and o.dtype == torch.uint8 for o in outs)
    assert all(not torch.equal(o, x) for o in outs)  # each draw crops and stretches
    assert not torch.equal(outs[0], outs[1])
