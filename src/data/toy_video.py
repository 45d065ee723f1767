"""Toy videos whose identities are known: the toy dataset's shapes moving over a still
background, to measure a tracker (``tools/tracking_eval.py``, ``tests/test_tracking.py``).

Each object crosses the frame on a straight path from one edge to another, at its own speed and
start time, so paths cross; some leave the frame and come back later along the way they went
(the same object: the same id in the ground truth). Objects drawn later hide earlier ones where
they cross.
"""
from dataclasses import dataclass

import numpy as np

from src.data.toy_dataset import CATEGORIES, _background, _draw_shape


@dataclass
class ToyVideo:
    """``frames``: BGR uint8 (H, W, 3); ``truth[f]``: the objects in view in frame ``f`` as
    (id, category id, ltrb box in pixels, clipped to the frame); ``crossings``: how many times
    two objects' boxes came to overlap."""
    frames: list
    truth: list
    crossings: int
    categories: list


def _edge_point(rng, side, width, height, margin):
    """A point just outside ``side`` (0 left, 1 right, 2 top, 3 bottom) of the frame."""
    if side < 2:
        return np.array([-margin if side == 0 else width + margin, rng.uniform(0.15, 0.85) * height])
    return np.array([rng.uniform(0.15, 0.85) * width, -margin if side == 2 else height + margin])


def _path(rng, width, height, size, frames, start, returns):
    """Centres (x, y) per frame of an object entering at ``start``: from one edge to another
    (and back, ``returns``, after a pause out of view); NaN where it is not in the scene."""
    side = int(rng.integers(4))
    a = _edge_point(rng, side, width, height, size)
    b = _edge_point(rng, (side ^ 1) if rng.random() < 0.7 else int(rng.integers(4)), width, height, size)
    if np.linalg.norm(b - a) < max(width, height) * 0.5:  # a short path along one edge: go across instead
        b = _edge_point(rng, side ^ 1, width, height, size)
    steps = max(2, int(np.linalg.norm(b - a) / rng.uniform(3.0, 7.0)))
    way = a + (b - a) * np.linspace(0, 1, steps)[:, None]  # (steps, 2)
    if returns:
        way = np.concatenate([way, np.full((int(rng.integers(8, 20)), 2), np.nan), way[::-1]])
    centres = np.full((frames, 2), np.nan)
    end = min(frames, start + len(way))
    centres[start:end] = way[:end - start]
    return centres


def make_toy_video(seed: int = 0, frames: int = 150, size=(360, 480), objects: int = 6,
                   size_range=(70, 140), returning: float = 0.35) -> ToyVideo:
    """A clip of ``frames`` frames of ``size`` (h, w) in which ``objects`` shapes (sides in
    ``size_range`` pixels) cross, a share ``returning`` of them coming back after leaving.
    An object is in the ground truth while at least half of its box is inside the frame."""
    rng = np.random.default_rng(seed)
    height, width = size
    background = _background(rng, height, width)
    things = []
    for i in range(objects):
        cat_id, kind = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        side = int(rng.integers(*size_range))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        start = int(rng.integers(0, max(1, frames // 3))) if i else 0
        centres = _path(rng, width, height, side, frames, start, rng.random() < returning)
        things.append((i + 1, cat_id, kind, side, colour, centres))
    video = ToyVideo([], [], 0, list(CATEGORIES))
    for f in range(frames):
        img, in_view = background.copy(), []
        for oid, cat_id, kind, side, colour, centres in things:
            if np.isnan(centres[f, 0]):
                continue
            x, y = int(round(centres[f, 0] - side / 2)), int(round(centres[f, 1] - side / 2))
            _draw_shape(img, kind, x, y, side, colour)
            box = np.array([x, y, x + side, y + side], np.float32)
            clipped = np.clip(box, 0, [width, height, width, height])
            if np.prod(clipped[2:] - clipped[:2]) >= 0.5 * side * side:
                in_view.append((oid, cat_id, clipped))
        video.frames.append(img)
        video.truth.append(in_view)
    video.crossings = count_crossings(video.truth)
    return video


def count_crossings(truth: list) -> int:
    """How many times two objects' boxes started to overlap (the frames of a run of overlap
    count once)."""
    before, count = set(), 0
    for in_view in truth:
        now = set()
        for i, (a, _, box_a) in enumerate(in_view):
            for b, _, box_b in in_view[i + 1:]:
                if min(box_a[2], box_b[2]) > max(box_a[0], box_b[0]) and min(box_a[3], box_b[3]) > max(box_a[1], box_b[1]):
                    now.add((min(a, b), max(a, b)))
        count += len(now - before)
        before = now
    return count


def noisy_truth(video: ToyVideo, seed: int = 0, jitter: float = 0.05, drop: float = 0.1, gaps: int = 1,
                gap_length: int = 5) -> list:
    """What a fair detector might report on ``video``: its ground truth with each box side
    moved by Gaussian noise (``jitter`` of the box's side), each detection dropped with
    probability ``drop``, and ``gaps`` runs of ``gap_length`` frames per object with none.

    :returns: per frame (boxes (k, 4) ltrb pixels, labels (k,) in 1..4 (the index of the
        category in ``video.categories``, plus 1), scores (k,) in [0.5, 1])
    """
    rng = np.random.default_rng(seed)
    label_of = {cat_id: i + 1 for i, (cat_id, _) in enumerate(video.categories)}
    frames_of: dict[int, list[int]] = {}
    for f, in_view in enumerate(video.truth):
        for oid, _, _ in in_view:
            frames_of.setdefault(oid, []).append(f)
    hidden = set()
    for oid, frames in frames_of.items():
        for _ in range(gaps):
            start = frames[int(rng.integers(len(frames)))]
            hidden.update((oid, f) for f in range(start, start + gap_length))
    out = []
    for f, in_view in enumerate(video.truth):
        boxes, labels, scores = [], [], []
        for oid, cat_id, box in in_view:
            if (oid, f) in hidden or rng.random() < drop:
                continue
            side = float(np.sqrt(np.prod(box[2:] - box[:2])))
            boxes.append(box + rng.normal(0, jitter * side, 4))
            labels.append(label_of[cat_id])
            scores.append(rng.uniform(0.5, 1.0))
        out.append((np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64),
                     np.array(scores, np.float32)))
    return out
