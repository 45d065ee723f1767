"""Pascal VOC's mAP: AP at IoU 0.5 per category, with VOC2007's 11-point interpolation (the SSD
paper's tables) or VOC2010's all-points one; difficult objects (crowd regions of a COCO set)
neither count as objects to find nor make a detection on them false.

From COCO-format ground truth and detections (pixels, COCO xywh). Boxes are continuous
coordinates (a VOC box read by :mod:`src.data.formats` spans ``xmin - 1 .. xmax``), so an IoU here is
the devkit's IoU with its inclusive pixel corners.
"""
from collections import defaultdict

import numpy as np


def _ltrb(box):
    x, y, w, h = box
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def _iou(box, boxes):
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    union = (box[2:] - box[:2]).prod() + (boxes[:, 2:] - boxes[:, :2]).prod(1) - inter
    return inter / np.maximum(union, 1e-12)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07: bool) -> float:
    """VOC2007: the mean of the best precision at recall >= 0, 0.1, ..., 1. VOC2010+: the area
    under the precision envelope, summed where recall changes."""
    if use_07:
        return float(np.mean([precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]).sum())


def voc_evaluate(coco_gt, results: list[dict], image_ids, use_07: bool = True) -> dict:
    """:return: ``{"mAP": mean over the categories with objects, "AP": {category id: AP or None}}``"""
    image_ids = set(image_ids)
    gts = defaultdict(list)  # (image, category) -> [(box, difficult)]
    npos = defaultdict(int)
    for a in coco_gt.dataset["annotations"]:
        if a["image_id"] in image_ids:
            difficult = bool(a.get("difficult", a.get("iscrowd", 0)))
            gts[a["image_id"], a["category_id"]].append((_ltrb(a["bbox"]), difficult))
            npos[a["category_id"]] += not difficult
    by_cat = defaultdict(list)
    for r in results:
        if r["image_id"] in image_ids:
            by_cat[r["category_id"]].append(r)
    aps = {}
    for cat in sorted(coco_gt.getCatIds()):
        if npos[cat] == 0:
            aps[cat] = None
            continue
        dets = sorted(by_cat[cat], key=lambda r: -r["score"])
        taken = defaultdict(set)
        tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
        for i, r in enumerate(dets):
            objects = gts.get((r["image_id"], cat), [])
            if not objects:
                fp[i] = 1
                continue
            ious = _iou(_ltrb(r["bbox"]), np.stack([b for b, _ in objects]))
            j = int(ious.argmax())
            if ious[j] <= 0.5:
                fp[i] = 1
            elif objects[j][1]:
                continue  # on a difficult object: neither
            elif j in taken[r["image_id"]]:
                fp[i] = 1  # a duplicate
            else:
                tp[i] = 1
                taken[r["image_id"]].add(j)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos[cat]
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[cat] = average_precision(recall, precision, use_07)
    present = [v for v in aps.values() if v is not None]
    return {"mAP": float(np.mean(present)) if present else 0.0, "AP": aps}
