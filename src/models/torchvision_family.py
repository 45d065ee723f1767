"""torchvision's SSD300-VGG16 and SSDLite320-MobileNetV3-Large, as models of this project.

The modules are torchvision's own (``backbone``, ``head``), built as its builders build them,
so that its published COCO weights (``ssd300_vgg16_coco-b556d3b4.pth``,
``ssdlite320_mobilenet_v3_large_coco-a79551df.pth``) load with ``strict=True``. Only the output
layout is ours: ``(ploc (N, 4, B), plabel (N, C, B))`` in the default-box order of
:func:`src.models.default_boxes.default_boxes` (level, box size, row, column), so the box coder,
the loss, the decoding and the export are the same code for every model.
"""
from functools import partial

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, VGG16_Weights, mobilenet_v3_large
from torchvision.models.detection import ssd300_vgg16
from torchvision.models.detection import ssdlite as tv_ssdlite
from torchvision.models.detection._utils import retrieve_out_channels

# torchvision's ImageNet weights of each backbone, and the default: the VGG-16 "features" weights
# that its SSD300 was trained from (the original Caffe SSD's, for 0-255 inputs), MobileNetV3's V1
TORCHVISION_BACKBONE_WEIGHTS = {"ssd300-vgg16": VGG16_Weights, "ssdlite320-mnv3": MobileNet_V3_Large_Weights}
TORCHVISION_DEFAULT_BACKBONE = {"ssd300-vgg16": "IMAGENET1K_FEATURES", "ssdlite320-mnv3": "IMAGENET1K_V1"}
# SSDLite's BatchNorm, as torchvision's builder makes it
_SSDLITE_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)


def _to_our_layout(out: torch.Tensor, k: int) -> torch.Tensor:
    """(N, A*K, H, W) with channel ``a*K + k`` (torchvision's) -> (N, K, A*H*W), box a's rows first."""
    n, _, h, w = out.shape
    return out.view(n, -1, k, h * w).transpose(1, 2).reshape(n, k, -1)  # (N, A, K, HW) -> (N, K, A*HW)


class TorchvisionSSD(nn.Module):
    """torchvision's backbone and head, giving :class:`~src.models.ssd.SSD`'s outputs.

    :param spec: ``specs.SSD300_VGG16`` or ``specs.SSDLITE320_MNV3``
    :param backbone: torchvision's feature extractor (an ordered dict of maps, largest first)
    :param head: torchvision's ``SSDHead`` or ``SSDLiteHead``
    """

    def __init__(self, spec, num_classes: int, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.backbone = backbone
        self.head = head

    def feature_maps(self, x):
        """The feature maps the heads predict from, largest first."""
        return list(self.backbone(x).values())

    def forward(self, x):
        """
        :param x: (N, 3, S, S) images normalised as ``spec.preprocessing`` says
        :return: ``(ploc (N, 4, B), plabel (N, num_classes, B))``, in default-box order
        """
        maps = self.feature_maps(x)
        loc = self.head.regression_head.module_list
        conf = self.head.classification_head.module_list
        ploc = torch.cat([_to_our_layout(m(f), 4) for f, m in zip(maps, loc)], dim=2)
        plabel = torch.cat([_to_our_layout(m(f), self.num_classes) for f, m in zip(maps, conf)], dim=2)
        return ploc, plabel


def build_vgg16(spec, num_classes: int, weights=None, from_trained: bool = False) -> TorchvisionSSD:
    """SSD300-VGG16 as ``torchvision.models.detection.ssd300_vgg16`` builds it: starting from
    trained weights (ImageNet ``weights`` or a checkpoint's, ``from_trained``) the first of its five
    stages is frozen, as there."""
    tv = ssd300_vgg16(weights=None, weights_backbone=weights, num_classes=num_classes)  # frozen with weights
    if from_trained and weights is None:
        _freeze_first_stage(tv.backbone.features)
    return TorchvisionSSD(spec, num_classes, tv.backbone, tv.head)


def _freeze_first_stage(features: nn.Sequential):
    """No gradient for VGG-16's layers before its first max-pool (conv1_1, conv1_2): what torchvision
    freezes in a model built from trained weights."""
    first_pool = next(i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d))
    for p in features[:first_pool].parameters():
        p.requires_grad_(False)


def build_mobilenet_v3(spec, num_classes: int, weights=None, reduced_tail: bool | None = None) -> TorchvisionSSD:
    """SSDLite320-MobileNetV3-Large as ``ssdlite320_mobilenet_v3_large`` builds it: the reduced
    tail (the last stage at half width) unless ImageNet ``weights`` are loaded, which are for the
    full one; ``reduced_tail`` forces either (a checkpoint's shapes say which it holds)."""
    reduced = weights is None if reduced_tail is None else reduced_tail
    mobilenet = mobilenet_v3_large(weights=weights, norm_layer=_SSDLITE_NORM, reduced_tail=reduced)
    if weights is None:
        tv_ssdlite._normal_init(mobilenet)
    backbone = tv_ssdlite._mobilenet_extractor(mobilenet, 6, _SSDLITE_NORM)
    channels = retrieve_out_channels(backbone, (spec.fig_size, spec.fig_size))
    head = tv_ssdlite.SSDLiteHead(channels, list(spec.boxes_per_location), num_classes, _SSDLITE_NORM)
    return TorchvisionSSD(spec, num_classes, backbone, head)
