"""torch.hub entry points: ``torch.hub.load(repo, "ssd300_resnet50", pretrained=...)``.

    model, detector = torch.hub.load("path/to/this/clone", "ssd300_resnet50", source="local", pretrained="nvidia")
    detections = detector([image])  # uint8 RGB (3, H, W) tensors -> boxes in pixels, labels, scores, names

Each entry returns the model (eval mode) and a :class:`src.inference.detector.Detector` ready for images.
"""
from src.checkpoints.schema import load_model
from src.inference.detector import Detector
from src.models.ssd import build_model

dependencies = ["torch", "torchvision", "cv2", "pycocotools"]


# the published COCO weights ``pretrained=True`` loads, per model
_PUBLISHED = {"ssd": "nvidia", "ssd300-vgg16": "torchvision-vgg16", "ssdlite320-mnv3": "torchvision-mnv3"}


def _load(name, pretrained, num_classes, pretrained_backbone, device, **detector_kwargs):
    if pretrained is True and name not in _PUBLISHED:
        raise ValueError(f"no published {name} weights: pass a checkpoint path as pretrained=")
    if pretrained:
        model, ids, names = load_model(_PUBLISHED[name] if pretrained is True else pretrained, name)
    else:
        model = build_model(name, num_classes, pretrained_backbone=pretrained_backbone).eval()
        ids = list(range(1, num_classes))
        names = [f"class_{i}" for i in ids]
    detector = Detector(model, ids, names, device, **detector_kwargs)
    return detector.model, detector


def ssd300_resnet50(pretrained=False, num_classes=81, pretrained_backbone=False, device="cpu", **detector_kwargs):
    """SSD300-ResNet50. ``pretrained``: False, True or "nvidia" (NVIDIA's COCO weights),
    "original" (the original repository's), or a checkpoint path."""
    return _load("ssd", pretrained, num_classes, pretrained_backbone, device, **detector_kwargs)


def ssdlite_mobilenetv2(pretrained=False, num_classes=81, pretrained_backbone=False, device="cpu",
                        **detector_kwargs):
    """SSDLite-MobileNetV2. ``pretrained``: False or a checkpoint path (no COCO weights are published)."""
    return _load("ssdlite", pretrained, num_classes, pretrained_backbone, device, **detector_kwargs)


def ssd512_resnet50(pretrained=False, num_classes=81, pretrained_backbone=False, device="cpu", **detector_kwargs):
    """SSD512-ResNet50. ``pretrained``: False or a checkpoint path (no COCO weights are published)."""
    return _load("ssd512", pretrained, num_classes, pretrained_backbone, device, **detector_kwargs)


def ssd300_vgg16(pretrained=False, num_classes=91, pretrained_backbone=False, device="cpu", **detector_kwargs):
    """torchvision's SSD300-VGG16. ``pretrained``: False, True or "torchvision-vgg16" (its COCO
    weights), or a checkpoint path."""
    return _load("ssd300-vgg16", pretrained, num_classes, pretrained_backbone, device, **detector_kwargs)


def ssdlite320_mobilenet_v3_large(pretrained=False, num_classes=91, pretrained_backbone=False, device="cpu",
                                  **detector_kwargs):
    """torchvision's SSDLite320-MobileNetV3-Large. ``pretrained``: False, True or "torchvision-mnv3"
    (its COCO weights), or a checkpoint path."""
    return _load("ssdlite320-mnv3", pretrained, num_classes, pretrained_backbone, device, **detector_kwargs)
