import numpy as np
import pytest
import torch

from pneumoscan.models.registry import (
    PretrainedWeightsUnavailable,
    create_model,
    get_spec,
    list_models,
    lite_weights_path,
    map_lite_state_dict,
)


def test_registry_lists_the_offline_models():
    assert {"custom-cnn", "efficientnet-lite0"} <= set(list_models())


def test_lite0_mapping_loads_every_tensor_with_matching_shapes():
    import timm

    src = torch.load(lite_weights_path(0), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_lite_state_dict(src, model)
    assert len(mapped) == len(src) == len(model.state_dict()) == 296
    for k, v in mapped.items():
        assert model.state_dict()[k].shape == v.shape
    assert sum(v.numel() for k, v in mapped.items() if "num_batches" not in k
               and "running" not in k) == 4_652_008


def test_pretrained_lite0_sees_a_cat():
    from PIL import Image
    from skimage.data import chelsea

    model = create_model("efficientnet-lite0", pretrained=True, num_outputs=1000).eval()
    img = Image.fromarray(chelsea()).resize((224, 224), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        top5 = model((x - 0.5) / 0.5).topk(5).indices[0].tolist()
    assert set(top5) & set(range(281, 286)), top5  # ImageNet domestic-cat classes


@pytest.mark.parametrize("name", ["custom-cnn", "efficientnet-lite0"])
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, pretrained=False, num_outputs=1).train()
    x = torch.randn(2, 3, 96, 96)
    out = model(x)
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_target_layer_comes_from_the_registry_and_yields_a_feature_map():
    for name in ("custom-cnn", "efficientnet-lite0"):
        model = create_model(name, pretrained=False).eval()
        layer = get_spec(name).target_layer(model)
        shapes = []
        handle = layer.register_forward_hook(lambda m, i, o, s=shapes: s.append(o.shape))
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
        handle.remove()
        assert len(shapes) == 1 and shapes[0][-2:] in ((7, 7), (14, 14)), (name, shapes)


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        create_model("resnet-9000")


def test_timm_model_without_network_gives_a_clear_error():
    """No network here: the hub is found unreachable first, so the answer comes from the local
    cache at once instead of after the hub client's ~45 s of retries."""
    with pytest.raises(PretrainedWeightsUnavailable, match="resnet18.*hub is unreachable"):
        create_model("resnet18", pretrained=True)
    assert create_model("resnet18", pretrained=False, num_outputs=1)(
        torch.zeros(1, 3, 64, 64)).shape == (1, 1)
