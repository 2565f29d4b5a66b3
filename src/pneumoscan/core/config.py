"""Training configuration: a frozen dataclass, read from YAML plus key=value overrides."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml


@dataclass(frozen=True)
class TrainConfig:
    # Each key is documented in configs/default.yaml (a test keeps the two equal).
    model: str = "efficientnet-lite0"
    task: str = "binary"
    pretrained: bool = True
    image_size: int = 224
    val_fraction: float = 0.1
    seed: int = 42
    split_seed: int = -1
    epochs: int = 5
    patience: int = 3
    batch_size: int = 32
    lr: float = 1.0e-3
    weight_decay: float = 1.0e-2
    warmup_epochs: float = 0.5
    class_weighting: bool = True
    target_sensitivity: float = 0.98
    precision: str = "auto"
    channels_last: bool = True
    aug_rotation: float = 10.0
    aug_translate: float = 0.1
    aug_zoom: float = 0.1
    aug_brightness: float = 0.2
    aug_contrast: float = 0.2
    aug_hflip: bool = False
    aug_degrade: float = 0.0
    aug_crop_aspect: float = 0.0
    aug_crop_scale: float = 0.75
    aug_acquisition: float = 0.0
    ema_decay: float = 0.0
    limit_per_class: int = 0
    num_workers: int = 0
    cache: str = "auto"
    cache_budget_gb: float = 0.0
    cache_dir: str = ""
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    out_dir: str = "runs"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def data_seed(self) -> int:
        """The seed of the train/val split: split_seed, or seed when that is negative."""
        return self.seed if self.split_seed < 0 else self.split_seed


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


TASKS = ("binary", "etiology")  # data.task_labels gives each one's label names


def _coerce(key: str, value, kind: type):
    if isinstance(value, str) and kind is not str:
        value = yaml.safe_load(value)  # "3" -> 3, "true" -> True, "1e-3" -> 0.001
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is str and not isinstance(value, str):
        value = str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' needs a {kind.__name__}, got {value!r}")
    return value


def _check_keys(keys) -> dict[str, type]:
    known = {f.name: _field_type(f.type) for f in fields(TrainConfig)}
    for k in keys:
        if k not in known:
            hint = difflib.get_close_matches(k, known, n=1)
            raise ConfigError(f"unknown config key '{k}'"
                              + (f"; did you mean '{hint[0]}'?" if hint else ""))
    return known


def _field_type(name) -> type:
    return {"bool": bool, "int": int, "float": float, "str": str}[str(name)]


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, updated by a YAML file, then by `key=value` strings."""
    values: dict = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
        values.update(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        k, v = item.split("=", 1)
        values[k.strip()] = v.strip()
    known = _check_keys(values)
    typed = {k: _coerce(k, v, known[k]) for k, v in values.items()}
    if typed.get("task", "binary") not in TASKS:
        raise ConfigError(f"config key 'task' is one of {', '.join(TASKS)}, got {typed['task']!r}")
    if not 0.0 <= typed.get("ema_decay", 0.0) < 1.0:
        raise ConfigError("config key 'ema_decay' is in [0, 1) (0 = off), "
                          f"got {typed['ema_decay']}")
    if not 0.0 < typed.get("aug_crop_scale", 0.75) <= 1.0:
        raise ConfigError("config key 'aug_crop_scale' is in (0, 1] (share of the area kept), "
                          f"got {typed['aug_crop_scale']}")
    return replace(TrainConfig(), **typed)


def config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a stored config, ignoring keys that a later version dropped."""
    names = {f.name for f in fields(TrainConfig)}
    return replace(TrainConfig(), **{k: v for k, v in d.items() if k in names})
