"""COCO mAP with pycocotools (or faster-coco-eval), from our detections."""
import contextlib
import io
from dataclasses import dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = [
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
]


def to_coco_results(detections, image_ids, orig_sizes, category_ids) -> list[dict]:
    """COCO results entries ``{image_id, category_id, bbox [x, y, w, h] in pixels, score}``.

    :param detections: per image ``(boxes (k, 4) normalised ltrb, labels (k,), scores (k,))``, torch
        tensors or NumPy arrays
    :param orig_sizes: per image (height, width) of the file
    :param category_ids: dataset category id of each label 1..K (``category_ids[label - 1]``); a
        label whose id is None (a category the dataset lacks) is left out
    """
    results = []
    for (boxes, labels, scores), image_id, (h, w) in zip(detections, image_ids, orig_sizes):
        boxes = (boxes.float().cpu().numpy() if hasattr(boxes, "cpu") else np.asarray(boxes, np.float32)) \
            * np.array([w, h, w, h], dtype=np.float32)
        boxes[:, 2:] -= boxes[:, :2]  # ltrb -> COCO xywh
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            if category_ids[label - 1] is None:
                continue
            results.append({"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
                            "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
    return results


@dataclass
class Evaluation:
    """What COCOeval found: the 12 standard numbers, and the arrays behind them (None when there
    was no detection at all).

    ``precision`` and ``scores`` are (T, R, K, A, M): IoU thresholds 0.5:0.95 (10), recall
    thresholds 0:0.01:1 (101), categories in ``category_ids`` order, areas (all, small, medium,
    large), max detections (1, 10, 100); -1 where undefined (a category without ground truth).
    ``scores[t, r, k]`` is the score at which category k reaches recall r at IoU t.
    """
    stats: dict
    category_ids: list
    precision: np.ndarray | None = None
    scores: np.ndarray | None = None
    with_ground_truth: frozenset = frozenset()  # without detections: the categories with objects to find

    def class_ap(self, k: int, iou: int | None = None, area: int = 0) -> float | None:
        """AP of the k-th category (mean over IoU 0.5:0.95, or at IoU index ``iou``), as COCOeval
        computes it for that category alone; None when it has no ground truth."""
        if self.precision is None:  # nothing detected: 0 where there was something to find
            return 0.0 if self.category_ids[k] in self.with_ground_truth else None
        p = self.precision[:, :, k, area, -1] if iou is None else self.precision[iou, :, k, area, -1]
        p = p[p > -1]
        return float(p.mean()) if p.size else None


def coco_evaluate(coco_gt: COCO, results: list[dict], verbose: bool = True, backend: str = "auto",
                  image_ids=None) -> Evaluation:
    """Run COCOeval (bbox) on ``image_ids`` (default: every image of ``coco_gt``); print the
    12-line summary if ``verbose``.

    :param backend: "faster" (faster-coco-eval, the same numbers several times sooner),
        "pycocotools", or "auto": the first when it is installed
    :return: an :class:`Evaluation`; its ``stats`` are ``{name: value}`` for the 12 standard
        numbers (all 0 when there is no detection)
    """
    category_ids = sorted(coco_gt.getCatIds())
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else image_ids)
    if not results:
        if verbose:
            print("No detections: AP and AR are 0 where there are objects to find (-1: none in that size range).")
        return _without_detections(coco_gt, image_ids, category_ids)
    results = [dict(r) for r in results]  # loadRes adds keys to what it is given
    if backend == "faster" or (backend == "auto" and _has_faster_coco_eval()):
        evaluator, summary = _faster_coco_eval(coco_gt, results, image_ids)
    else:
        evaluator, summary = _pycocotools(coco_gt, results, image_ids)
    if verbose:
        print(summary, end="")
    return Evaluation({name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats[:12])},
                      [int(c) for c in evaluator.params.catIds], evaluator.eval["precision"], evaluator.eval["scores"])


AREAS = {"": (0, 1e10), "small": (0, 32 ** 2), "medium": (32 ** 2, 96 ** 2), "large": (96 ** 2, 1e10)}  # COCOeval's


def _without_detections(coco_gt, image_ids, category_ids) -> Evaluation:
    """What COCOeval would say of no detection at all: 0 where there are objects (not crowd) in
    a stat's size range, -1 (undefined) where there are none."""
    images = set(image_ids)
    areas = [a["area"] for a in coco_gt.dataset["annotations"] if a["image_id"] in images and not a.get("iscrowd")]
    stats = {}
    for name in STAT_NAMES:
        low, high = AREAS[name.partition("_")[2]]
        stats[name] = 0.0 if any(low <= area <= high for area in areas) else -1.0
    found = frozenset(a["category_id"] for a in coco_gt.dataset["annotations"]
                      if a["image_id"] in images and not a.get("iscrowd"))
    return Evaluation(stats, category_ids, with_ground_truth=found)


def _has_faster_coco_eval() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _pycocotools(coco_gt, results, image_ids):
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return evaluator, summary.getvalue()


def _faster_coco_eval(coco_gt, results, image_ids):
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster
    lines = []
    gt = FastCOCO(coco_gt.dataset, use_deepcopy=True)
    evaluator = COCOeval_faster(gt, gt.loadRes(results), "bbox", print_function=lines.append)
    evaluator.params.imgIds = image_ids
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    # it adds two recall lines after the standard twelve: print pycocotools' summary only
    summary = [line for line in lines if line.lstrip().startswith("Average")][:12]
    return evaluator, "".join(line + "\n" for line in summary)
