import json
import os
import subprocess
import sys

from pneumoscan import __version__
from pneumoscan.cli import main

from .conftest import EXAMPLES


def run_cli(*args, env=None):
    """The real console entry point in a subprocess: exit code, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "pneumoscan.cli", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    for argv in (["predict"], ["frobnicate"], ["evaluate", "--split", "nope"]):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        assert code == 2, argv


def test_missing_dataset_prints_kaggle_commands_not_a_traceback(tmp_path):
    code, out, err = run_cli("evaluate", "--data", tmp_path / "none", "--split", "test")
    assert code == 2
    assert "kaggle datasets download -d paultimothymooney/chest-xray-pneumonia" in err
    assert "Traceback" not in err


def test_data_defaults_to_the_environment_variable(tiny_run, small_data, capsys):
    os.environ["PNEUMOSCAN_DATA"], old = str(small_data), os.environ.get("PNEUMOSCAN_DATA")
    try:
        assert main(["evaluate", "--model", str(tiny_run.dir), "--format", "json"]) == 0
    finally:
        os.environ["PNEUMOSCAN_DATA"] = old or ""
    assert json.loads(capsys.readouterr().out)["n"] == 12


def test_evaluate_json_keys(tiny_run, small_data, capsys):
    code = main(["evaluate", "--data", str(small_data), "--split", "test",
                 "--model", str(tiny_run.dir / "model.json"), "--format", "json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("n", "auroc", "accuracy", "precision", "sensitivity", "specificity", "f1",
                "threshold", "tp", "fp", "tn", "fn"):
        assert key in result, key
    assert result["n"] == 12 == result["tp"] + result["fp"] + result["tn"] + result["fn"]
    assert result["threshold"] == tiny_run.val_metrics["threshold"]


def test_evaluate_val_rebuilds_the_training_split(tiny_run, small_data_with_bad_file, capsys):
    main(["evaluate", "--data", str(small_data_with_bad_file), "--split", "val",
          "--model", str(tiny_run.dir), "--format", "json"])
    result = json.loads(capsys.readouterr().out)
    # the same images and the same threshold as at the end of training: the same metrics
    assert {k: result[k] for k in ("n", "tp", "fp", "tn", "fn")} == \
        {k: tiny_run.val_metrics[k] for k in ("n", "tp", "fp", "tn", "fn")}


def test_predict_formats_and_exit_codes(tiny_run, small_data, tmp_path, capsys):
    good = sorted((small_data / "test" / "NORMAL").iterdir())[0]
    assert main(["predict", str(good), "--model", str(tiny_run.dir), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"threshold", "predictions"}
    assert set(out["predictions"][0]) == {"path", "probability", "label", "error", "ood",
                                          "class_probabilities", "etiology", "threshold",
                                          "warnings"}

    bad = tmp_path / "bad.jpeg"
    bad.write_text("not an image")
    assert main(["predict", str(good), str(bad), "--model", str(tiny_run.dir),
                 "--format", "csv"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == "path,probability,label,ood_flagged,ood_score,warnings,error"
    assert len(lines) == 3
    assert "bad.jpeg" in captured.err


def test_predict_image_flag_and_table_on_full_size_examples():
    code, out, _ = run_cli("predict", "--image", EXAMPLES / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg",
                           EXAMPLES / "PNEUMONIA")
    assert code == 0
    assert out.count(".jpeg") == 9 and "threshold" in out


def test_audit_cli_json(small_data, tmp_path, capsys):
    assert main(["audit", str(small_data), "--out", str(tmp_path / "a"), "--format", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"]["train"] == {"NORMAL": 24, "PNEUMONIA": 24}
    assert (tmp_path / "a" / "class_distribution.png").is_file()


def test_a_split_without_images_is_a_usage_error(tiny_run, small_data, tmp_path, capsys):
    import shutil

    data = tmp_path / "chest_xray"
    shutil.copytree(small_data, data)
    shutil.rmtree(data / "val")  # no official val folder at all
    code = main(["evaluate", "--data", str(data), "--split", "val-official",
                 "--model", str(tiny_run.dir)])
    assert code == 2 and "holds no images" in capsys.readouterr().err


def test_evaluate_val_of_a_quick_run_uses_its_per_class_subset(small_data, tmp_path, capsys):
    from pneumoscan.core.config import load_config
    from pneumoscan.training.train import fit

    cfg = load_config(None, ["image_size=48", "epochs=1", "batch_size=8", "val_fraction=0.2",
                             "model=custom-cnn", "pretrained=false", "precision=32-true",
                             "limit_per_class=15"])
    run = fit(cfg, small_data, tmp_path / "quick")
    capsys.readouterr()  # drop the progress bar's output
    main(["evaluate", "--data", str(small_data), "--split", "val", "--model", str(run.dir),
          "--format", "json"])
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == run.val_metrics["n"] < 10  # the run's own val, not the full carve
    assert [result[k] for k in ("tp", "fp", "tn", "fn")] == \
        [run.val_metrics[k] for k in ("tp", "fp", "tn", "fn")]
