import subprocess
import sys

import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights

import src.models.ssd as model_module
from src.models.specs import get_spec
from src.models.ssd import build_model


@pytest.mark.parametrize("name", ["ssd", "ssdlite"])
def test_output_shapes_follow_num_classes(name):
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        ploc, plabel = model(torch.randn(2, 3, 300, 300))
    b = get_spec(name).num_boxes
    assert ploc.shape == (2, 4, b) and plabel.shape == (2, 5, b)


@pytest.mark.parametrize("name", ["ssd", "ssdlite"])
def test_feature_map_sizes(name):
    model = build_model(name, num_classes=3).eval()
    with torch.no_grad():
        maps = model.feature_maps(torch.randn(1, 3, 300, 300))
    spec = get_spec(name)
    assert [m.shape[-1] for m in maps] == list(spec.feature_maps)
    assert [m.shape[1] for m in maps] == list(spec.out_channels)


def test_every_ssdlite_head_sends_gradient_to_the_backbone():
    """The original detached the first SSDLite map; each of ours must train the backbone."""
    model = build_model("ssdlite", num_classes=3).eval()  # gradients flow in eval mode too; one small image
    first_expansion = model.feature_extractor.feature_extractor[14].conv[0][0].weight
    stem = model.feature_extractor.feature_extractor[0][0].weight
    x = torch.randn(1, 3, 160, 160)
    maps = model.feature_maps(x)
    for level, (f, loc, conf) in enumerate(zip(maps, model.loc, model.conf)):
        model.zero_grad()
        (loc(f).sum() + conf(f).sum()).backward(retain_graph=True)
        assert stem.grad is not None and stem.grad.abs().sum() > 0, level
        if level == 0:
            assert first_expansion.grad.abs().sum() > 0


def test_no_dead_parameters():
    model = build_model("ssdlite", num_classes=3)
    ploc, plabel = model(torch.randn(2, 3, 160, 160))  # small: every layer still runs
    (ploc.sum() + plabel.sum()).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize("name, fn, default, other", [
    ("ssd", "resnet50", ResNet50_Weights.IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V1),
    ("ssdlite", "mobilenet_v2", MobileNet_V2_Weights.IMAGENET1K_V1, MobileNet_V2_Weights.IMAGENET1K_V2),
])
def test_pretrained_backbone_uses_torchvision_weights(name, fn, default, other, monkeypatch):
    seen = []
    real = getattr(model_module, fn)

    def fake(weights=None):
        seen.append(weights)
        return real(weights=None)
    monkeypatch.setattr(model_module, fn, fake)
    build_model(name, 3, pretrained_backbone=True)
    build_model(name, 3, pretrained_backbone=True, backbone_weights=other.name)
    build_model(name, 3, pretrained_backbone=False, backbone_weights=other.name)
    assert seen == [default, other, None]


@pytest.mark.slow
def test_importing_the_package_builds_nothing():
    code = ("import torchvision.models as m, sys\n"
            "m.resnet50 = m.mobilenet_v2 = lambda *a, **k: sys.exit(3)\n"
            "import importlib, pkgutil, src\n"
            "for m in pkgutil.walk_packages(src.__path__, 'src.'): importlib.import_module(m.name)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=model_module.__file__.rsplit("/src/", 1)[0])
