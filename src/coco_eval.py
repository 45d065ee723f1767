"""COCO mAP with pycocotools, from our detections."""
import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = [
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
]


def to_coco_results(detections, image_ids, orig_sizes, category_ids) -> list[dict]:
    """COCO results entries ``{image_id, category_id, bbox [x, y, w, h] in pixels, score}``.

    :param detections: per image ``(boxes (k, 4) normalised ltrb, labels (k,), scores (k,))``
    :param orig_sizes: per image (height, width) of the file
    :param category_ids: dataset category id of each label 1..K (``category_ids[label - 1]``)
    """
    results = []
    for (boxes, labels, scores), image_id, (h, w) in zip(detections, image_ids, orig_sizes):
        boxes = boxes.float().cpu().numpy() * np.array([w, h, w, h], dtype=np.float32)
        boxes[:, 2:] -= boxes[:, :2]  # ltrb -> COCO xywh
        for box, label, score in zip(boxes.tolist(), labels.tolist(), scores.tolist()):
            results.append({"image_id": int(image_id), "category_id": int(category_ids[label - 1]),
                            "bbox": [round(v, 2) for v in box], "score": round(score, 5)})
    return results


def coco_evaluate(coco_gt: COCO, results: list[dict], verbose: bool = True, backend: str = "auto",
                  image_ids=None) -> dict:
    """Run COCOeval (bbox) on ``image_ids`` (default: every image of ``coco_gt``); print the
    12-line summary if ``verbose``.

    :param backend: "faster" (faster-coco-eval, the same numbers several times sooner),
        "pycocotools", or "auto": the first when it is installed
    :return: ``{name: value}`` for the 12 standard stats (all 0 when there is no detection)
    """
    if not results:
        if verbose:
            print("No detections: every COCO stat is 0.")
        return dict.fromkeys(STAT_NAMES, 0.0)
    results = [dict(r) for r in results]  # loadRes adds keys to what it is given
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else image_ids)
    if backend == "faster" or (backend == "auto" and _has_faster_coco_eval()):
        stats, summary = _faster_coco_eval(coco_gt, results, image_ids)
    else:
        stats, summary = _pycocotools(coco_gt, results, image_ids)
    if verbose:
        print(summary, end="")
    return {name: float(v) for name, v in zip(STAT_NAMES, stats)}


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
    return evaluator.stats, summary.getvalue()


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
    return evaluator.stats[:12], "".join(line + "\n" for line in summary)
