"""SSD300-ResNet50, SSD512-ResNet50 and SSDLite-MobileNetV2, and :func:`build_model` for every model.

Module names follow the reference implementation (``feature_extractor``,
``additional_blocks``, ``loc``, ``conf``) so that the original repository's and
NVIDIA's SSD300 v1.1 state dicts load with ``strict=True``. torchvision's models
(SSD300-VGG16, SSDLite320-MobileNetV3) are in :mod:`src.models.torchvision_family`.
"""
import torch
from torch import nn
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, mobilenet_v2, resnet50
from torchvision.models.mobilenetv2 import InvertedResidual

from src.models.specs import SSDSpec, get_spec
from src.models.torchvision_family import (
    TORCHVISION_BACKBONE_WEIGHTS,
    TORCHVISION_DEFAULT_BACKBONE,
    build_mobilenet_v3,
    build_vgg16,
)

# torchvision's ImageNet weights of each model's backbone, and the version each starts from by
# default: ResNet-50's V2 (NVIDIA's SSD300 v1.1 since its October 2022 release: 0.268 COCO AP, against
# 0.249 with V1), MobileNetV2's V1 (the original's SSDLite; no SSD result with V2 is published)
BACKBONE_WEIGHTS = {"ssd": ResNet50_Weights, "ssd512": ResNet50_Weights, "ssdlite": MobileNet_V2_Weights,
                    **TORCHVISION_BACKBONE_WEIGHTS}
DEFAULT_BACKBONE_VERSION = {"ssd": "IMAGENET1K_V2", "ssd512": "IMAGENET1K_V2", "ssdlite": "IMAGENET1K_V1",
                            **TORCHVISION_DEFAULT_BACKBONE}
BACKBONE_VERSIONS = ("IMAGENET1K_V1", "IMAGENET1K_V2", "IMAGENET1K_FEATURES")


def backbone_versions(name: str) -> list[str]:
    """The versions of torchvision's ImageNet weights that model ``name``'s backbone has."""
    return [w.name for w in BACKBONE_WEIGHTS[name]]


def imagenet_weights(name: str, version: str | None = None):
    """torchvision's weights enum of model ``name``'s backbone: ``version`` (one of
    :func:`backbone_versions`) or the model's default."""
    version = version or DEFAULT_BACKBONE_VERSION[name]
    if version not in backbone_versions(name):
        raise ValueError(f"{name}'s backbone has no {version} weights: choose one of "
                         f"{', '.join(backbone_versions(name))}")
    return BACKBONE_WEIGHTS[name][version]


class ResNet50Backbone(nn.Module):
    """ResNet-50 up to ``layer3``, whose first block keeps stride 1: 38x38x1024 at 300x300."""

    def __init__(self, weights=None):
        super().__init__()
        resnet = resnet50(weights=weights)
        # conv1, bn1, relu, maxpool, layer1, layer2, layer3
        self.feature_extractor = nn.Sequential(*list(resnet.children())[:7])
        first_block = self.feature_extractor[-1][0]
        first_block.conv1.stride = (1, 1)
        first_block.conv2.stride = (1, 1)
        first_block.downsample[0].stride = (1, 1)

    def forward(self, x):
        return [self.feature_extractor(x)]


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features, giving two maps at 300x300: the expansion output of block 14
    (19x19x576, after its ReLU6) and the last 1x1 conv (10x10x1280). ``detach_first`` cuts the
    gradient of the first map into the backbone, as the original repository's forward hook did
    by accident (a recipe variant for studies; it changes no output)."""

    def __init__(self, weights=None, detach_first: bool = False):
        super().__init__()
        self.feature_extractor = mobilenet_v2(weights=weights).features
        self.detach_first = detach_first

    def forward(self, x):
        features = self.feature_extractor
        block14 = features[14].conv
        x = block14[0](features[:14](x))
        first = x.detach() if self.detach_first else x  # (N, 576, 19, 19)
        x = features[15:](block14[1:](x))  # block 14 has stride 2: no residual to add
        return [first, x]  # ..., (N, 1280, 10, 10)


def _resnet_extra(in_ch, mid_ch, out_ch, stride, padding):
    return nn.Sequential(
        nn.Conv2d(in_ch, mid_ch, kernel_size=1, bias=False),
        nn.BatchNorm2d(mid_ch),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_ch, out_ch, kernel_size=3, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _separable_head(in_ch, out_ch):
    """Depthwise 3x3, BN, ReLU6, pointwise 1x1: SSDLite's prediction layer."""
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, kernel_size=3, padding=1, groups=in_ch),
        nn.BatchNorm2d(in_ch),
        nn.ReLU6(inplace=True),
        nn.Conv2d(in_ch, out_ch, kernel_size=1),
    )


class SSD(nn.Module):
    """Single-shot detector: backbone maps, extra layers, and loc/conf heads on each map.

    :param spec: the architecture (``specs.SSD300``, ``specs.SSD512`` or ``specs.SSDLITE``)
    :param num_classes: categories plus one for background
    :param pretrained_backbone: load torchvision's ImageNet weights into the backbone
    :param backbone_weights: which of them (:data:`BACKBONE_VERSIONS`; None: the model's default)
    :param detach_first_map: SSDLite only: no gradient from the first feature map into the
        backbone (the original's accident, kept as a recipe variant; see MobileNetV2Backbone)
    """

    def __init__(self, spec: SSDSpec, num_classes: int, pretrained_backbone: bool = False,
                 detach_first_map: bool = False, backbone_weights: str | None = None):
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        weights = imagenet_weights(spec.name, backbone_weights) if pretrained_backbone else None
        if spec.name in ("ssd", "ssd512"):
            if detach_first_map:
                raise ValueError("detach_first_map is an SSDLite variant")
            self._build_ssd300(weights)
        else:
            self._build_ssdlite(weights, detach_first_map)
        self._init_new_layers()

    def _build_ssd300(self, weights):
        """SSD300 (38 -> 19 -> 10 -> 5, then two 3x3 convs without padding: 3, 1) or SSD512
        (64 -> 32 -> ... -> 1, every extra block halving the map)."""
        spec = self.spec
        self.feature_extractor = ResNet50Backbone(weights)
        extras = len(spec.feature_maps) - 1
        mids = (256, 256) + (128,) * (extras - 2)
        ch = spec.out_channels
        halving = extras if spec.name == "ssd512" else 3
        self.additional_blocks = nn.ModuleList(
            _resnet_extra(ch[i], mids[i], ch[i + 1], stride=2 if i < halving else 1, padding=1 if i < halving else 0)
            for i in range(extras)
        )
        boxes = spec.boxes_per_location
        self.loc = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(ch, boxes))
        self.conf = nn.ModuleList(nn.Conv2d(c, a * self.num_classes, 3, padding=1) for c, a in zip(ch, boxes))

    def _build_ssdlite(self, weights, detach_first_map):
        spec = self.spec
        self.feature_extractor = MobileNetV2Backbone(weights, detach_first_map)
        ch = spec.out_channels
        expand = (0.2, 0.25, 0.5, 0.25)
        self.additional_blocks = nn.ModuleList(
            InvertedResidual(ch[i + 1], ch[i + 2], stride=2, expand_ratio=expand[i]) for i in range(4)
        )
        boxes = spec.boxes_per_location
        self.loc = nn.ModuleList(_separable_head(c, a * 4) for c, a in zip(ch, boxes))
        self.conf = nn.ModuleList(_separable_head(c, a * self.num_classes) for c, a in zip(ch, boxes))

    def _init_new_layers(self):
        for module in [*self.additional_blocks.modules(), *self.loc.modules(), *self.conf.modules()]:
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)

    def feature_maps(self, x):
        """The feature maps the heads predict from, largest first."""
        maps = self.feature_extractor(x)
        x = maps[-1]
        for block in self.additional_blocks:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, x):
        """
        :param x: (N, 3, S, S) normalised images, S = ``spec.fig_size`` (300, or 512 for SSD512)
        :return: ``(ploc (N, 4, B), plabel (N, num_classes, B))``, in default-box order
        """
        maps = self.feature_maps(x)
        n = x.shape[0]
        # (N, A*K, H, W) -> (N, K, A*H*W): channel a + A*k holds coordinate/class k of box a
        ploc = torch.cat([head(f).reshape(n, 4, -1) for f, head in zip(maps, self.loc)], dim=2)
        plabel = torch.cat([head(f).reshape(n, self.num_classes, -1) for f, head in zip(maps, self.conf)], dim=2)
        return ploc, plabel


def build_model(name: str, num_classes: int, pretrained_backbone: bool = False, detach_first_map: bool = False,
                backbone_weights: str | None = None, reduced_tail: bool | None = None, from_trained: bool = False):
    """Model ``name`` of :data:`~src.models.specs.MODEL_NAMES`: SSD300-ResNet50 (``"ssd"``),
    SSD512-ResNet50 (``"ssd512"``), SSDLite-MobileNetV2 (``"ssdlite"``) (:class:`SSD`), or
    torchvision's SSD300-VGG16 (``"ssd300-vgg16"``) and SSDLite320-MobileNetV3-Large
    (``"ssdlite320-mnv3"``; ``reduced_tail``: see
    :func:`~src.models.torchvision_family.build_mobilenet_v3`). ``from_trained``: the run starts
    from trained weights (ImageNet's or a checkpoint's), so VGG-16's first stage is frozen, as
    torchvision does."""
    spec = get_spec(name)
    if spec.family == "nvidia":
        return SSD(spec, num_classes, pretrained_backbone, detach_first_map, backbone_weights)
    if detach_first_map:
        raise ValueError("detach_first_map is an SSDLite-MobileNetV2 variant")
    weights = imagenet_weights(name, backbone_weights) if pretrained_backbone else None
    if name == "ssd300-vgg16":
        return build_vgg16(spec, num_classes, weights, from_trained or weights is not None)
    return build_mobilenet_v3(spec, num_classes, weights, reduced_tail)
