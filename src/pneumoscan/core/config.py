"""Training configuration: a frozen dataclass, read from YAML plus key=value overrides."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from .preprocessing import MAX_SMOOTHING


@dataclass(frozen=True)
class TrainConfig:
    # Each key is documented in configs/default.yaml (a test keeps the two equal).
    model: str = "efficientnet-lite0"
    task: str = "binary"
    pretrained: bool = True
    image_size: int = 224
    smoothing: float = 0.0
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
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"config file {path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: "
                              f"{str(e).splitlines()[0]}") from None
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
    cfg = replace(TrainConfig(), **typed)
    check_values(cfg)
    return cfg


# Each numeric key's allowed range: (low, high, low included, high included); None = unbounded.
RANGES = {
    "image_size": (32, None, True, True), "val_fraction": (0.0, 0.5, False, False),
    "smoothing": (0.0, MAX_SMOOTHING, True, True),
    "epochs": (1, None, True, True), "patience": (0, None, True, True),
    "batch_size": (1, None, True, True), "lr": (0.0, None, False, True),
    "weight_decay": (0.0, None, True, True), "warmup_epochs": (0.0, None, True, True),
    "target_sensitivity": (0.0, 1.0, False, True),
    "aug_rotation": (0.0, 180.0, True, True), "aug_translate": (0.0, 1.0, True, True),
    "aug_zoom": (0.0, 1.0, True, False), "aug_brightness": (0.0, None, True, True),
    "aug_contrast": (0.0, None, True, True), "aug_degrade": (0.0, 1.0, True, True),
    "aug_crop_aspect": (0.0, None, True, True), "aug_crop_scale": (0.0, 1.0, False, True),
    "aug_acquisition": (0.0, 1.0, True, True), "ema_decay": (0.0, 1.0, True, False),
    "limit_per_class": (0, None, True, True), "num_workers": (0, None, True, True),
    "cache_budget_gb": (0.0, None, True, True), "num_nodes": (1, None, True, True),
}


def _range_text(low, high, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def check_values(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot be used."""
    if cfg.task not in TASKS:
        raise ConfigError(f"config key 'task' is one of {', '.join(TASKS)}, got {cfg.task!r}")
    for key, (low, high, low_in, high_in) in RANGES.items():
        v = getattr(cfg, key)
        ok = ((v >= low if low_in else v > low)
              and (high is None or (v <= high if high_in else v < high)))
        if not ok or v != v:  # v != v: NaN
            raise ConfigError(f"config key '{key}' must be "
                              f"{_range_text(low, high, low_in, high_in)}, got {v}")


def config_from_dict(d: dict) -> TrainConfig:
    """Rebuild a stored config, ignoring keys that a later version dropped."""
    names = {f.name for f in fields(TrainConfig)}
    return replace(TrainConfig(), **{k: v for k, v in d.items() if k in names})
