"""Architecture constants of every model, as data.

Each model is described by one frozen dataclass: the feature maps it predicts from, their
channels, the default-box layout on each map, and what comes with the weights: the input's
normalisation and resize (:class:`Preprocessing`) and the decoding's thresholds
(:class:`Decoding`). Sizes (``scales``, ``steps``) are in pixels of the ``fig_size`` x
``fig_size`` input.

Two families: ``"nvidia"``, the original's and NVIDIA's SSD300 v1.1 module names (SSD300 and
SSD512 on ResNet-50, SSDLite on MobileNetV2; :mod:`src.models.ssd`), and ``"torchvision"``,
torchvision's detection models with its module names (:mod:`src.models.torchvision_family`).
"""
import math
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation (src.data.transforms' default)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """An RGB image in [0, 1] becomes ``(x - mean) / std``, resized to ``fig_size`` bilinearly:
    ``antialias`` True resizes the uint8 image with antialiasing first (ours, as PIL), False
    resizes the normalised float image without (torchvision's detection transform)."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    antialias: bool = True


@dataclass(frozen=True)
class Decoding:
    """Defaults of :class:`~src.models.postprocess.Postprocessor` that come with the weights
    (a flag of the scripts overrides each).

    :param score_threshold: evaluation's minimum class probability
    :param clip_before_nms: boxes clamped to the image before NMS (torchvision) or after (NVIDIA)
    :param max_log_size: the decoded log-size offsets are clamped at this (torchvision's
        ``log(1000 / 16)``); None: not clamped
    """
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    max_per_class: int = 200
    max_output: int = 200
    clip_before_nms: bool = False
    max_log_size: float | None = None


@dataclass(frozen=True)
class SSDSpec:
    name: str
    fig_size: int
    feature_maps: tuple[int, ...]           # side of each square feature map
    steps: tuple[int, ...] | None           # pixels between neighbouring cells; None: fig_size / map side
    scales: tuple[float, ...]               # box side per level, plus one extra for s'_k
    aspect_ratios: tuple[tuple[int, ...], ...]
    out_channels: tuple[int, ...]           # channels of each feature map
    family: str = "nvidia"
    clamp_centres: bool = True               # NVIDIA's clamps centres to [0, 1] too; torchvision only sizes
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    decoding: Decoding = field(default_factory=Decoding)

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        # two square boxes (s_k and sqrt(s_k * s_k+1)) plus a pair per aspect ratio
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_boxes(self) -> int:
        return sum(n * f * f for n, f in zip(self.boxes_per_location, self.feature_maps))


SSD300 = SSDSpec(
    name="ssd",
    fig_size=300,
    feature_maps=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    scales=(21, 45, 99, 153, 207, 261, 315),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    out_channels=(1024, 512, 512, 256, 256, 256),
)

# the paper's SSD512 (its COCO setting: the first level at 0.04 of the image, then 0.1 to 0.9 over the
# other six; 24,564 boxes) on the same ResNet-50 as SSD300: one more map, and every map twice as wide
SSD512 = SSDSpec(
    name="ssd512",
    fig_size=512,
    feature_maps=(64, 32, 16, 8, 4, 2, 1),
    steps=(8, 16, 32, 64, 128, 256, 512),
    scales=(20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    out_channels=(1024, 512, 512, 256, 256, 256, 256),
)

SSDLITE = SSDSpec(
    name="ssdlite",
    fig_size=300,
    feature_maps=(19, 10, 5, 3, 2, 1),
    steps=(16, 32, 64, 100, 150, 300),
    scales=(60, 105, 150, 195, 240, 285, 330),
    aspect_ratios=((2, 3),) * 6,
    out_channels=(576, 1280, 512, 256, 256, 64),
)

# torchvision's ssd300_vgg16: the paper's SSD300 (VGG-16, L2-normalised conv4_3), its COCO weights
# decoded as torchvision does (detection thresholds and 400 candidates per class)
_TORCHVISION_LOG_SIZE = math.log(1000.0 / 16)
SSD300_VGG16 = SSDSpec(
    name="ssd300-vgg16",
    fig_size=300,
    feature_maps=(38, 19, 10, 5, 3, 1),
    steps=(8, 16, 32, 64, 100, 300),
    scales=(21, 45, 99, 153, 207, 261, 315),  # torchvision's 0.07 ... 1.05 of 300
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
    out_channels=(512, 1024, 512, 256, 256, 256),
    family="torchvision",
    clamp_centres=False,  # 300 / 32 cells: the last column's centre is at 1.013
    preprocessing=Preprocessing(mean=(0.48235, 0.45882, 0.40784), std=(1 / 255,) * 3, antialias=False),
    decoding=Decoding(score_threshold=0.01, nms_threshold=0.45, max_per_class=400, max_output=200,
                      clip_before_nms=True, max_log_size=_TORCHVISION_LOG_SIZE),
)

# torchvision's ssdlite320_mobilenet_v3_large: scales 0.2 to 0.95 of 320, centres on each map's own grid
SSDLITE320_MNV3 = SSDSpec(
    name="ssdlite320-mnv3",
    fig_size=320,
    feature_maps=(20, 10, 5, 3, 2, 1),
    steps=None,
    scales=(64, 112, 160, 208, 256, 304, 320),
    aspect_ratios=((2, 3),) * 6,
    out_channels=(672, 480, 512, 256, 256, 128),  # the reduced tail of its COCO weights (960 with ImageNet's)
    family="torchvision",
    clamp_centres=False,
    preprocessing=Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), antialias=False),
    decoding=Decoding(score_threshold=0.001, nms_threshold=0.55, max_per_class=300, max_output=300,
                      clip_before_nms=True, max_log_size=_TORCHVISION_LOG_SIZE),
)

SPECS = {s.name: s for s in (SSD300, SSDLITE, SSD512, SSD300_VGG16, SSDLITE320_MNV3)}
MODEL_NAMES = tuple(SPECS)


def get_spec(name: str) -> SSDSpec:
    """The spec of model ``name`` (one of :data:`MODEL_NAMES`)."""
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_NAMES)}")
    return SPECS[name]
