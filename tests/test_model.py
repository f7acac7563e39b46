import urllib.error

import numpy as np
import pytest
import timm
import torch
import torchvision
from sklearn.datasets import load_sample_image
from torchvision.transforms import v2

from adafilter_lib.core import model as model_lib
from adafilter_lib.core.errors import KitError
from adafilter_lib.core.model import backbone_spec, build_backbone, build_transfer_model


def test_lite0_wheel_keys_rename_onto_timm_exactly():
    renamed = model_lib.lite0_state_dict_from_wheel()
    timm_keys = set(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    assert set(renamed) == timm_keys and len(renamed) == 296


def _imagenet_top5(net, image_name: str) -> list[str]:
    image = torch.from_numpy(np.array(load_sample_image(image_name))).permute(2, 0, 1)  # (3, H, W) uint8
    spec = backbone_spec("efficientnet_lite0")
    prep = v2.Compose(
        [
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(spec.mean, spec.std),
        ]
    )
    with torch.no_grad():
        top = net(prep(image)[None])[0].topk(5).indices.tolist()
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in top]


def test_pretrained_lite0_recognizes_real_photos():
    """The photos scikit-learn ships: a Chinese temple and a daisy-like flower."""
    net = build_backbone("efficientnet_lite0", pretrained=True).eval()
    temple = _imagenet_top5(net, "china.jpg")
    assert temple[0] in ("palace", "monastery", "bell cote, bell cot", "pagoda, pagoda", "stupa, tope"), temple
    assert "daisy" in _imagenet_top5(net, "flower.jpg")[:2]
    random = build_backbone("efficientnet_lite0", pretrained=False).eval()
    assert "daisy" not in _imagenet_top5(random, "flower.jpg")[:2]


@pytest.mark.parametrize(
    "name, dim", [("efficientnet_lite0", 1280), ("resnet18", 512), ("resnet50", 2048), ("mobilenet_v2", 1280)]
)
def test_transfer_model_replaces_the_head(name, dim):
    net = build_transfer_model(name, num_classes=7, pretrained=False).eval()
    assert net.head.in_features == dim and net.head.out_features == 7
    out = net(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 7) and out.gates == {}
    assert net.features(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_torchvision_download_reaches_the_network_boundary(monkeypatch):
    calls = []
    reference = torchvision.models.resnet18(weights=None).state_dict()

    def fake_download(url, **kwargs):
        calls.append((url, kwargs.get("check_hash")))
        return reference

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    net = build_backbone("resnet18", pretrained=True)
    assert calls == [(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url, True)]
    assert torch.equal(net.conv1.weight, reference["conv1.weight"])


def test_offline_download_failure_says_how_to_provide_weights(monkeypatch):
    def no_network(url, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(KitError) as err:
        build_transfer_model("resnet50", 10, pretrained=True)
    message = str(err.value)
    assert "model.weights_path" in message and "resnet50-" in message and "\n" not in message


def test_weights_path_loads_offline_and_rejects_wrong_files(tmp_path):
    reference = torchvision.models.mobilenet_v2(weights=None).state_dict()
    torch.save(reference, tmp_path / "mnv2.pth")
    net = build_backbone("mobilenet_v2", weights_path=str(tmp_path / "mnv2.pth"))
    assert torch.equal(net.features[0][0].weight, reference["features.0.0.weight"])
    with pytest.raises(KitError, match="do not match"):
        build_backbone("resnet18", weights_path=str(tmp_path / "mnv2.pth"))
    with pytest.raises(KitError, match="not found"):
        build_backbone("resnet18", weights_path=str(tmp_path / "missing.pth"))


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(KitError) as err:
        build_backbone("resnet19")
    assert "did you mean 'resnet18'" in str(err.value) and "efficientnet_lite0" in str(err.value)
