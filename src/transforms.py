"""Paired (image, target) transforms: the SSD paper's augmentation and the validation resize.

Images are uint8 ``tv_tensors.Image`` (3, H, W); ``target["boxes"]`` is a
``tv_tensors.BoundingBoxes`` in pixel ltrb (XYXY). Every step keeps the boxes inside the
image, and ``SanitizeBoundingBoxes`` drops any box (with its label) that lost its area.
"""
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IOU_CROP_OPTIONS = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]  # minimum IoU; 1.0 keeps the whole image


def _normalize():
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transforms(size: int = 300, zoom_out: float = 4.0) -> v2.Compose:
    """Zoom-out (up to ``zoom_out`` x, 1 turns it off), IoU-constrained crop, flip, resize,
    photometric distortion, normalisation.

    Photometric distortion runs after the resize: on a 300x300 image rather than on a
    zoomed-out canvas of up to 4x the original size, which is several times cheaper.
    """
    mean_fill = [round(255 * m) for m in IMAGENET_MEAN]
    zoom = [v2.RandomZoomOut(fill={tv_tensors.Image: mean_fill, "others": 0}, side_range=(1.0, zoom_out), p=0.5)]
    return v2.Compose([
        *(zoom if zoom_out > 1 else []),
        v2.RandomIoUCrop(sampler_options=IOU_CROP_OPTIONS),
        v2.RandomHorizontalFlip(p=0.5),
        v2.Resize((size, size), antialias=True),
        v2.RandomPhotometricDistort(p=0.5),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=1.0),
        *_normalize(),
    ])


def val_transforms(size: int = 300) -> v2.Compose:
    """Resize to ``size`` x ``size`` and normalise; nothing random."""
    return v2.Compose([v2.Resize((size, size), antialias=True), *_normalize()])
