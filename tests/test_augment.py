"""The fused SSD augmentation against torchvision's functional ops, and boxes against pixels."""
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms.v2 import functional as F

from src.data import augment
from src.data.augment import Geometry
from src.data.crop import CROP_RULES, IOU_CROP_OPTIONS, sample_crop
from src.data.transforms import SSDAugmentation

FILL = [124, 116, 104]


@st.composite
def one_box_images(draw):
    h, w = draw(st.integers(20, 90)), draw(st.integers(20, 90))
    x0, y0 = draw(st.integers(0, w - 12)), draw(st.integers(0, h - 12))
    x1, y1 = draw(st.integers(x0 + 10, w)), draw(st.integers(y0 + 10, h))
    return h, w, torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=100, deadline=None)
@given(one_box_images())
def test_boxes_follow_the_pixels(sample):
    """A white box on black: wherever the geometry puts it, the output box covers white pixels."""
    h, w, boxes, seed = sample
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    x0, y0, x1, y1 = boxes[0].int().tolist()
    image[:, y0:y1, x0:x1] = 255
    torch.manual_seed(seed)
    g = augment.sample_geometry(boxes, h, w, 4.0, [0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    pixels = augment.render(image, g, 300, [0, 0, 0])[..., 0]  # (300, 300)
    out, labels = augment.move_boxes(boxes, torch.tensor([1]), g, 300)
    if len(out) == 0:
        return
    bx0, by0, bx1, by1 = out[0].tolist()
    # one source pixel spans this many output pixels: the blur of the resampling at an edge
    m = 1 + int(max(300 / (g.crop[2] - g.crop[0]), 300 / (g.crop[3] - g.crop[1])))
    inner = pixels[round(by0) + m:round(by1) - m, round(bx0) + m:round(bx1) - m]
    assert inner.size == 0 or inner.min() > 200
    white = np.argwhere(pixels > 128)  # (k, 2) rows, columns
    assert (white[:, 1] >= bx0 - m).all() and (white[:, 1] <= bx1 + m).all()
    assert (white[:, 0] >= by0 - m).all() and (white[:, 0] <= by1 + m).all()


def _reference(image, boxes, g: Geometry, size):
    """The same geometry through torchvision's functional ops, building the whole canvas."""
    h, w = image.shape[-2:]
    pad = [g.left, g.top, g.canvas_w - w - g.left, g.canvas_h - h - g.top]
    image, boxes = F.pad(image, pad, fill=FILL), F.pad(boxes, pad)
    x0, y0, x1, y1 = g.crop
    image, boxes = F.crop(image, y0, x0, y1 - y0, x1 - x0), F.crop(boxes, y0, x0, y1 - y0, x1 - x0)
    image, boxes = F.resize(image, [size, size], antialias=True), F.resize(boxes, [size, size])
    if g.flip:
        image, boxes = F.horizontal_flip(image), F.horizontal_flip(boxes)
    return image, boxes


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_fused_geometry_matches_canvas_then_crop_then_resize(seed):
    torch.manual_seed(seed)
    h, w = 48, 64
    ramp = torch.linspace(0, 255, w).expand(h, w)
    image = tv_tensors.Image(torch.stack([ramp, torch.full((h, w), 90.0), 255 - ramp]).to(torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[4.0, 6, 30, 40], [20, 10, 60, 44]], format="XYXY", canvas_size=(h, w))
    g = augment.sample_geometry(boxes.as_subclass(torch.Tensor), h, w, 4.0, [0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    ref_image, ref_boxes = _reference(image, boxes, g, 60)

    ours = torch.from_numpy(augment.render(image.as_subclass(torch.Tensor), g, 60, FILL)).permute(2, 0, 1)
    diff = (ours.int() - ref_image.int()).abs().float()
    assert diff.mean() < 6  # resampling the visible part alone differs only along its edges
    moved, labels = augment.move_boxes(boxes.as_subclass(torch.Tensor), torch.tensor([1, 2]), g, 60, min_size=0)
    expected = F.clamp_bounding_boxes(ref_boxes).as_subclass(torch.Tensor)[labels - 1]
    torch.testing.assert_close(moved, expected, atol=1e-3, rtol=0)


def test_crop_meets_the_ssd_constraints():
    boxes = torch.tensor([[10.0, 20, 60, 80], [100, 30, 150, 70]])
    for seed in range(50):
        torch.manual_seed(seed)
        x0, y0, x1, y1 = sample_crop(boxes, 120, 200, [0.7])
        cw, ch = x1 - x0, y1 - y0
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 120
        assert 0.3 * 200 - 1 <= cw and 0.3 * 120 - 1 <= ch and 0.5 <= cw / ch <= 2
        crop = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)
        assert box_iou(crop, boxes).max() >= 0.7
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert ((centres > crop[:, :2]) & (centres < crop[:, 2:])).all(1).any()


def test_crop_without_boxes_keeps_the_image():
    torch.manual_seed(0)
    assert sample_crop(torch.zeros(0, 4), 50, 70, [0.1, 0.5, 1.0]) == (0, 0, 70, 50)
    assert sample_crop(torch.zeros(0, 4), 50, 70, [0.5]) == (0, 0, 70, 50)  # no endless draw


def test_colour_steps_match_torchvision():
    torch.manual_seed(0)
    chw = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    rgb = np.ascontiguousarray(chw.permute(1, 2, 0).numpy())

    def close(ours, theirs, tol):
        assert (torch.from_numpy(ours).permute(2, 0, 1).int() - theirs.int()).abs().float().mean() <= tol

    close(augment._affine(rgb, 1.1, 0), F.adjust_brightness(chw, 1.1), 1)
    close(augment._contrast(rgb, 0.6), F.adjust_contrast(chw, 0.6), 1)
    close(augment._shift_hue(rgb, 0.04), F.adjust_hue(chw, 0.04), 3)  # 8-bit HSV: 2-degree hue steps


def test_augmentation_is_reproducible_from_the_torch_seed():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 60, 80), dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes([[5.0, 5, 40, 50]], format="XYXY", canvas_size=(60, 80)),
              "labels": torch.tensor([3])}
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(SSDAugmentation(size=64)(image, target))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1]["boxes"], runs[1][1]["boxes"])


def test_the_crop_has_the_papers_seven_options_unconstrained_patches_included():
    assert IOU_CROP_OPTIONS == (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)  # each drawn with chance 1/7
    boxes = torch.tensor([[20.0, 20, 60, 60]])  # small: only the unconstrained option allows IoU < 0.1
    torch.manual_seed(0)
    crops = [sample_crop(boxes, 200, 200, IOU_CROP_OPTIONS) for _ in range(300)]
    ious = box_iou(torch.tensor(crops, dtype=torch.float32), boxes)[:, 0]
    assert (ious < 0.1).sum() > 10  # patches the six constrained options never give
    centre = (boxes[0, :2] + boxes[0, 2:]) / 2
    assert all(c[0] < centre[0] < c[2] and c[1] < centre[1] < c[3] for c in crops)  # still hold the centre


def test_crowd_regions_follow_the_geometry_clipped_not_dropped():
    g = Geometry(canvas_w=100, canvas_h=80, left=0, top=0, crop=(10, 0, 60, 80), flip=True)
    regions = torch.tensor([[0.0, 10, 30, 40], [50, 0, 100, 80], [70, 0, 90, 20]])  # the last is outside
    moved = augment.move_regions(regions, g, size=50)
    # crop x 10..60 -> 0..50 (x1), flipped: [0, 20] -> [30, 50]; [40, 50] -> [0, 10]
    torch.testing.assert_close(moved, torch.tensor([[30.0, 6.25, 50, 25], [0, 0, 10, 50]]))
    image = tv_tensors.Image(torch.zeros(3, 60, 80, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes([[5.0, 5, 40, 50]], format="XYXY", canvas_size=(60, 80)),
              "labels": torch.tensor([3]),
              "crowd": tv_tensors.BoundingBoxes([[0.0, 0, 80, 60]], format="XYXY", canvas_size=(60, 80))}
    torch.manual_seed(1)
    _, out = SSDAugmentation(size=64)(image, target)
    torch.testing.assert_close(out["crowd"].as_subclass(torch.Tensor), torch.tensor([[0.0, 0, 64, 64]]))


def test_photometric_strength_zero_changes_no_colour():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for seed in range(20):
        torch.manual_seed(seed)
        assert np.array_equal(augment.photometric_distort(rgb, strength=0.0), rgb)


def test_nvidias_crop_rule_needs_every_box_and_keeps_the_image_more_often():
    boxes = torch.tensor([[20.0, 20, 90, 90], [60, 60, 130, 130]])
    whole = (0, 0, 200, 200)
    torch.manual_seed(0)
    paper = [sample_crop(boxes, 200, 200, [0.3, 1.0]) for _ in range(300)]
    nvidia = [sample_crop(boxes, 200, 200, [0.3, 1.0], CROP_RULES["nvidia"]) for _ in range(300)]

    def ious(crops):
        crops = [c for c in crops if c != whole]
        return box_iou(torch.tensor(crops, dtype=torch.float32), boxes)  # (crops, 2)
    assert (ious(nvidia) >= 0.3).all()  # every box overlaps enough
    assert (ious(paper) < 0.3).any()  # the paper's rule needs one box only
    assert sum(c == whole for c in nvidia) > 1.2 * sum(c == whole for c in paper)  # one trial: gentler


def test_nvidias_crop_checks_the_aspect_on_sizes_relative_to_the_image():
    """On a 4:1 image, NVIDIA's rule (DALI's relative coordinates, the original's SSDCropping) keeps
    width/height as fractions of the image in [0.5, 2], so crops are 2 to 8 times wider than high in
    pixels; the paper's rule (torchvision's) keeps the pixel ratio in [0.5, 2]."""
    h, w = 100, 400
    boxes = torch.tensor([[0.0, 0, 400, 100]])  # one box over everything: any crop holds its centre or not

    def shapes(rule):
        torch.manual_seed(0)
        crops = [sample_crop(boxes, h, w, [0.0], rule) for _ in range(200)]
        return torch.tensor([[(x1 - x0) / w, (y1 - y0) / h, (x1 - x0) / (y1 - y0)] for x0, y0, x1, y1 in crops])
    relative, pixels = shapes(CROP_RULES["nvidia"]), shapes(CROP_RULES["paper"])
    fraction_ratio = relative[:, 0] / relative[:, 1]
    assert ((fraction_ratio > 0.5 - 0.1) & (fraction_ratio < 2 + 0.1)).all()  # pixel floors of a 100 px side
    assert (relative[:, 2] > 2 - 0.1).all() and relative[:, 2].max() > 4
    assert ((pixels[:, 2] >= 0.5) & (pixels[:, 2] <= 2)).all()


def test_nvidias_colour_twist_is_dalis_formula():
    """Saturation about the luma grey (DALI's hsv: a linear map along the grey axis), then contrast
    about 128 and brightness, one rounding at the end: against the formula in float64."""
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    x = rgb.astype(np.float64)
    luma = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
    for s, c, b in [(0.5, 1.0, 1.0), (1.5, 0.6, 1.1), (1.2, 1.4, 0.9)]:
        expected = np.clip(b * (128 + c * (luma + s * (x - luma) - 128)), 0, 255)
        assert np.abs(augment.colour_twist(rgb, s, c, b).astype(np.float64) - expected).max() <= 1.0
    grey = np.full((4, 4, 3), 90, np.uint8)
    assert np.array_equal(augment.colour_twist(grey, 1.5, 1.0, 1.0), grey)  # no colour to scale


def test_nvidias_colour_distortion_ranges_and_strength():
    """Every image changes (no coin flips); contrast about 128 then brightness: a flat grey 128
    image only moves by brightness, x[0.875, 1.125]; strength 0 is no change."""
    rgb = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey = np.full((8, 8, 3), 128, np.uint8)
    torch.manual_seed(0)
    changed = sum(not np.array_equal(augment.nvidia_colour(rgb), rgb) for _ in range(20))
    assert changed == 20
    levels = []
    for seed in range(200):
        torch.manual_seed(seed)
        levels.append(int(augment.nvidia_colour(grey)[0, 0, 0]))
    assert 112 <= min(levels) < 118 and 138 < max(levels) <= 144  # 128 x 0.875 = 112, x 1.125 = 144
    for seed in range(10):
        torch.manual_seed(seed)
        assert np.array_equal(augment.nvidia_colour(rgb, strength=0.0), rgb)


def test_the_colour_choice_reaches_the_training_transform():
    image = tv_tensors.Image(torch.full((3, 60, 80), 128, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes([[10, 10, 50, 50]], format="XYXY", canvas_size=(60, 80)),
              "labels": torch.tensor([1])}
    outs = {}
    for colour in ("paper", "nvidia"):
        torch.manual_seed(3)
        outs[colour] = SSDAugmentation(size=32, colour=colour, min_ious=[1.0])(image, target)[0]
    assert not torch.equal(outs["paper"], outs["nvidia"])
    torch.manual_seed(3)
    assert torch.equal(SSDAugmentation(size=32, colour="nvidia", min_ious=[1.0])(image, target)[0], outs["nvidia"])
