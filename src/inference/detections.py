"""Detections of one image in pixels: what every detector returns, whatever runs the model."""
from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Detections of one image: ``boxes`` (k, 4) ltrb in pixels of that image, ``labels`` (k,)
    in 1..K, ``scores`` (k,), by descending score (NumPy arrays, or torch tensors from the
    PyTorch detector); ``names`` the label names."""
    boxes: object
    labels: object
    scores: object
    names: list

    @classmethod
    def from_coco_results(cls, results: list[dict], category_ids: list, category_names: list) -> "Detections":
        """One image's detections in COCO results format (pixels, COCO xywh, category ids), as Detections."""
        boxes = np.array([r["bbox"] for r in results], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO xywh -> ltrb
        labels = np.array([category_ids.index(r["category_id"]) + 1 for r in results], dtype=np.int64)
        return cls(boxes, labels, np.array([float(r["score"]) for r in results], dtype=np.float32),
                   [category_names[i - 1] for i in labels.tolist()])

    def to_list(self) -> list[dict]:
        return [{"label": int(label), "name": name, "score": round(float(score), 4),
                 "box": [round(v, 1) for v in box]}
                for box, label, score, name in zip(self.boxes.tolist(), self.labels.tolist(), self.scores.tolist(),
                                                   self.names)]
