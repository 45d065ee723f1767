"""Tiled inference: small objects in large images.

SSD sees every image at its input size (300x300): a 20 px object of a 1920x1080 frame shrinks to
a few pixels and is lost. Here the image is also cut into overlapping tiles of ``tile`` pixels,
each seen at (nearly) its own scale; the whole image and all its tiles go through the detector
as one batch, the tiles' boxes are moved back into the image, and everything is merged by
class-wise NMS. The whole-image pass keeps the large objects that no tile holds entire.

Nothing here imports torch: it wraps any detector of the inference scripts (PyTorch or an
exported model), NumPy images in, :class:`~src.inference.detections.Detections` out.
"""
import math

import cv2
import numpy as np

from src.inference.detections import Detections
from src.utils.errors import UserError


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` pixels, neighbours
    overlapping by at least ``overlap`` of a tile, spread evenly (the last one ends at the
    edge). One tile, at 0, when ``tile >= length``."""
    if tile >= length:
        return [0]
    stride = tile * (1.0 - overlap)
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """The tiles of a ``width`` x ``height`` image as ltrb pixel rectangles (x0, y0, x1, y1),
    each ``tile`` pixels a side (or the image's side where it is shorter), row by row."""
    tw, th = min(tile, width), min(tile, height)
    return [(x, y, x + tw, y + th) for y in tile_starts(height, th, overlap) for x in tile_starts(width, tw, overlap)]


def check_tile(tile: int, overlap: float, input_size: int, image_sizes=()):
    """Refuse a tile under the model's input size (it would be enlarged: nothing gained), an
    overlap outside [0, 1), and a tile larger than every image (``image_sizes``: (w, h) pairs)."""
    if not 0 <= overlap < 1:
        raise UserError(f"--tile-overlap {overlap:g} is not in [0, 1)")
    if tile < input_size:
        raise UserError(f"--tile {tile} is under the model's input size ({input_size} px): a tile is never enlarged, "
                        f"use at least {input_size}")
    sizes = list(image_sizes)
    if sizes and all(tile > max(w, h) for w, h in sizes):
        w, h = sizes[0]
        raise UserError(f"--tile {tile} is larger than the image ({w}x{h})" if len(sizes) == 1 else
                        f"--tile {tile} is larger than every image (the largest is {max(max(s) for s in sizes)} px)")


class TiledDetector:
    """A detector (NumPy RGB images in, :class:`Detections` out) run on the whole image and on
    overlapping tiles, the results merged.

    :param detector: the detector of an inference script (``cli.detector_from_args``)
    :param tile: side of a tile in pixels of the image
    :param overlap: share of a tile that neighbours overlap, in [0, 1)
    :param nms_threshold: IoU of the class-wise NMS that merges the passes (None: the detector's)
    :param max_output: detections kept per image after merging (None: the detector's)
    :param edge: a tile's detection whose box comes within this share of the tile of a tile
        edge inside the image is dropped: the object is cut there, and another tile (or the
        whole image) holds it entire
    :param largest: a tile's detection whose longer side is over this share of the tile is
        dropped: tiles are for the small objects, the whole image sees the large ones, and a
        large box in a tile is most often a piece of an object larger than the tile
    """

    def __init__(self, detector, tile: int, overlap: float = 0.2, nms_threshold: float | None = None,
                 max_output: int | None = None, edge: float = 0.025, largest: float = 0.3):
        self.detector, self.tile, self.overlap, self.edge, self.largest = detector, tile, overlap, edge, largest
        self.nms_threshold = detector.nms_threshold if nms_threshold is None else nms_threshold
        self.max_output = detector.max_output if max_output is None else max_output
        self.category_names = detector.category_names
        self.describe = f"{detector.describe}, tiles of {tile} px overlapping {overlap:g}"

    def __call__(self, images_rgb: list[np.ndarray]) -> list[Detections]:
        """Detect objects in uint8 RGB images (H, W, 3); an image one tile covers is run whole
        (its result is then exactly the detector's)."""
        return [self.detect(image) for image in images_rgb]

    def detect(self, image: np.ndarray) -> Detections:
        h, w = image.shape[:2]
        grid = tile_grid(w, h, self.tile, self.overlap)
        if len(grid) == 1:
            return self.detector([image])[0]
        crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in grid]
        whole, *parts = self.detector([image, *crops])  # one batch
        kept = [whole] + [self._inside(d, rect, w, h) for d, rect in zip(parts, grid)]
        return self._merge(kept)

    def _inside(self, dets: Detections, rect, width, height) -> Detections:
        """A tile's detections in pixels of the image, without those cut by an inner tile edge
        and those too large for a tile."""
        x0, y0, x1, y1 = rect
        boxes = np.asarray(dets.boxes, dtype=np.float32).reshape(-1, 4) + np.array([x0, y0, x0, y0], np.float32)
        e = self.edge * max(x1 - x0, y1 - y0)
        cut = (((boxes[:, 0] <= x0 + e) & (x0 > 0)) | ((boxes[:, 1] <= y0 + e) & (y0 > 0))
               | ((boxes[:, 2] >= x1 - e) & (x1 < width)) | ((boxes[:, 3] >= y1 - e) & (y1 < height)))
        large = (boxes[:, 2:] - boxes[:, :2]).max(axis=1, initial=0) > self.largest * max(x1 - x0, y1 - y0)
        keep = ~cut & ~large
        return Detections(boxes[keep], np.asarray(dets.labels)[keep], np.asarray(dets.scores)[keep],
                          [n for n, k in zip(dets.names, keep) if k])

    def _merge(self, parts: list[Detections]) -> Detections:
        """Class-wise NMS over all passes (OpenCV's: no torch on this path), best scores first."""
        boxes = np.concatenate([np.asarray(d.boxes, np.float32).reshape(-1, 4) for d in parts])
        labels = np.concatenate([np.asarray(d.labels, np.int64).reshape(-1) for d in parts])
        scores = np.concatenate([np.asarray(d.scores, np.float32).reshape(-1) for d in parts])
        names = [n for d in parts for n in d.names]
        if len(boxes) == 0:
            return Detections(boxes, labels, scores, [])
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # ltrb -> xywh
        keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), labels.tolist(), -1.0,
                                                  self.nms_threshold), dtype=np.int64).reshape(-1)
        keep = keep[np.argsort(-scores[keep], kind="stable")][:self.max_output]
        return Detections(boxes[keep], labels[keep], scores[keep], [names[i] for i in keep])
