"""The acquisition-shift validation (`pneumoscan evaluate --shift`) and its cue views."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pneumoscan.cli import main
from pneumoscan.data.decode import load_gray
from pneumoscan.evaluation.cues import LUNG_BOX, image_statistics, mask_lungs
from pneumoscan.workflows.shift import (
    SHIFTS,
    originals_agreement,
    render_file,
    shift_named,
    shift_validation,
)


@pytest.fixture(scope="module")
def xray(data_dir) -> np.ndarray:
    path = sorted((data_dir / "train" / "NORMAL").iterdir())[0]
    return load_gray(path, 224)


def test_every_change_keeps_the_size_and_changes_the_pixels(xray):
    names = [s.name for s in SHIFTS]
    assert len(names) == len(set(names))
    for s in SHIFTS:
        out = load_gray(render_file(xray, s), 224)
        assert out.shape == xray.shape, s.name
        assert np.abs(out.astype(int) - xray).mean() > 0.05, s.name  # it did something
    q30 = render_file(xray, shift_named("jpeg30")).getbuffer().nbytes
    q95 = render_file(xray, shift_named("jpeg95")).getbuffer().nbytes
    assert q30 < q95


def test_shift_named_finds_a_change_or_lists_the_known_ones():
    assert shift_named("zoom_in_12").params == {"crop_each_side": 0.12}
    with pytest.raises(KeyError, match="zoom_in_12"):
        shift_named("zoom_in_13")


def test_zoom_out_pads_black_and_zoom_in_crops(xray):
    pad = load_gray(render_file(xray, shift_named("zoom_out_8")), 224)
    assert pad[:8].max() < 20 and pad[:, :8].max() < 20  # the new black frame
    zoom = load_gray(render_file(xray, shift_named("zoom_in_12")), 224)
    # the centre pixel of a 12% crop each side is the centre pixel of the original
    assert abs(int(zoom[112, 112]) - int(xray[112, 112])) < 25


def test_mask_lungs_blanks_the_central_box_only(xray):
    masked = mask_lungs(xray[None])[0]
    r0, r1, c0, c1 = (round(f * 224) for f in LUNG_BOX)
    assert len(np.unique(masked[r0:r1, c0:c1])) == 1
    assert np.array_equal(masked[:r0], xray[:r0])


def test_image_statistics_follow_the_pixels(xray, tmp_path):
    f = tmp_path / "x.png"
    Image.fromarray(xray).save(f)
    bright = np.clip(xray.astype(int) + 40, 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(xray).resize((56, 56)).resize((224, 224)))
    s = image_statistics(np.stack([xray, bright, blurred]), [f, f, f])
    assert s.shape == (3, 5)
    assert s[1, 1] > s[0, 1] + 30  # brightness
    assert s[2, 0] < s[0, 0] / 2  # sharpness (variance of the Laplacian)


def test_shift_validation_scores_each_change_on_val(tiny_run, small_data):
    r = shift_validation(tiny_run.dir, small_data, "val")
    n = r["clean"]["n"]
    assert n > 0 and r["clean"]["mean_abs_dp"] == 0
    assert [c["change"] for c in r["changes"]] == [s.name for s in SHIFTS]
    for c in r["changes"]:
        assert c["n"] == n and c["params"]
        assert 0 <= c["mean_abs_dp"] <= c["max_abs_dp"] <= 1
        assert 0 <= c["label_flips"] <= n
    aurocs = [c["auroc"] for c in r["changes"]]
    assert r["worst"]["auroc"] == min(aurocs)
    assert r["worst"]["auroc_drop"] == pytest.approx(r["clean"]["auroc"] - min(aurocs))
    q = r["cues"]
    assert q["cue_conflicting"]["n"] + q["cue_agreeing"]["n"] == n
    assert len(q["subgroups"]) == 15 and sum(g["n"] for g in q["subgroups"][:3]) == n
    assert "originals" not in r  # small_data has no originals/ beside it


def test_shift_validation_refuses_test(tiny_run, small_data, capsys):
    with pytest.raises(ValueError, match="never on test"):
        shift_validation(tiny_run.dir, small_data, "test")
    code = main(["evaluate", "--shift", "--split", "test", "--model", str(tiny_run.dir),
                 "--data", str(small_data)])
    assert code == 2 and "never on test" in capsys.readouterr().err


def test_cli_shift_json_and_report(tiny_run, small_data, tmp_path, capsys):
    code = main(["evaluate", "--shift", "--split", "val", "--model", str(tiny_run.dir),
                 "--data", str(small_data), "--format", "json", "--report", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out[out.index("{"):])
    assert result["worst"]["change"] in [s.name for s in SHIFTS]
    page = (tmp_path / "robustness.html").read_text()
    assert "Acquisition robustness" in page and result["worst"]["change"] in page
    assert json.loads((tmp_path / "shift.json").read_text())["clean"] == result["clean"]


def test_originals_agree_with_predict_on_each_file(data_dir, originals_dir):
    from pneumoscan.inference.runtime import make_predictor

    predictor = make_predictor(None)
    r = originals_agreement(predictor, data_dir, originals_dir, splits=("val",))["val"]
    assert r["n"] == 16 and len(r["images"]) == 16
    first = r["images"][0]
    direct = predictor.predict([str(originals_dir / "val" / first["label"] / first["name"])])[0]
    assert first["p_original"] == pytest.approx(direct.probability, abs=1e-4)
    assert r["max_abs_dp"] == pytest.approx(
        max(abs(i["p_original"] - i["p_copy"]) for i in r["images"]), abs=1e-4)


def test_render_file_is_a_real_file(xray):
    for s in SHIFTS:
        buf = render_file(xray, s)
        with Image.open(io.BytesIO(buf.getvalue())) as img:
            assert img.format == ("PNG" if s.jpeg_quality is None else "JPEG")
