"""CocoDetection on a hand-made COCO-format set with every quirk the reader must survive."""
import io
import json
import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from src.data.dataset import (
    CocoDetection,
    coco_paths,
    collate,
    eval_loader,
    loader_workers,
    read_rgb,
)
from src.data.images import _is_jpeg_complete
from src.data.transforms import train_transforms, val_transforms
from src.utils.errors import DatasetError, ImageReadError


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
    boxes, labels, crowd = ds.annotations(1, 48, 64)
    assert labels.tolist() == [2, 3]  # category 7 -> 2, category 11 -> 3; crowd and thin are not targets
    torch.testing.assert_close(boxes, torch.tensor([[5.0, 5, 25, 15], [50, 40, 64, 48]]))
    torch.testing.assert_close(crowd, torch.tensor([[10.0, 10, 40, 40]]))  # the crowd is an ignore region


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


def _jpeg_bytes(progressive=False, exif_thumbnail=False) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(np.kron(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), np.ones((10, 10, 1),
                                                                                                dtype=np.uint8)))
    buf = io.BytesIO()
    kwargs = {"progressive": progressive, "quality": 90}
    if exif_thumbnail:  # an EXIF block that holds a whole JPEG (its own end marker) near the start
        thumb = io.BytesIO()
        img.resize((32, 24)).save(thumb, "JPEG")
        exif = Image.Exif()
        exif[0x010E] = "x" * 10
        kwargs["exif"] = exif.tobytes() + thumb.getvalue()
    img.save(buf, "JPEG", **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("progressive, exif", [(False, False), (True, False), (False, True)])
def test_whole_jpegs_are_complete_and_cut_ones_are_not(progressive, exif):
    data = _jpeg_bytes(progressive, exif)
    assert _is_jpeg_complete(data)
    assert _is_jpeg_complete(data + b"\x00trailing bytes some cameras add")
    for cut in [3000, len(data) // 2, len(data) - 2, len(data) - 1]:
        assert not _is_jpeg_complete(data[:cut]), cut


def test_a_cut_jpeg_that_opencv_would_decode_grey_is_refused(tmp_path):
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:len(data) // 2])
    assert cv2.imread(str(path)) is not None  # imread fills the missing half with grey, with a warning only
    with pytest.raises(ImageReadError, match="truncated"):
        read_rgb(str(path))
    (tmp_path / "whole.jpg").write_bytes(data)
    assert read_rgb(str(tmp_path / "whole.jpg")).shape == (3, 240, 320)


def test_read_rgb_names_what_is_wrong(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_rgb(str(tmp_path / "none.jpg"))
    with pytest.raises(ImageReadError, match="is a folder"):
        read_rgb(str(tmp_path))
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match="not an image OpenCV can decode"):
        read_rgb(str(tmp_path / "text.jpg"))


def test_mended_and_dropped_annotations_are_counted(quirky, tmp_path):
    images, ann = quirky
    data = json.loads(open(ann).read())
    for a in data["annotations"][:3]:
        del a["area"], a["iscrowd"], a["id"]
    path = tmp_path / "mended.json"
    path.write_text(json.dumps(data))
    ds = CocoDetection(images, str(path))
    r = ds.report
    assert (r.filled_area, r.filled_iscrowd, r.filled_id) == (3, 3, 3)
    assert r.crowd == 0  # the crowd box lost its iscrowd: 0 by COCO's definition
    assert r.degenerate == 1 and r.boxes == len(data["annotations"]) - 1
    ids = [a["id"] for a in ds.coco.dataset["annotations"]]
    assert len(set(ids)) == len(ids)  # numbered after the largest id
    assert len(ds.warnings) == 1 and "3 annotations without 'area'" in ds.warnings[0]


def test_a_few_missing_images_are_left_out_with_a_warning(quirky, tmp_path):
    images, ann = quirky
    data = json.loads(open(ann).read())
    data["images"].append({"id": 50, "file_name": "sub/gone.jpg", "width": 64, "height": 48})
    path = tmp_path / "one_missing.json"
    path.write_text(json.dumps(data))
    ds = CocoDetection(images, str(path), max_missing=0.2)  # 1 of 7
    assert 50 not in ds.ids and len(ds) == 6
    assert "1 of the 7 images" in ds.warnings[-1] and "sub/gone.jpg" in ds.warnings[-1]
    with pytest.raises(DatasetError, match="1 of the 7 images .* missing .* is the image folder right"):
        CocoDetection(images, str(path), max_missing=0.1)


def _phone_set(tmp_path, listed_size):
    """One photo stored landscape (60 high, 80 wide) with EXIF orientation 6, annotated upright:
    a 20x30 white box at x 10, y 40 of the upright 80 x 60 picture."""
    upright = np.zeros((80, 60, 3), dtype=np.uint8)
    upright[40:70, 10:30] = 255
    stored = np.rot90(upright, k=1)  # orientation 6 turns it back clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = tmp_path / "phone"
    folder.mkdir()
    Image.fromarray(np.ascontiguousarray(stored)).save(folder / "p.jpg", exif=exif, quality=95)
    h, w = listed_size
    scale = h / 80
    coco = {"images": [{"id": 1, "file_name": "p.jpg", "height": h, "width": w}],
            "categories": [{"id": 1, "name": "box"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10 * scale, 40 * scale, 20 * scale,
                                                                                30 * scale], "iscrowd": 0}]}
    (tmp_path / "phone.json").write_text(json.dumps(coco))
    return CocoDetection(str(folder), str(tmp_path / "phone.json"))


def test_a_phone_photo_annotated_upright_is_read_upright(tmp_path):
    ds = _phone_set(tmp_path, (80, 60))  # the JSON's size is the stored one swapped
    image, target = ds[0]
    assert image.shape == (3, 80, 60) and "resized" not in target
    torch.testing.assert_close(target["boxes"] * torch.tensor([60, 80, 60, 80]), torch.tensor([[10.0, 40, 30, 70]]))
    assert image[0, 55, 20] > 200 and image[0, 10, 50] < 50  # the box is where the white is


def test_an_image_of_another_size_keeps_its_boxes_scaled_and_says_so(tmp_path):
    ds = _phone_set(tmp_path, (160, 120))  # annotated on a copy twice as large
    image, target = ds[0]
    assert target.get("resized") is True and target["orig_size"] == (160, 120)  # results go to the annotated frame
    assert image.shape == (3, 60, 80)  # stored pixels (the EXIF turn does not explain the size)
    assert len(target["boxes"]) == 1  # scaled to the image, not clipped away


def test_every_epoch_and_sample_draws_its_own_augmentation_seed():
    from src.training.resume import ResumableSampler
    data = list(range(8))
    a = ResumableSampler(data, num_replicas=2, rank=0, shuffle=True, seed=3)
    b = ResumableSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3)
    epochs = []
    for epoch in range(2):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        epochs.append(dict(list(a) + list(b)))
    assert sorted(epochs[0]) == data  # the two ranks share the samples out
    assert len(set(epochs[0].values()) | set(epochs[1].values())) == 16  # all seeds differ
    a.set_epoch(1)
    a.skip = 2
    resumed = list(a)
    assert resumed == [(i, epochs[1][i]) for i, _ in resumed] and len(resumed) == 2  # a resume draws the same


def test_loaders_start_no_more_workers_than_cores_or_batches(toy_root):
    """More workers than cores only compete for them (and torch warns); more than batches idle."""
    cores = len(os.sched_getaffinity(0))
    assert loader_workers(64, 1000) == cores
    assert loader_workers(4, 1) == 1 and loader_workers(0, 10) == 0 and loader_workers(4, 0) == 0
    ann, images = coco_paths(toy_root, "val")
    dataset = CocoDetection(images, ann, val_transforms())
    assert eval_loader(dataset, batch_size=len(dataset), num_workers=4).num_workers == 1
