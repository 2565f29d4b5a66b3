from pathlib import Path

import pytest
import yaml

from pneumoscan.core.config import ConfigError, TrainConfig, load_config

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def test_default_yaml_documents_every_key_with_the_dataclass_defaults():
    assert yaml.safe_load(DEFAULT_YAML.read_text()) == TrainConfig().to_dict()
    assert load_config(DEFAULT_YAML) == TrainConfig()


def test_overrides_are_typed():
    cfg = load_config(None, ["epochs=3", "lr=5e-4", "aug_hflip=true", "model=custom-cnn",
                             "weight_decay=0"])
    assert (cfg.epochs, cfg.lr, cfg.aug_hflip, cfg.model) == (3, 5e-4, True, "custom-cnn")
    assert isinstance(cfg.weight_decay, float)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(None, ["epoch=3"])


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigError, match="'epochs' needs a int"):
        load_config(None, ["epochs=three"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["epochs"])


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 2\nseed: 1\n")
    cfg = load_config(f, ["seed=9"])
    assert (cfg.epochs, cfg.seed) == (2, 9)
