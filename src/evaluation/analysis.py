"""What an evaluation means: per-class figures, precision-recall curves, a confusion matrix, an
error breakdown in the spirit of TIDE (Bolya et al., 2020) and the images that fail most.

Everything starts from COCO-format ground truth and detections (pixels, COCO xywh boxes). The
per-class figures and curves are read from COCOeval's own arrays (:class:`~src.evaluation.coco_eval.Evaluation`),
so a class's AP is what COCOeval gives for that class alone. The confusion matrix follows
faster-coco-eval's class-agnostic matching (tested against it). The error breakdown is written here: the authors'
package (tidecv) needs segmentation fields in every annotation and pulls in pandas and seaborn.
"""
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.ops import box_iou

from src.evaluation.coco_eval import Evaluation

RECALL_THRESHOLDS = np.linspace(0, 1, 101)  # COCO's
MAX_DETECTIONS = 100  # COCOeval's maxDets: per image and category (per image, class-agnostic)
ERROR_TYPES = ["classification", "localization", "both", "duplicate", "background", "missed"]


def _ltrb(boxes) -> torch.Tensor:
    """COCO xywh pixels (n, 4) -> ltrb (n, 4)."""
    b = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


# --- per class -----------------------------------------------------------------------------------

@dataclass
class ClassRow:
    """One category's figures. AP values are None when the category has no ground truth in the
    evaluated images (COCOeval's -1); so are the best-F1 figures then."""
    category_id: int
    name: str
    num_gt: int
    num_detections: int
    AP: float | None
    AP50: float | None
    AP75: float | None
    AP_small: float | None
    AP_medium: float | None
    AP_large: float | None
    best_f1: float | None  # at IoU 0.5, over the score thresholds
    f1_threshold: float | None  # the score threshold that gives it
    precision_at_f1: float | None
    recall_at_f1: float | None


def per_class(evaluation: Evaluation, coco_gt, results: list[dict], names: dict, image_ids) -> list[ClassRow]:
    """A row per category of the annotation file, in category-id order."""
    image_ids = set(image_ids)
    gt_counts, det_counts = defaultdict(int), defaultdict(int)
    for a in coco_gt.dataset["annotations"]:
        if a["image_id"] in image_ids and not a["iscrowd"]:
            gt_counts[a["category_id"]] += 1
    for r in results:
        det_counts[r["category_id"]] += 1
    rows = []
    for k, cat in enumerate(evaluation.category_ids):
        ap = [evaluation.class_ap(k, iou) for iou in (None, 0, 5)]  # AP, AP50, AP75
        ap += [evaluation.class_ap(k, None, area) for area in (1, 2, 3)]  # small, medium, large
        rows.append(ClassRow(cat, names[cat], gt_counts[cat], det_counts[cat], *ap, *_best_f1(evaluation, k)))
    return rows


def _best_f1(evaluation: Evaluation, k: int):
    if evaluation.precision is None or evaluation.class_ap(k) is None:
        return None, None, None, None
    precision = evaluation.precision[0, :, k, 0, -1]  # IoU 0.5, all areas, 100 detections: (101,)
    scores = evaluation.scores[0, :, k, 0, -1]
    f1 = np.where(precision + RECALL_THRESHOLDS > 0, 2 * precision * RECALL_THRESHOLDS /
                  np.maximum(precision + RECALL_THRESHOLDS, 1e-12), 0.0)
    best = int(f1.argmax())
    if f1[best] == 0:  # nothing found at IoU 0.5: no threshold is better than another
        return 0.0, None, None, None
    return float(f1[best]), float(scores[best]), float(precision[best]), float(RECALL_THRESHOLDS[best])


def pr_curves(evaluation: Evaluation) -> dict:
    """Precision at COCO's 101 recall thresholds, at IoU 0.5 and 0.75, per category and their
    mean over the categories with ground truth ("all"); empty for a category without any."""
    curves = {"recall": RECALL_THRESHOLDS.tolist(), "classes": {}, "all": {}}
    if evaluation.precision is None:
        return curves
    for iou_name, t in [("0.5", 0), ("0.75", 5)]:
        p = evaluation.precision[t, :, :, 0, -1]  # (101, K)
        has_gt = (p > -1).any(0)
        for k, cat in enumerate(evaluation.category_ids):
            curves["classes"].setdefault(cat, {})[iou_name] = p[:, k].tolist() if has_gt[k] else []
        curves["all"][iou_name] = p[:, has_gt].mean(1).tolist() if has_gt.any() else []
    return curves


# --- the confusion matrix ------------------------------------------------------------------------

def confusion_matrix(coco_gt, results: list[dict], category_ids: list, min_score: float, iou: float = 0.5):
    """Counts of (true category, predicted category) for the detections scoring at least
    ``min_score``. The matching is faster-coco-eval's class-agnostic one (its ``PreviewResults``,
    the test's reference): per image, the 100 best detections by descending score, each taking
    the free ground truth it overlaps most at IoU >= ``iou`` whatever its category. A detection
    that matches nothing but lies in a crowd region (``iou`` of its area) is ignored, as COCOeval
    does (the library would count it a hit of the crowd's category). Written here because the
    library copies both sets and evaluates everything: it cost more than the rest of the report.

    :return: (K+1, K+1) int array in ``category_ids`` order: rows the truth, columns the
        prediction; the last row is background (a detection that matched nothing), the last
        column "missed" (a ground-truth object no detection matched)
    """
    k = len(category_ids)
    index = {c: i for i, c in enumerate(category_ids)}
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    by_image = defaultdict(list)
    for r in results:
        if r["score"] >= min_score:
            by_image[r["image_id"]].append(r)
    for image_id, image in _images(coco_gt, coco_gt.getImgIds()).items():
        ranked = sorted(by_image.get(image_id, []), key=lambda r: -r["score"])[:MAX_DETECTIONS]
        dets = [_Detection(image_id, r["category_id"], r["score"], box)
                for r, box in zip(ranked, _ltrb([r["bbox"] for r in ranked]).numpy())]
        ious, crowd = _overlaps(dets, image.boxes), _crowd_cover(dets, image.crowds)
        free = np.ones(len(image.boxes), dtype=bool)
        for i, d in enumerate(dets):
            candidates = np.where(free & (ious[i] >= iou), ious[i], -1.0)
            if len(candidates) and candidates.max() >= iou:
                j = int(candidates.argmax())
                free[j] = False
                matrix[index[int(image.categories[j])], index[d.category_id]] += 1
            elif crowd[i] < iou:
                matrix[k, index[d.category_id]] += 1
        for j in np.flatnonzero(free):
            matrix[index[int(image.categories[j])], k] += 1
    return matrix


# --- the error breakdown -------------------------------------------------------------------------

@dataclass(slots=True)
class _Detection:
    image_id: int
    category_id: int
    score: float
    box: np.ndarray  # (4,) ltrb
    tp: bool = False
    ignored: bool = False
    error: str | None = None
    target: tuple | None = None  # (image id, index of the ground truth) an error is about


@dataclass(slots=True)
class _Image:
    """One image's ground truth: boxes (n, 4) ltrb, their categories, crowd regions (c, 4)."""
    boxes: np.ndarray
    categories: np.ndarray
    crowds: np.ndarray


def _images(coco_gt, image_ids) -> dict:
    images = {}
    for image_id in image_ids:
        anns = coco_gt.imgToAnns.get(image_id, [])
        plain = [a for a in anns if not a["iscrowd"]]
        images[image_id] = _Image(_ltrb([a["bbox"] for a in plain]).numpy(),
                                  np.array([a["category_id"] for a in plain], dtype=np.int64),
                                  _ltrb([a["bbox"] for a in anns if a["iscrowd"]]).numpy())
    return images


def _detections(results, image_ids) -> dict:
    """image id -> its ``MAX_DETECTIONS`` best detections of each category, by descending score."""
    mine = [r for r in results if r["image_id"] in image_ids]
    boxes = _ltrb([r["bbox"] for r in mine]).numpy()  # (n, 4), one conversion for all
    by_image = defaultdict(list)
    for r, box in zip(mine, boxes):
        by_image[r["image_id"]].append(_Detection(r["image_id"], r["category_id"], float(r["score"]), box))
    return {i: _best_per_category(ds) for i, ds in by_image.items()}


def _best_per_category(dets: list) -> list:
    kept, seen = [], defaultdict(int)
    for d in sorted(dets, key=lambda d: -d.score):
        seen[d.category_id] += 1
        if seen[d.category_id] <= MAX_DETECTIONS:
            kept.append(d)
    return kept


def _overlaps(dets: list, boxes: np.ndarray) -> np.ndarray:
    """IoU of each detection with each box: (d, n)."""
    if not dets or not len(boxes):
        return np.zeros((len(dets), len(boxes)))
    return box_iou(torch.from_numpy(np.stack([d.box for d in dets])), torch.from_numpy(boxes)).numpy()


def _match(dets: list, image: _Image, fg: float) -> set:
    """COCO's greedy matching in one image at IoU ``fg``, per category, by descending score:
    marks each detection tp or ignored (mostly on a crowd); returns the matched ground truth indices."""
    ious = _overlaps(dets, image.boxes)
    crowd = _crowd_cover(dets, image.crowds)
    matched = set()
    for i, d in enumerate(dets):
        free = (image.categories == d.category_id) & (ious[i] >= fg)
        free[list(matched)] = False
        if free.any():
            j = int(np.where(free, ious[i], -1).argmax())
            d.tp = True
            matched.add(j)
        elif crowd[i] >= fg:
            d.ignored = True
    return matched


def _crowd_cover(dets, crowds) -> np.ndarray:
    """For each detection, the largest share of its area inside one crowd region (COCO's rule)."""
    if not dets or not len(crowds):
        return np.zeros(len(dets))
    boxes = np.stack([d.box for d in dets])
    lt = np.maximum(boxes[:, None, :2], crowds[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], crowds[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)  # (d, c)
    area = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(1)
    return (inter / np.maximum(area, 1e-12)[:, None]).max(1)


def _classify(dets: list, image: _Image, fg: float, bg: float):
    """Give each false positive of one image its error and the ground truth it is about."""
    ious = _overlaps(dets, image.boxes)
    for i, d in enumerate(dets):
        if d.tp or d.ignored:
            continue
        same = image.categories == d.category_id
        iou_same = np.where(same, ious[i], -1).max(initial=-1)
        iou_other = np.where(~same, ious[i], -1).max(initial=-1)
        if iou_same >= fg:
            d.error = "duplicate"
        elif iou_other >= fg:
            d.error, d.target = "classification", (d.image_id, int(np.where(~same, ious[i], -1).argmax()))
        elif iou_same >= bg:
            d.error, d.target = "localization", (d.image_id, int(np.where(same, ious[i], -1).argmax()))
        elif iou_other >= bg:
            d.error = "both"
        else:
            d.error = "background"


def average_precision(dets: list[_Detection], num_gt: dict) -> float:
    """COCO's 101-point AP at one IoU, averaged over the categories with ground truth."""
    by_cat = defaultdict(list)
    for d in dets:
        if not d.ignored:
            by_cat[d.category_id].append(d)
    aps = []
    for cat, n in num_gt.items():
        if n == 0:
            continue
        mine = sorted(by_cat.get(cat, []), key=lambda d: -d.score)
        if not mine:
            aps.append(0.0)
            continue
        tp = np.cumsum([d.tp for d in mine])
        recall, precision = tp / n, tp / np.arange(1, len(mine) + 1)
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope
        at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")  # the first point reaching each threshold
        aps.append(np.where(at < len(mine), precision[np.minimum(at, len(mine) - 1)], 0.0).mean())
    return float(np.mean(aps)) if aps else 0.0


def error_breakdown(coco_gt, results: list[dict], image_ids, fg: float = 0.5, bg: float = 0.1) -> dict:
    """How much AP at IoU ``fg`` each kind of error costs: the AP gained when the errors of one
    kind alone are fixed (TIDE's oracle), and how many there are.

    A false positive is a duplicate (it overlaps by ``fg`` a ground truth of its category that a
    better-scored detection took), a classification error (``fg`` with another category's), a
    localisation error (between ``bg`` and ``fg`` with its category's), both (between ``bg``
    and ``fg`` with another's) or background (under ``bg`` with everything). Fixing a
    classification or localisation error turns it into a hit on its ground truth when that is
    still free, and removes it otherwise; the other errors are removed; fixing "missed" takes
    the objects nothing found (nor a fixable error aimed at) out of the ground truth.

    :return: ``{"AP": base AP at fg, "dAP": {type: gain}, "count": {type: n}}``
    """
    images = _images(coco_gt, sorted(image_ids))
    by_image = _detections(results, set(image_ids))
    num_gt = {cat: 0 for cat in coco_gt.getCatIds()}
    matched, dets = set(), []
    for image_id, image in images.items():
        for cat in image.categories.tolist():
            num_gt[cat] += 1
        mine = by_image.get(image_id, [])
        matched |= {(image_id, j) for j in _match(mine, image, fg)}
        _classify(mine, image, fg, bg)
        dets += mine
    aimed = {d.target for d in dets if d.target is not None}
    missed = [(i, j) for i, image in images.items() for j in range(len(image.categories))
              if (i, j) not in matched and (i, j) not in aimed]
    base = average_precision(dets, num_gt)
    gains = {kind: average_precision(*_fix(kind, dets, images, num_gt, matched, missed)) - base
             for kind in ERROR_TYPES}
    counts = {kind: sum(d.error == kind for d in dets) for kind in ERROR_TYPES[:-1]}
    counts["missed"] = len(missed)
    return {"AP": base, "dAP": gains, "count": counts}


def _fix(kind, dets, images, num_gt, matched, missed):
    """The detections and ground-truth counts with the errors of ``kind`` fixed."""
    if kind == "missed":
        fixed = dict(num_gt)
        for image_id, j in missed:
            fixed[int(images[image_id].categories[j])] -= 1
        return dets, fixed
    out, taken = [], set(matched)
    for d in sorted(dets, key=lambda d: -d.score):
        if d.error != kind:
            out.append(d)
        elif kind in ("classification", "localization") and d.target not in taken:
            taken.add(d.target)
            out.append(_Detection(d.image_id, int(images[d.image_id].categories[d.target[1]]), d.score, d.box, tp=True))
    return out, num_gt


# --- the images that fail most -------------------------------------------------------------------

def worst_images(coco_gt, results: list[dict], image_ids, min_score: float, count: int, fg: float = 0.5):
    """The ``count`` images with the most misses plus false detections among the detections
    scoring at least ``min_score`` (matched as COCO does at IoU ``fg``); ties by image id.

    :return: ``[{"image_id", "missed", "false"}]``, worst first, only images with a failure
    """
    images = _images(coco_gt, sorted(image_ids))
    by_image = _detections([r for r in results if r["score"] >= min_score], set(image_ids))
    rows = []
    for image_id, image in images.items():
        dets = by_image.get(image_id, [])
        matched = _match(dets, image, fg)
        rows.append({"image_id": image_id, "missed": len(image.categories) - len(matched),
                     "false": sum(not d.tp and not d.ignored for d in dets)})
    rows.sort(key=lambda r: (-(r["missed"] + r["false"]), r["image_id"]))
    return [r for r in rows[:count] if r["missed"] + r["false"] > 0]


def as_dicts(rows: list[ClassRow]) -> list[dict]:
    return [asdict(r) for r in rows]
