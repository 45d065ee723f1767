"""A small, deterministic COCO-format detection set of coloured shapes on textured backgrounds.

It is written in the original layout (``annotations/instances_{train,val}2017.json``,
``train2017/``, ``val2017/``) so that every script runs on it exactly as on COCO. Category
ids are deliberately not contiguous, and some images hold no object.
"""
import json
import os
from dataclasses import dataclass

import cv2
import numpy as np

from src.utils.errors import UserError

CATEGORIES = [  # (id, name): ids with gaps, as in COCO
    (2, "circle"), (5, "square"), (9, "triangle"), (14, "cross"),
]


def _background(rng, height, width, plain=False):
    """A random colour gradient with noise and a few faint stripes, uint8 BGR (H, W, 3); or,
    ``plain``, one flat colour."""
    if plain:
        return np.broadcast_to(rng.uniform(0, 255, 3).astype(np.uint8), (height, width, 3)).copy()
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0, 1, width if rng.random() < 0.5 else height)[:, None]
    ramp = c0 + (c1 - c0) * t  # (L, 3)
    img = np.broadcast_to(ramp[None] if len(ramp) == width else ramp[:, None], (height, width, 3)).copy()
    for _ in range(rng.integers(0, 4)):
        p1 = tuple(int(v) for v in rng.integers(0, [width, height]))
        p2 = tuple(int(v) for v in rng.integers(0, [width, height]))
        cv2.line(img, p1, p2, tuple(float(v) for v in rng.uniform(0, 255, 3)), int(rng.integers(1, 6)))
    img += rng.normal(0, rng.uniform(2, 12), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_shape(img, kind, x, y, size, color):
    """Draw one shape filling the box (x, y, size, size); return its tight bbox [x, y, w, h]."""
    x2, y2 = x + size - 1, y + size - 1
    if kind == "circle":
        cv2.circle(img, (x + size // 2, y + size // 2), size // 2, color, -1, cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(img, (x, y), (x2, y2), color, -1)
    elif kind == "triangle":
        pts = np.array([[x + size // 2, y], [x, y2], [x2, y2]], np.int32)
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
    else:  # cross
        t = max(2, size // 4)
        c = size // 2
        cv2.rectangle(img, (x + c - t // 2, y), (x + c + t // 2, y2), color, -1)
        cv2.rectangle(img, (x, y + c - t // 2), (x2, y + c + t // 2), color, -1)
    return [float(x), float(y), float(size), float(size)]


@dataclass(frozen=True)
class ToyStyle:
    """What a toy split looks like.

    ``categories``: the annotated shapes; ``distractor``: a shape drawn alone, never annotated,
    on ``distractor_fraction`` of the images (a thing the model must learn not to detect).
    """
    categories: tuple = tuple(CATEGORIES)
    plain: bool = False  # flat backgrounds instead of noisy gradients
    size_range: tuple = (0.25, 0.6)  # object side, as a fraction of the image's shorter side
    max_objects: int = 3
    empty_fraction: float = 0.1
    distractor: str | None = None
    distractor_fraction: float = 0.0
    min_objects: int = 1
    large_range: tuple | None = None  # with it, a share ``large_fraction`` of the objects is this size
    large_fraction: float = 0.0


STYLES = {
    "textured": ToyStyle(),
    # closest to a user's small set: 3 classes, large objects, flat backgrounds
    "plain": ToyStyle(categories=tuple(CATEGORIES[:3]), plain=True, size_range=(0.3, 0.7)),
    # "plain", with half of the images holding only an unannotated cross
    "distractor": ToyStyle(categories=tuple(CATEGORIES[:3]), plain=True, size_range=(0.3, 0.7), empty_fraction=0.0,
                           distractor="cross", distractor_fraction=0.5),
    # for large images (1280x1280: 10-30 px), 20 to 40 small objects and now and then a large one (256-512 px)
    "small": ToyStyle(size_range=(10 / 1280, 30 / 1280), max_objects=40, min_objects=20, empty_fraction=0.0,
                      large_range=(0.2, 0.4), large_fraction=0.05),
    # one size after another: 4% to 50% of the side (12-150 px at 300x300), up to 8 objects
    "scales": ToyStyle(size_range=(0.04, 0.5), max_objects=8, empty_fraction=0.05),
}


def _place(rng, img, kind, style, height, width):
    size = int(rng.uniform(*style.size_range) * min(height, width))
    x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
    return _draw_shape(img, kind, x, y, size, tuple(float(v) for v in rng.uniform(0, 255, 3)))


def _place_mixed(rng, img, style, n, height, width):
    """``n`` objects, a share ``style.large_fraction`` of them large; the large drawn first, so
    that no small object hides under one."""
    picks = []
    for _ in range(n):
        cat_id, kind = style.categories[rng.integers(len(style.categories))]
        picks.append((rng.random() < style.large_fraction, cat_id, kind))
    objects = []
    for large, cat_id, kind in sorted(picks, key=lambda p: not p[0]):
        sized = ToyStyle(size_range=style.large_range) if large else style
        objects.append((cat_id, _place(rng, img, kind, sized, height, width)))
    return objects


def _make_image(rng, height, width, style):
    """One image and its objects [(category id, bbox)]; ``distractor`` tells whether it holds
    only the unannotated distractor shape."""
    img = _background(rng, height, width, style.plain)
    if style.distractor and rng.random() < style.distractor_fraction:
        _place(rng, img, style.distractor, style, height, width)
        return img, [], True
    n = 0 if rng.random() < style.empty_fraction else int(rng.integers(style.min_objects, style.max_objects + 1))
    if style.large_range:
        return img, _place_mixed(rng, img, style, n, height, width), False
    objects = []
    for _ in range(n):
        cat_id, kind = style.categories[rng.integers(len(style.categories))]
        objects.append((cat_id, _place(rng, img, kind, style, height, width)))
    return img, objects, False


def write_split(root, split, num_images, seed, size=(480, 640), style: ToyStyle | str = "textured"):
    """Write ``num_images`` images of ``size`` (h, w) and their COCO annotation file. The ids of
    distractor-only images are listed under the file's extra key ``distractor_image_ids``."""
    style = STYLES[style] if isinstance(style, str) else style
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, f"{split}2017")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations, distractors = [], [], []
    for image_id in range(1, num_images + 1):
        img, objects, distractor = _make_image(rng, *size, style)
        file_name = f"{image_id:06d}.jpg"
        cv2.imwrite(os.path.join(image_dir, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": image_id, "file_name": file_name, "height": size[0], "width": size[1]})
        if distractor:
            distractors.append(image_id)
        for cat_id, bbox in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                                "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "distractor_image_ids": distractors,
            "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in style.categories]}
    with open(os.path.join(root, "annotations", f"instances_{split}2017.json"), "w") as f:
        json.dump(coco, f)


def generate(root, num_train=800, num_val=100, seed=0, size=(480, 640), style="textured"):
    """Write the train and val splits under ``root`` (deterministic for a given seed and style).
    ``root`` must be new or empty: nothing already there is overwritten."""
    if os.path.isfile(root) or (os.path.isdir(root) and os.listdir(root)):
        raise UserError(f"{root} is {'a file' if os.path.isfile(root) else 'a folder that is not empty'}: "
                        "the toy dataset is made in a new or empty folder")
    write_split(root, "train", num_train, seed, size, style)
    write_split(root, "val", num_val, seed + 1, size, style)
