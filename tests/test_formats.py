"""Pascal VOC and YOLO sets: read back as the COCO set they were written from, trained on to the
same losses, refused in one line when broken; and VOC's mAP against the devkit's algorithm."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from export_formats import to_voc, to_yolo
from test_train import ROOT

from src.data.dataset import CocoDetection, collate, dataset_from
from src.data.formats import detect_format, merge, source
from src.data.transforms import train_transforms
from src.evaluation.coco_eval import coco_evaluate
from src.evaluation.voc_eval import average_precision, voc_evaluate
from src.models.box_coder import BoxCoder
from src.models.loss import MultiBoxLoss
from src.models.ssd import build_model
from src.training.loop import Step, train_step
from src.training.optim import param_groups, warmup_multistep
from src.utils.errors import DatasetError


@pytest.fixture(scope="module")
def coco_root(toy_root, tmp_path_factory):
    """The toy set, its categories named so that their id order is also their name order (VOC
    has no list of classes: its reader sorts the names), one val object made difficult (crowd)."""
    root = tmp_path_factory.mktemp("coco")
    shutil.copytree(toy_root, root, dirs_exist_ok=True)
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}2017.json"
        data = json.loads(path.read_text())
        for c in data["categories"]:
            c["name"] = f"{'abcd'[[2, 5, 9, 14].index(c['id'])]}-{c['name']}"
        if split == "val":
            data["annotations"][0]["iscrowd"] = 1
        path.write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def voc_root(coco_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    to_voc(str(coco_root), str(root))
    return root


@pytest.fixture(scope="module")
def yolo_root(coco_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    to_yolo(str(coco_root), str(root))
    return root


def boxes_by_image(dataset):
    """[(image size, sorted [(category name, box)])] in the dataset's order."""
    names = dict(zip(dataset.category_ids, dataset.category_names))
    out = []
    for i in dataset.ids:
        info = dataset.coco.imgs[i]
        anns = sorted((names[a["category_id"]], tuple(a["bbox"]), a["iscrowd"])
                      for a in dataset.coco.imgToAnns.get(i, []))
        out.append(((info["width"], info["height"]), anns))
    return out


@pytest.mark.parametrize("split, voc_split", [("train", "trainval"), ("val", "test")])
def test_voc_and_yolo_read_back_as_the_coco_set(coco_root, voc_root, yolo_root, split, voc_split):
    coco = CocoDetection(str(coco_root / f"{split}2017"),
                         str(coco_root / "annotations" / f"instances_{split}2017.json"))
    voc = dataset_from(source(str(voc_root), voc_split))
    yolo = dataset_from(source(str(yolo_root), split))
    assert detect_format(str(voc_root)) == "voc" and detect_format(str(yolo_root)) == "yolo"
    assert coco.category_names == voc.category_names == yolo.category_names
    expected = boxes_by_image(coco)
    assert boxes_by_image(voc) == expected  # exactly: VOC's integer corners hold the toy's boxes
    for (size, anns), (size_y, anns_y) in zip(expected, boxes_by_image(yolo)):
        assert size == size_y
        plain = [a for a in anns if not a[2]]  # YOLO has no crowd or difficult objects
        assert [a[0] for a in plain] == [a[0] for a in anns_y]
        assert np.allclose([a[1] for a in plain], [a[1] for a in anns_y], atol=0.5) or not plain
    if split == "val":
        difficult = [a for a in voc.coco.dataset["annotations"] if a["iscrowd"]]
        assert len(difficult) == 1 and difficult[0]["difficult"] == 1


def losses_of_one_epoch(dataset, steps=3, batch=4):
    torch.manual_seed(0)
    model = build_model("ssdlite", dataset.num_classes).train()
    criterion = MultiBoxLoss(BoxCoder.for_spec(model.spec), empty_negatives=30)
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9)
    step = Step(optimizer, warmup_multistep(optimizer, steps, 0, []), torch.device("cpu"))
    losses = []
    for s in range(steps):
        images, targets = collate([dataset[(i, 1000 + i)] for i in range(s * batch, (s + 1) * batch)])
        losses.append(train_step(model, criterion, images, targets, step)["total"].item())
    return losses


@pytest.mark.slow
def test_one_epoch_gives_the_same_loss_at_every_step_in_each_format(coco_root, voc_root, tmp_path):
    """Same images, boxes, order and seeds: the same losses. (YOLO labels written with 12 decimals
    here: at 6, a box moves by up to 0.0003 px, enough to flip a default box sitting at IoU 0.5.)"""
    to_yolo(str(coco_root), str(tmp_path / "yolo"), decimals=12)
    augment = train_transforms()
    coco = CocoDetection(str(coco_root / "train2017"), str(coco_root / "annotations" / "instances_train2017.json"),
                         augment)
    voc = dataset_from(source(str(voc_root), "trainval"), augment)
    yolo = dataset_from(source(str(tmp_path / "yolo"), "train"), augment)
    expected = losses_of_one_epoch(coco)
    assert losses_of_one_epoch(voc) == pytest.approx(expected, rel=1e-6)
    assert losses_of_one_epoch(yolo) == pytest.approx(expected, rel=1e-5)


def test_several_voc_roots_train_together(voc_root):
    both = merge([source(str(voc_root), "trainval"), source(str(voc_root), "test")],
                 lambda s: json.loads(json.dumps(s.annotations)))
    merged = dataset_from(both)
    assert len(merged) == 12 + 6 and merged.category_names == dataset_from(source(str(voc_root), "test")).category_names


# --- VOC's mAP -----------------------------------------------------------------------------------

def devkit_voc_eval(gt_objects, detections, classname, use_07):
    """The classic VOC devkit's evaluation of one class, from its published description:
    boxes in 1-based inclusive pixel corners, IoU with the +1 convention, difficult objects
    ignored, a detection matched to the object of its image it overlaps most (> 0.5)."""
    recs = {}
    npos = 0
    for image, objs in gt_objects.items():
        mine = [o for o in objs if o["name"] == classname]
        recs[image] = {"bbox": np.array([o["bbox"] for o in mine]).reshape(-1, 4),
                       "difficult": np.array([o["difficult"] for o in mine], dtype=bool),
                       "det": [False] * len(mine)}
        npos += sum(1 for o in mine if not o["difficult"])
    dets = sorted([d for d in detections if d["name"] == classname], key=lambda d: -d["score"])
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for d, det in enumerate(dets):
        r = recs.get(det["image"], {"bbox": np.zeros((0, 4)), "difficult": np.zeros(0, bool), "det": []})
        bb, ovmax, jmax = det["bbox"], -np.inf, -1
        gt = r["bbox"]
        if gt.size:
            ixmin, iymin = np.maximum(gt[:, 0], bb[0]), np.maximum(gt[:, 1], bb[1])
            ixmax, iymax = np.minimum(gt[:, 2], bb[2]), np.minimum(gt[:, 3], bb[3])
            iw, ih = np.maximum(ixmax - ixmin + 1.0, 0.0), np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0) +
                   (gt[:, 2] - gt[:, 0] + 1.0) * (gt[:, 3] - gt[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax, jmax = np.max(overlaps), np.argmax(overlaps)
        if ovmax > 0.5:
            if not r["difficult"][jmax]:
                if not r["det"][jmax]:
                    tp[d] = 1.0
                    r["det"][jmax] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap += p / 11.0
        return ap
    mrec, mpre = np.concatenate(([0.0], rec, [1.0])), np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def test_voc_ap_on_hand_made_cases():
    # 4 objects found at recalls 1/4, 2/4 (precision 1), then a false one, then 3/4 (precision 3/4)
    recall, precision = np.array([0.25, 0.5, 0.5, 0.75]), np.array([1.0, 1.0, 2 / 3, 0.75])
    assert average_precision(recall, precision, use_07=True) == pytest.approx((6 * 1.0 + 2 * 0.75) / 11)
    assert average_precision(recall, precision, use_07=False) == pytest.approx(0.5 * 1.0 + 0.25 * 0.75)
    assert average_precision(np.array([1.0]), np.array([1.0]), use_07=True) == pytest.approx(1.0)


def test_voc_map_equals_the_devkit_on_a_real_evaluation(voc_root):
    val = dataset_from(source(str(voc_root), "test"))
    g = torch.Generator().manual_seed(5)
    results = []
    for image_id in val.ids:
        for a in val.coco.imgToAnns.get(image_id, []):
            for _ in range(2):  # a near copy and a duplicate-ish one
                jitter = (torch.randn(4, generator=g) * 8).tolist()
                results.append({"image_id": image_id, "category_id": a["category_id"],
                                "bbox": [v + j for v, j in zip(a["bbox"], jitter)],
                                "score": float(torch.rand(1, generator=g))})
        results.append({"image_id": image_id, "category_id": val.category_ids[0], "bbox": [3.0, 4.0, 50.0, 60.0],
                        "score": float(torch.rand(1, generator=g))})
    names = dict(zip(val.category_ids, val.category_names))
    gt_objects = {i: [{"name": names[a["category_id"]], "difficult": a["iscrowd"],  # VOC corners, 1-based
                       "bbox": [a["bbox"][0] + 1, a["bbox"][1] + 1, a["bbox"][0] + a["bbox"][2],
                                a["bbox"][1] + a["bbox"][3]]} for a in val.coco.imgToAnns.get(i, [])]
                  for i in val.ids}
    dets = [{"image": r["image_id"], "name": names[r["category_id"]], "score": r["score"],
             "bbox": np.array([r["bbox"][0] + 1, r["bbox"][1] + 1, r["bbox"][0] + r["bbox"][2],
                               r["bbox"][1] + r["bbox"][3]])} for r in results]
    for use_07 in (True, False):
        ours = voc_evaluate(val.coco, results, val.ids, use_07)
        for cat, ap in ours["AP"].items():
            has = any(not o["difficult"] and o["name"] == names[cat] for objs in gt_objects.values() for o in objs)
            if not has:
                assert ap is None
                continue
            assert ap == pytest.approx(devkit_voc_eval(gt_objects, dets, names[cat], use_07), abs=1e-9), names[cat]
    assert 0 < ours["mAP"] < 1
    assert coco_evaluate(val.coco, results, verbose=False).stats["AP50"] > 0  # COCO's numbers too


@pytest.mark.slow
def test_test_dataset_reads_voc_and_yolo_and_prints_voc_map(toy_root, ours, tmp_path):
    # of the toy set's own category names, the ones `ours` was trained on (they are matched by name)
    to_voc(toy_root, str(tmp_path / "voc"))
    to_yolo(toy_root, str(tmp_path / "yolo"))
    for root, extra in [(tmp_path / "voc", ["--metric", "voc07"]), (tmp_path / "yolo" / "data.yaml",
                                                                   ["--metric", "voc"])]:
        result = subprocess.run([sys.executable, "test_dataset.py", "--pretrained-model", ours, "--data-path",
                                 str(root), "--num-workers", "0", *extra], cwd=ROOT, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        assert "VOC mAP at IoU 0.5" in result.stdout and "Average Precision" in result.stdout


@pytest.mark.slow
def test_convert_dataset_writes_a_coco_copy_that_reads_the_same(voc_root, tmp_path):
    out = tmp_path / "coco_copy"
    result = subprocess.run([sys.executable, "convert_dataset.py", "--from", "voc", "--data-path", str(voc_root),
                             "--to", "coco", "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    copy = CocoDetection(str(out / "test2017"), str(out / "annotations" / "instances_test2017.json"))
    assert boxes_by_image(copy) == boxes_by_image(dataset_from(source(str(voc_root), "test")))
    assert os.path.islink(out / "test2017" / copy.coco.imgs[copy.ids[0]]["file_name"])


# --- broken files --------------------------------------------------------------------------------

def test_broken_voc_and_yolo_files_are_one_line_naming_the_file_and_line(voc_root, yolo_root, tmp_path):
    voc = tmp_path / "voc"
    shutil.copytree(voc_root, voc)
    first = sorted((voc / "Annotations").iterdir())[0]
    first.write_text("<annotation><size><width>3")
    with pytest.raises(DatasetError, match=f"VOC annotation {first} is not valid XML"):
        source(str(voc), "trainval")
    cases = {"4 numbers": ("0 0.5 0.5 0.2", "4 numbers, expected 5"),
             "6 numbers": ("0 0.5 0.5 0.2 0.2 9", "6 numbers"),
             "outside": ("1 0.5 1.5 0.2 0.2", "coordinates .* outside \\[0, 1\\]"),
             "beyond": ("7 0.5 0.5 0.2 0.2", "class 7, but")}
    for name, (line, message) in cases.items():
        yolo = tmp_path / f"yolo_{name.replace(' ', '_')}"
        shutil.copytree(yolo_root, yolo)
        labels = sorted((yolo / "labels" / "train").iterdir())[0]
        labels.write_text(labels.read_text() + line + "\n")
        count = len(labels.read_text().splitlines())
        with pytest.raises(DatasetError, match=f"labels file {labels} line {count}: {message}"):
            source(str(yolo), "train")


@pytest.mark.slow
def test_train_py_on_a_yolo_set_keeps_its_class_indices_and_names(yolo_root, tmp_path):
    cmd = ["train.py", "--data-path", str(yolo_root / "data.yaml"), "--save-folder", str(tmp_path), "--log-path",
           str(tmp_path / "tb"), "--model", "ssdlite", "--batch-size", "4", "--epochs", "1", "--num-workers", "0",
           "--no-pretrained-backbone", "--eval-every", "1"]
    result = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    ckpt = torch.load(tmp_path / "ssdlite.pth", weights_only=True)
    assert ckpt["category_ids"] == [0, 1, 2, 3] and ckpt["category_names"][0] == "a-circle"
    assert "AP" in ckpt["history"][-1]
