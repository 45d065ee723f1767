"""The SSD paper's training augmentation, made cheap: zoom-out, the IoU-constrained crop
(:mod:`src.data.crop`), flip and resize resampled in one step; photometric distortion with OpenCV on the small image.

Why not ``v2.RandomZoomOut`` + ``v2.RandomIoUCrop`` + ``v2.Resize`` +
``v2.RandomPhotometricDistort``? Same maths, but the zoom-out materialises a canvas of up
to 4x the image side (16x the pixels), the crop's 50 trials run one at a time, and the hue
shift converts to HSV in float. On a 640x480 COCO-sized image that composition costs
about 18 ms a sample on one core; this one costs a few (``python benchmark.py --only data``).

Boxes are pixel ltrb (XYXY). Random numbers come from torch's generator, which the
DataLoader seeds per worker, so ``torch.manual_seed`` makes a sample reproducible.
"""
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from src.data.crop import CROP_RULES, CropRule, sample_crop

@dataclass(frozen=True)
class Geometry:
    """Where the output comes from, in the coordinates of the zoomed-out canvas.

    The canvas is ``canvas_w`` x ``canvas_h`` of fill with the image at (``left``, ``top``);
    ``crop`` is the (x0, y0, x1, y1) region of the canvas that becomes the output.
    """
    canvas_w: int
    canvas_h: int
    left: int
    top: int
    crop: tuple[int, int, int, int]
    flip: bool


def sample_zoom_out(h: int, w: int, zoom_out: float) -> tuple[int, int, int, int]:
    """With probability 0.5, a canvas up to ``zoom_out`` times the image side with the image
    at a random place: (canvas_w, canvas_h, left, top)."""
    r = torch.rand(4).tolist()
    if zoom_out <= 1 or r[0] >= 0.5:
        return w, h, 0, 0
    ratio = 1 + (zoom_out - 1) * r[1]
    canvas_w, canvas_h = int(w * ratio), int(h * ratio)
    return canvas_w, canvas_h, int((canvas_w - w) * r[2]), int((canvas_h - h) * r[3])


def sample_geometry(boxes: torch.Tensor, h: int, w: int, zoom_out: float, min_ious,
                    rule: CropRule = CROP_RULES["paper"]) -> Geometry:
    """Zoom-out, then crop, then flip, drawn from the image size and its (n, 4) pixel ltrb boxes."""
    canvas_w, canvas_h, left, top = sample_zoom_out(h, w, zoom_out)
    crop = sample_crop(boxes + torch.tensor([left, top, left, top]), canvas_h, canvas_w, min_ious, rule)
    return Geometry(canvas_w, canvas_h, left, top, crop, flip=bool(torch.rand(()) < 0.5))


def render(image: torch.Tensor, g: Geometry, size: int, fill) -> np.ndarray:
    """The output pixels: only the part of the image inside the crop is resized (antialiased),
    into a ``size`` x ``size`` canvas of ``fill``; the zoomed-out canvas is never built.

    :param image: (3, H, W) uint8
    :return: (size, size, 3) uint8, contiguous HWC for OpenCV
    """
    x0, y0, x1, y1 = g.crop
    out = torch.empty(size, size, 3, dtype=torch.uint8)
    out[:] = torch.tensor(fill, dtype=torch.uint8)
    h, w = image.shape[-2:]
    vx0, vy0 = max(x0, g.left), max(y0, g.top)  # the visible part of the image, canvas pixels
    vx1, vy1 = min(x1, g.left + w), min(y1, g.top + h)
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    dx0, dx1 = round((vx0 - x0) * sx), round((vx1 - x0) * sx)  # where it lands in the output
    dy0, dy1 = round((vy0 - y0) * sy), round((vy1 - y0) * sy)
    if dx1 > dx0 and dy1 > dy0:
        visible = image[:, vy0 - g.top:vy1 - g.top, vx0 - g.left:vx1 - g.left]
        out.permute(2, 0, 1)[:, dy0:dy1, dx0:dx1] = F.resize(visible, [dy1 - dy0, dx1 - dx0], antialias=True)
    pixels = out.numpy()
    return cv2.flip(pixels, 1) if g.flip else pixels


def move_boxes(boxes: torch.Tensor, labels: torch.Tensor, g: Geometry, size: int, min_size: float = 1.0):
    """Boxes through the same geometry: those whose centre lies inside the crop are kept,
    clipped to it and scaled to ``size``; any left thinner than ``min_size`` pixels is dropped.

    :param boxes: (n, 4) pixel ltrb in the image
    :return: boxes (m, 4) pixel ltrb in the output, labels (m,)
    """
    x0, y0, x1, y1 = g.crop
    boxes = boxes + torch.tensor([g.left - x0, g.top - y0] * 2)  # crop coordinates
    cw, ch = x1 - x0, y1 - y0
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (n, 2)
    keep = ((centres > 0) & (centres < torch.tensor([cw, ch]))).all(1)
    boxes = boxes[keep].clamp(min=0).minimum(torch.tensor([cw, ch, cw, ch])) * torch.tensor([size / cw, size / ch] * 2)
    if g.flip:
        boxes = torch.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], dim=1)
    labels = labels[keep]
    big = ((boxes[:, 2:] - boxes[:, :2]) >= min_size).all(1)
    return boxes[big], labels[big]


def move_regions(regions: torch.Tensor, g: Geometry, size: int) -> torch.Tensor:
    """Ignore regions (crowds) through the same geometry: every part inside the crop is kept,
    whatever its centre, clipped and scaled to ``size``; regions left empty are dropped.

    :param regions: (k, 4) pixel ltrb in the image
    :return: (j, 4) pixel ltrb in the output
    """
    x0, y0, x1, y1 = g.crop
    cw, ch = x1 - x0, y1 - y0
    regions = regions + torch.tensor([g.left - x0, g.top - y0] * 2)
    regions = regions.clamp(min=0).minimum(torch.tensor([cw, ch, cw, ch])) * torch.tensor([size / cw, size / ch] * 2)
    if g.flip:
        regions = torch.stack([size - regions[:, 2], regions[:, 1], size - regions[:, 0], regions[:, 3]], dim=1)
    return regions[((regions[:, 2:] - regions[:, :2]) > 0).all(1)]


def photometric_distort(rgb: np.ndarray, strength: float = 1.0, channel_shuffle: float = 0.0) -> np.ndarray:
    """The SSD paper's colour distortion, each step with probability 0.5: brightness x[0.875,
    1.125], contrast x[0.5, 1.5] (before or after the next two), saturation x[0.5, 1.5], hue
    +-0.05 of the circle. Same ranges as ``v2.RandomPhotometricDistort`` at ``strength`` 1; each
    range shrinks towards no change with ``strength``. The channels are never reordered: the
    paper's configuration gives that step probability 0 (torchvision's class, 0.5), and a
    red object turned blue is another object in many users' data (lights, fruit, signs);
    ``channel_shuffle`` is that step's probability, for studies.

    :param rgb: (H, W, 3) uint8
    :return: (H, W, 3) uint8
    """
    r = torch.rand(9).tolist()
    contrast_first = r[2] < 0.5

    def factor(u, half_range):
        return _factor(u, half_range, strength)

    if r[0] < 0.5:
        rgb = _affine(rgb, factor(r[1], 0.125), 0.0)
    if contrast_first and r[3] < 0.5:
        rgb = _contrast(rgb, factor(r[4], 0.5))
    if r[5] < 0.5:
        gray = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        saturation = factor(r[6], 0.5)
        rgb = cv2.addWeighted(rgb, saturation, gray, 1 - saturation, 0)
    if r[7] < 0.5:
        rgb = _shift_hue(rgb, (2 * r[8] - 1) * 0.05 * strength)
    if not contrast_first and r[3] < 0.5:
        rgb = _contrast(rgb, factor(r[4], 0.5))
    if channel_shuffle > 0 and torch.rand(()) < channel_shuffle:  # no draw when off: the stream stays the same
        rgb = rgb[..., torch.randperm(3).numpy()].copy()
    return rgb


def nvidia_colour(rgb: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """NVIDIA's SSD300 v1.1 colour distortion (its DALI pipeline), on every image: saturation
    x[0.5, 1.5], then contrast x[0.5, 1.5] about the middle grey 128, then brightness
    x[0.875, 1.125]. Its hue shift, +-0.5 degrees (DALI's hue is in degrees), changes a channel by
    2 grey levels at most and is left out. Each range shrinks towards no change with ``strength``.

    :param rgb: (H, W, 3) uint8
    :return: (H, W, 3) uint8
    """
    r = torch.rand(3).tolist()
    saturation, contrast, brightness = (_factor(u, half, strength) for u, half in zip(r, (0.5, 0.5, 0.125)))
    return colour_twist(rgb, saturation, contrast, brightness)


def colour_twist(rgb: np.ndarray, saturation: float, contrast: float, brightness: float) -> np.ndarray:
    """DALI's saturation (its ``hsv`` operator: the colour's distance from the grey axis scaled,
    the grey, luma Y = 0.299 R + 0.587 G + 0.114 B, kept), then its ``brightness_contrast`` about
    128, in float with one rounding at the end, as DALI's float intermediate:
    ``brightness * (128 + contrast * (Y + saturation * (c - Y) - 128))`` per channel c."""
    grey = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    gain = brightness * contrast
    return cv2.addWeighted(rgb, gain * saturation, grey, gain * (1 - saturation), brightness * 128 * (1 - contrast))


COLOUR_DISTORTIONS = ("paper", "nvidia")  # photometric_distort, nvidia_colour: --colour's choices


def _factor(u: float, half_range: float, strength: float) -> float:
    """A uniform draw ``u`` in [0, 1) -> a factor in 1 +- ``half_range`` x ``strength``."""
    return 1 + (2 * u - 1) * half_range * strength


def _affine(rgb, scale, shift):
    lut = np.clip(np.arange(256) * scale + shift, 0, 255).astype(np.uint8)
    return cv2.LUT(rgb, lut)


def _contrast(rgb, factor):
    mean = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).mean()
    return _affine(rgb, factor, (1 - factor) * mean)


def _shift_hue(rgb, fraction):
    if round(fraction * 180) == 0:  # no shift at 8-bit resolution: skip the lossy HSV round trip
        return rgb
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # 8-bit hue is 0..179
    lut = np.stack([(np.arange(256) + round(fraction * 180)) % 180, np.arange(256), np.arange(256)], axis=1)
    return cv2.cvtColor(cv2.LUT(hsv, lut.astype(np.uint8).reshape(256, 1, 3)), cv2.COLOR_HSV2RGB)
