"""The SSD paper's IoU-constrained random crop (section 2.2, "Data augmentation"), and the two
rules used to search for one: the paper's code (torchvision's) and NVIDIA's (the original's).

Boxes are pixel ltrb (XYXY) in the canvas being cropped. Random numbers come from torch's
generator, so ``torch.manual_seed`` makes a crop reproducible.
"""
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

CROP_SCALE = (0.3, 1.0)  # crop side as a fraction of the canvas side
CROP_ASPECT = (0.5, 2.0)  # crop width / height
# The paper's seven crop options, drawn with equal chance: a minimum IoU with a kept box (0.0: a
# random patch with no IoU constraint, still holding a box centre), or 1.0, the whole image.
IOU_CROP_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


@dataclass(frozen=True)
class CropRule:
    """How a crop is searched for, once a minimum IoU is drawn.

    ``trials`` random crops are tried; a crop qualifies when it has the right shape, holds the
    centre of a box, and overlaps by at least the minimum IoU one of the boxes whose centre
    it holds (``all_boxes=False``) or every box of the image (``all_boxes=True``). When none
    qualifies, a new minimum IoU is drawn. The shape's check is on the crop's width / height in
    pixels, or (``relative_aspect``) on its width and height as fractions of the image's: on a
    640x480 image the first allows fractions w/h in [0.375, 1.5], the second [0.5, 2].
    """
    trials: int
    all_boxes: bool
    relative_aspect: bool = False


CROP_RULES = {
    # the paper's code (and torchvision's RandomIoUCrop): 50 trials, one box overlapping enough
    "paper": CropRule(trials=50, all_boxes=False),
    # NVIDIA's SSD300 v1.1 (DALI's RandomBBoxCrop in relative coordinates, and the original
    # repository's SSDCropping): one trial, every box overlapping enough, the aspect relative;
    # gentler: the whole image comes back about half of the time
    "nvidia": CropRule(trials=1, all_boxes=True, relative_aspect=True),
}


def sample_crop(boxes: torch.Tensor, h: int, w: int, min_ious, rule: CropRule = CROP_RULES["paper"]):
    """The SSD crop of an ``h`` x ``w`` canvas: draw a minimum IoU (1.0 keeps the whole canvas,
    0.0 is a patch with no IoU constraint), then search for a crop by ``rule``. An image without
    boxes is kept whole.

    :param boxes: (n, 4) pixel ltrb in the canvas
    :return: (x0, y0, x1, y1) integer pixels
    """
    if len(boxes) == 0 and max(min_ious) < 1.0:
        return 0, 0, w, h  # no crop can hold a box, and no draw would say "keep"
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (n, 2)
    while True:
        min_iou = min_ious[int(torch.randint(len(min_ious), ()))]
        if min_iou >= 1.0:
            return 0, 0, w, h
        if len(boxes) == 0:
            continue  # only "keep" can end the draw (as in torchvision's RandomIoUCrop)
        r = torch.rand(rule.trials, 4)
        fraction = CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * r[:, :2]  # (T, 2) of the width, height
        size = (torch.tensor([w, h]) * fraction).floor()  # (T, 2) crop width, height in pixels
        start = ((torch.tensor([w, h]) - size) * r[:, 2:]).floor()  # (T, 2) left, top
        crops = torch.cat([start, start + size], dim=1)  # (T, 4)
        shape = fraction if rule.relative_aspect else size
        aspect = shape[:, 0] / shape[:, 1].clamp(min=1e-6)
        ok = (size > 0).all(1) & (aspect >= CROP_ASPECT[0]) & (aspect <= CROP_ASPECT[1])
        inside = ((centres[None] > crops[:, None, :2]) & (centres[None] < crops[:, None, 2:])).all(2)  # (T, n)
        ious = box_iou(crops, boxes)  # (T, n)
        overlap = (ious >= min_iou).all(1) if rule.all_boxes else (ious * inside).amax(1) >= min_iou
        found = (ok & inside.any(1) & overlap).nonzero()
        if len(found):
            return tuple(int(v) for v in crops[found[0, 0]])
