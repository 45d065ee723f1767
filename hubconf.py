"""torch.hub entry points: ``torch.hub.load(repo, "ssd300_resnet50", pretrained=...)``.

    model, detector = torch.hub.load("path/to/this/clone", "ssd300_resnet50", source="local", pretrained="nvidia")
    detections = detector([image])  # uint8 RGB (3, H, W) tensors -> boxes in pixels, labels, scores, names

Each entry returns the model (eval mode) and a :class:`src.inference.detector.Detector` ready for images.
"""
from src.checkpoints.schema import load_model
from src.inference.detector import Detector
from src.models.ssd import build_model

dependencies = ["torch", "torchvision", "cv2", "pycocotools"]


def _load(name, pretrained, num_classes, pretrained_backbone, device, **detector_kwargs):
    if pretrained:
        model, ids, names = load_model("nvidia" if pretrained is True else pretrained, name)
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
    if pretrained is True:
        raise ValueError("no published SSDLite weights: pass a checkpoint path as pretrained=")
    return _load("ssdlite", pretrained, num_classes, pretrained_backbone, device, **detector_kwargs)
