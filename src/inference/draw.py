"""The one drawing function of the inference scripts, and the ground truth's for the report."""
import colorsys

import cv2
import numpy as np


def class_color(label: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(255 * b), int(255 * g), int(255 * r)


def draw_detections(image_bgr: np.ndarray, detections, ids=None, trails=None) -> np.ndarray:
    """Draw each detection's box and a "name : score" label on a copy of ``image_bgr``.

    The label sits above its box, or inside it at the top edge of the image, and is
    shifted left so that it never leaves the image.
    :param detections: a :class:`~src.inference.detector.Detections` (boxes in pixels of this image)
    :param ids: a tracked object's id per detection: the label reads "#id name : score" and the
        colour is the id's, so that each object keeps its own
    :param trails: per detection, the centres (x, y) of its last positions, drawn as a line
    """
    out = image_bgr.copy()
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 900)
    n = len(detections.names)
    ids = [None] * n if ids is None else list(ids)
    for i, trail in enumerate(trails or []):
        if len(trail) > 1:
            points = np.round(np.asarray(trail, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [points], False, class_color(ids[i] if ids[i] is not None else 0), thickness,
                          cv2.LINE_AA)
    for box, label, score, name, oid in zip(detections.boxes.tolist(), detections.labels.tolist(),
                                            detections.scores.tolist(), detections.names, ids):
        color = class_color(label if oid is None else oid)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        text = f"{name} : {score:.2f}" if oid is None else f"#{oid} {name} : {score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        tx = min(max(0, x1), max(0, w - tw - 2))
        ty = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else min(max(0, y1), max(0, h - th - base - 2))
        cv2.rectangle(out, (tx, ty), (tx + tw + 2, ty + th + base + 2), color, -1)
        cv2.putText(out, text, (tx + 1, ty + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def draw_ground_truth(image_bgr: np.ndarray, boxes, names: list[str]) -> np.ndarray:
    """Ground-truth boxes in a style of their own, beside :func:`draw_detections`' filled
    labels: a thin white box in a black outline, its name in small white letters at its
    bottom edge. ``boxes``: (k, 4) ltrb pixels."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    font_scale = max(0.35, min(h, w) / 1100)
    for (x1, y1, x2, y2), name in zip(np.asarray(boxes, dtype=float).round().astype(int).tolist(), names):
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 0, 0), 3)
        cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), 1)
        (tw, th), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        tx, ty = min(max(0, x1 + 2), max(0, w - tw - 2)), min(max(th + 2, y2 - 3), h - 2)
        cv2.putText(out, name, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, name, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
