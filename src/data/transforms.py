"""Paired (image, target) transforms: the SSD paper's augmentation and the validation resize.

Images come in as uint8 ``tv_tensors.Image`` (3, H, W) and leave as normalised float
(3, size, size); ``target["boxes"]`` is a ``tv_tensors.BoundingBoxes`` in pixel ltrb (XYXY).
"""
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from src.data import augment
from src.data.crop import CROP_RULES, IOU_CROP_OPTIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


class SSDAugmentation:
    """The training transform: zoom-out (up to ``zoom_out`` x; 1 turns it off), IoU-constrained
    crop, flip and resize to ``size`` in one resampling, photometric distortion on the small
    image (its ranges scaled by ``photometric``; 0 turns it off), normalisation by the model's
    ``mean`` and ``std`` (of [0, 1] pixels; the zoom-out canvas is filled with the mean). ``crop`` names
    the crop search (:data:`src.data.crop.CROP_RULES`: "paper" or "nvidia"), ``colour`` the
    colour distortion (:data:`src.data.augment.COLOUR_DISTORTIONS`: "paper" or "nvidia"). See
    :mod:`src.data.augment` for why this is not a ``v2.Compose``.

    Takes and returns ``(image, target)``: a uint8 (3, H, W) image and ``target["boxes"]``
    pixel ltrb (and optionally ``target["crowd"]`` ignore regions); returns a float
    (3, size, size) image and ``BoundingBoxes`` on it, every box inside the image and at least
    1 pixel wide and high (the others are dropped with their labels).
    """

    def __init__(self, size: int = 300, zoom_out: float = 1.0, min_ious=IOU_CROP_OPTIONS, photometric=1.0,
                 crop: str = "nvidia", channel_shuffle: float = 0.0, colour: str = "paper", mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        self.size, self.zoom_out, self.min_ious, self.photometric = size, zoom_out, tuple(min_ious), photometric
        if channel_shuffle and colour != "paper":
            raise ValueError("channel_shuffle is a step of the paper's colour distortion")
        self.channel_shuffle, self.colour = channel_shuffle, colour
        self.crop_rule = CROP_RULES[crop]
        self.fill = [round(255 * m) for m in mean]
        self.normalize = v2.Compose(_normalize(mean, std))

    def __call__(self, image, target):
        h, w = image.shape[-2:]
        boxes = target["boxes"].as_subclass(torch.Tensor)
        g = augment.sample_geometry(boxes, h, w, self.zoom_out, self.min_ious, self.crop_rule)
        pixels = augment.render(image.as_subclass(torch.Tensor), g, self.size, self.fill)
        if self.colour == "nvidia" and self.photometric > 0:
            pixels = augment.nvidia_colour(pixels, self.photometric)
        elif self.colour == "paper" and (self.photometric > 0 or self.channel_shuffle > 0):
            pixels = augment.photometric_distort(pixels, self.photometric, self.channel_shuffle)
        boxes, labels = augment.move_boxes(boxes, target["labels"], g, self.size)
        image = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())  # (3, size, size) uint8
        canvas = (self.size, self.size)
        out = {**target, "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas), "labels": labels}
        if "crowd" in target:
            crowd = augment.move_regions(target["crowd"].as_subclass(torch.Tensor), g, self.size)
            out["crowd"] = tv_tensors.BoundingBoxes(crowd, format="XYXY", canvas_size=canvas)
        return self.normalize(image), out


def train_transforms(size: int = 300, zoom_out: float = 1.0, photometric: float = 1.0, crop: str = "nvidia",
                     min_ious=IOU_CROP_OPTIONS, channel_shuffle: float = 0.0, colour: str = "paper",
                     mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The SSD paper's augmentation; see :class:`SSDAugmentation`."""
    return SSDAugmentation(size, zoom_out, min_ious, photometric, crop, channel_shuffle, colour, mean, std)


def val_transforms(size: int = 300, mean=IMAGENET_MEAN, std=IMAGENET_STD, antialias: bool = True) -> v2.Compose:
    """Resize to ``size`` x ``size`` and normalise; nothing random. ``antialias`` True resizes the
    uint8 image with antialiasing (as PIL); False normalises first and resizes the float image
    without it, bilinearly (torchvision's detection models, whose weights expect that)."""
    if antialias:
        return v2.Compose([v2.Resize((size, size), antialias=True), *_normalize(mean, std)])
    return v2.Compose([*_normalize(mean, std), v2.Resize((size, size), antialias=False)])


def model_transforms(spec) -> v2.Compose:
    """:func:`val_transforms` as a model's spec (:class:`~src.models.specs.SSDSpec`) says."""
    pre = spec.preprocessing
    return val_transforms(spec.fig_size, pre.mean, pre.std, pre.antialias)
