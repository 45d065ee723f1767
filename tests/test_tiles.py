"""Tiled inference (src/inference/tiles.py): the grid, the merge, and the one-tile identity.

The merge is checked with a detector whose behaviour is known exactly: it finds the red and
the green squares of a picture, but, as SSD at a fixed input size, only those of at least 5%
of the picture's longer side. Small squares are then found in tiles only, and a square that
is larger than a tile only by the whole-image pass.
"""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from src.cli import NumpyImages
from src.inference.detections import Detections
from src.inference.detector import Detector
from src.inference.tiles import TiledDetector, check_tile, tile_grid, tile_starts
from src.models.ssd import build_model
from src.utils.errors import UserError

RED, GREEN = (255, 0, 0), (0, 255, 0)  # RGB


class SquareFinder:
    """Finds pure red (label 1) and green (label 2) squares of at least ``least`` of the image's
    longer side; score 0.9. Counts its calls and the images it was given."""
    category_names = ["red", "green"]
    describe = "square finder"
    input_size, nms_threshold, max_output = 300, 0.5, 200

    def __init__(self, least=0.05):
        self.least, self.calls, self.images = least, 0, 0

    def __call__(self, images):
        self.calls += 1
        self.images += len(images)
        return [self.find(img) for img in images]

    def find(self, img):
        boxes, labels = [], []
        for label, colour in ((1, RED), (2, GREEN)):
            mask = np.all(img == colour, axis=2).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            for x, y, w, h, _ in stats[1:n].tolist():
                if max(w, h) >= self.least * max(img.shape[:2]):
                    boxes.append([x, y, x + w, y + h])
                    labels.append(label)
        return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64),
                          np.full(len(labels), 0.9, np.float32), [self.category_names[i - 1] for i in labels])


def picture(width, height, squares):
    """A black RGB picture with squares (x, y, side, colour)."""
    img = np.zeros((height, width, 3), np.uint8)
    for x, y, side, colour in squares:
        img[y:y + side, x:x + side] = colour
    return img


def as_set(dets):
    return sorted((int(label), *np.round(box).astype(int).tolist()) for box, label in zip(dets.boxes, dets.labels))


@pytest.mark.parametrize("width,height,tile,overlap", [(1280, 1280, 300, 0.2), (1920, 1080, 640, 0.25),
                                                        (1000, 301, 300, 0.0), (640, 480, 480, 0.5)])
def test_the_tiles_cover_the_image_and_overlap_as_asked(width, height, tile, overlap):
    grid = tile_grid(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in grid:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (min(tile, width), min(tile, height))
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    for starts, side in ((tile_starts(width, min(tile, width), overlap), min(tile, width)),
                         (tile_starts(height, min(tile, height), overlap), min(tile, height))):
        assert starts == sorted(starts) and starts[0] == 0
        gaps = np.diff(starts)
        assert (side - gaps >= overlap * side - 1).all()  # neighbours share at least the overlap (rounding: 1 px)


def test_one_tile_covering_the_image_gives_exactly_the_whole_image_result():
    torch.manual_seed(0)
    model = build_model("ssdlite", 5).eval()
    with torch.no_grad():  # spread the scores so that something is detected
        for p in model.conf.parameters():
            p.mul_(4)
    detector = NumpyImages(Detector(model, [2, 5, 9, 14], ["circle", "square", "triangle", "cross"],
                                    cls_threshold=0.2))
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    whole = detector([img])[0]
    assert len(whole.scores) > 0
    tiled = TiledDetector(detector, tile=320, overlap=0.2)([img])[0]
    for a, b in ((whole.boxes, tiled.boxes), (whole.labels, tiled.labels), (whole.scores, tiled.scores)):
        np.testing.assert_array_equal(a, b)
    assert whole.names == tiled.names


def test_small_objects_are_found_in_tiles_and_a_large_one_by_the_whole_image():
    squares = [(40 + 170 * i, 60 + 130 * (i % 3), 24, RED if i % 3 else GREEN) for i in range(7)]
    squares.append((500, 600, 520, GREEN))  # larger than any tile: only the whole image holds it entire
    img = picture(1280, 1280, squares)
    finder = SquareFinder()
    assert as_set(finder([img])[0]) == [(2, 500, 600, 1020, 1120)]  # the whole image sees the large one only
    found = TiledDetector(finder, tile=320, overlap=0.25)([img])[0]
    expected = sorted((1 if c == RED else 2, x, y, x + s, y + s) for x, y, s, c in squares)
    assert as_set(found) == expected  # each once: no piece of the large square, no duplicate from an overlap
    assert finder.calls == 2  # the whole image and its tiles, one batch


def test_an_object_on_a_tile_boundary_is_found_once_and_entire():
    finder = SquareFinder()
    grid = tile_grid(900, 900, 300, 0.2)
    seam = grid[1][0]  # the second tile's left edge: the first tile ends at 300
    img = picture(900, 900, [(seam - 10, 100, 40, RED)])  # spans the first tile's right edge and the second's left
    found = TiledDetector(finder, tile=300, overlap=0.2)([img])[0]
    assert as_set(found) == [(1, seam - 10, 100, seam + 30, 140)]


class Scripted(SquareFinder):
    """Reports the given detections on the whole image (the first of a batch), none in tiles."""

    def __init__(self, boxes, labels, scores):
        super().__init__()
        self.dets = Detections(np.array(boxes, np.float32), np.array(labels), np.array(scores, np.float32),
                               [self.category_names[i - 1] for i in labels])

    def __call__(self, images):
        empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32), [])
        return [self.dets] + [empty] * (len(images) - 1)


def test_the_merge_is_class_wise_and_keeps_the_best_score_first():
    boxes = [[100, 100, 140, 140], [102, 100, 142, 140], [104, 100, 144, 140]]  # IoU > 0.9 with each other
    img = picture(1200, 1200, [])
    found = TiledDetector(Scripted(boxes, [1, 2, 1], [0.6, 0.7, 0.8]), tile=300, overlap=0.2)([img])[0]
    assert found.labels.tolist() == [1, 2] and found.scores.tolist() == pytest.approx([0.8, 0.7])


def test_tile_settings_are_checked():
    with pytest.raises(UserError, match="under the model's input size"):
        check_tile(200, 0.2, 300)
    with pytest.raises(UserError, match=r"not in \[0, 1\)"):
        check_tile(300, 1.0, 300)
    with pytest.raises(UserError, match="larger than the image"):
        check_tile(700, 0.2, 300, [(640, 480)])
    with pytest.raises(UserError, match="larger than every image"):
        check_tile(700, 0.2, 300, [(640, 480), (500, 375)])
    check_tile(640, 0.2, 300, [(640, 480)])  # one tile: the whole image
    check_tile(700, 0.2, 300, [(640, 480), (1280, 720)])  # the small one runs whole


# --- the scripts' --tile, in this process (an untrained SSDLite: what matters is the plumbing) ---

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from test_bad_input import training_checkpoint
    path = tmp_path_factory.mktemp("tiles") / "ckpt.pth"
    training_checkpoint(path)
    return str(path)


def script(name, argv, monkeypatch, capsys):
    from test_bad_input import run_script
    code = run_script(name, argv, monkeypatch)
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


@pytest.mark.slow
def test_image_with_one_tile_over_the_photo_writes_exactly_the_detections_without_tiles(
        checkpoint, toy_root, tmp_path, monkeypatch, capsys):
    photo = os.path.join(toy_root, "val2017", sorted(os.listdir(os.path.join(toy_root, "val2017")))[0])
    common = ["--pretrained-model", checkpoint, "--input", photo, "--cls-threshold", "0.1"]
    script("test_image.py", [*common, "--output", str(tmp_path / "a.jpg"), "--json", str(tmp_path / "a.json")],
           monkeypatch, capsys)
    script("test_image.py", [*common, "--output", str(tmp_path / "b.jpg"), "--json", str(tmp_path / "b.json"),
                             "--tile", "320"], monkeypatch, capsys)  # 320x240: one tile
    whole, one_tile = (json.loads((tmp_path / f"{n}.json").read_text())[0]["detections"] for n in "ab")
    assert whole and one_tile == whole
    script("test_image.py", [*common, "--output", str(tmp_path / "c.jpg"), "--json", str(tmp_path / "c.json"),
                             "--tile", "300", "--tile-overlap", "0.5"], monkeypatch, capsys)  # two tiles
    for d in json.loads((tmp_path / "c.json").read_text())[0]["detections"]:
        x1, y1, x2, y2 = d["box"]
        assert -1 <= x1 < x2 <= 321 and -1 <= y1 < y2 <= 241


@pytest.mark.slow
def test_dataset_with_tiles_scores_and_writes_results(checkpoint, toy_root, tmp_path, monkeypatch, capsys):
    out = script("test_dataset.py", ["--pretrained-model", checkpoint, "--data-path", toy_root, "--num-workers", "0",
                                     "--tile", "300", "--json", str(tmp_path / "r.json")], monkeypatch, capsys)
    assert "tiles of 300 px overlapping 0.2" in out
    assert len([line for line in out.splitlines() if line.startswith(" Average")]) == 12
    results = json.loads((tmp_path / "r.json").read_text())
    assert results and {r["category_id"] for r in results} <= {2, 5, 9, 14}


def test_a_box_too_large_for_a_tile_is_left_to_the_whole_image():
    """Tiles are for small objects: a tile's box over ``largest`` of the tile is dropped (most
    often a piece of an object larger than the tile), whatever the whole image saw."""
    img = picture(1200, 1200, [(100, 100, 120, RED)])  # 120 px: 0.4 of a 300 px tile, inside one
    finder = SquareFinder(least=0.12)  # the whole image (1200 px) misses it: 120 < 144
    assert as_set(TiledDetector(finder, tile=300, overlap=0.2)([img])[0]) == []
    assert as_set(TiledDetector(finder, tile=300, overlap=0.2, largest=0.5)([img])[0]) == [(1, 100, 100, 220, 220)]
