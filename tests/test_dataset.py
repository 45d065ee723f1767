"""CocoDetection on a hand-made COCO-format set with every quirk the reader must survive."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from src.dataset import CocoDetection, coco_paths, collate
from src.transforms import train_transforms, val_transforms


def _write(folder, name, mode, size=(64, 48)):
    w, h = size
    rng = np.random.default_rng(len(name))
    rgb = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    img = rgb.convert(mode)
    img.save(folder / name)


@pytest.fixture()
def quirky(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    files = [("rgb.jpg", "RGB"), ("empty.jpg", "RGB"), ("gray.jpg", "L"), ("cmyk.jpg", "CMYK"),
             ("alpha.png", "RGBA"), ("crowded.jpg", "RGB")]
    for name, mode in files:
        _write(images, name, mode)
    anns = [
        (1, 7, [5, 5, 20, 10], 0),      # kept
        (1, 3, [10, 10, 30, 30], 1),    # crowd: not a target
        (1, 11, [3, 3, 0.5, 20], 0),    # under 1 px wide: dropped
        (1, 11, [50, 40, 40, 40], 0),   # runs off the 64x48 image: clipped to [50, 40, 64, 48]
        (3, 11, [1, 2, 10, 12], 0),
        (4, 3, [0, 0, 64, 48], 0),
        (5, 7, [4, 4, 8, 8], 0),
    ] + [(6, 3, [i % 60, i % 44, 4, 4], 0) for i in range(300)]
    coco = {
        "images": [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, (n, _) in enumerate(files)],
        "categories": [{"id": 11, "name": "eleven"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "iscrowd": crowd,
                         "area": b[2] * b[3]} for k, (i, c, b, crowd) in enumerate(anns)],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(coco))
    return str(images), str(ann_file)


def test_categories_map_to_contiguous_labels_by_id(quirky):
    ds = CocoDetection(*quirky)
    assert ds.category_ids == [3, 7, 11]
    assert ds.category_names == ["three", "seven", "eleven"]
    assert ds.num_classes == 4
    assert len(ds) == 6  # every image, the empty one included


def test_crowd_thin_and_outside_boxes(quirky):
    ds = CocoDetection(*quirky)
    boxes, labels = ds.annotations(1, 48, 64)
    assert labels.tolist() == [2, 3]  # category 7 -> 2, category 11 -> 3; crowd and thin are gone
    torch.testing.assert_close(boxes, torch.tensor([[5.0, 5, 25, 15], [50, 40, 64, 48]]))


def test_every_image_mode_becomes_rgb_and_empty_images_are_samples(quirky):
    ds = CocoDetection(*quirky, transforms=val_transforms())
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 300, 300) and image.dtype == torch.float32
        assert target["boxes"].shape == (len(target["labels"]), 4)
        assert target["orig_size"] == (48, 64)
    assert len(ds[1][1]["labels"]) == 0
    # boxes are normalised to [0, 1] of the resized image
    torch.testing.assert_close(ds[0][1]["boxes"][0], torch.tensor([5 / 64, 5 / 48, 25 / 64, 15 / 48]))


def test_no_cap_on_boxes_per_image(quirky):
    ds = CocoDetection(*quirky, transforms=val_transforms())
    assert len(ds[5][1]["labels"]) == 300
    torch.manual_seed(0)
    train = CocoDetection(*quirky, transforms=train_transforms())
    for _ in range(5):
        image, target = train[5]
        assert image.shape == (3, 300, 300)


def test_data_loader_collates_variable_box_counts(quirky):
    ds = CocoDetection(*quirky, transforms=val_transforms())
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 300, 300)
    assert [len(t["labels"]) for t in targets] == [2, 0, 1]


def test_toy_set_has_the_original_layout(toy_root):
    ann, images = coco_paths(toy_root, "val")
    ds = CocoDetection(images, ann, val_transforms())
    assert len(ds) == 6 and ds.category_ids == [2, 5, 9, 14]
