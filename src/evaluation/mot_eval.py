"""Tracking scored as the MOT benchmarks score it, with motmetrics (IDF1, MOTA, ID switches).

motmetrics is a test and benchmark tool (requirements-dev.txt), imported when called. Its own
``iou_matrix`` calls ``np.asfarray``, gone since NumPy 2, so the distances are computed here:
1 - IoU, and no match below IoU 0.5 (the MOTChallenge rule).
"""
import numpy as np

from src.inference.tracking import iou_matrix


def track_metrics(truth: list, predicted: list, min_iou: float = 0.5) -> dict:
    """Scores of a tracker's output against the ground truth of a video.

    :param truth: per frame, the objects in view as (id, category id, ltrb box)
    :param predicted: per frame, the tracker's objects as (id, ltrb box)
    :returns: idf1, mota, id_switches, and the counts they come from
    """
    import motmetrics as mm
    acc = mm.MOTAccumulator(auto_id=True)
    for gt, hyp in zip(truth, predicted, strict=True):
        gt_boxes = np.array([b for _, _, b in gt], np.float64).reshape(-1, 4)
        hyp_boxes = np.array([b for _, b in hyp], np.float64).reshape(-1, 4)
        distance = 1.0 - iou_matrix(gt_boxes, hyp_boxes)
        distance[distance > 1.0 - min_iou] = np.nan  # not a match
        acc.update([i for i, _, _ in gt], [i for i, _ in hyp], distance)
    names = ["idf1", "mota", "num_switches", "num_objects", "num_misses", "num_false_positives",
             "num_unique_objects"]
    row = mm.metrics.create().compute(acc, metrics=names, name="video").iloc[0]
    return {"idf1": float(row["idf1"]), "mota": float(row["mota"]), "id_switches": int(row["num_switches"]),
            "objects": int(row["num_objects"]), "misses": int(row["num_misses"]),
            "false_positives": int(row["num_false_positives"]), "identities": int(row["num_unique_objects"])}
