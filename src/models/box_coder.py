"""The offset encoding between boxes and default boxes, as the model predicts it.

Conventions used throughout the project:
- ``ltrb``: (left, top, right, bottom), torchvision's ``xyxy``; ``cxcywh``: (centre x, centre y,
  width, height); COCO's ``xywh`` (left, top, width, height) appears only at the COCO boundary;
- coordinates are normalised to [0, 1] of the network input unless a name says pixels;
- label 0 is background, labels 1..C-1 are the dataset's categories.
"""
import torch
from torchvision.ops import box_convert

from src.models.default_boxes import default_boxes
from src.models.matching import IOU_THRESHOLD, MATCH_CHUNK_ELEMENTS, match

CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2


class BoxCoder:
    """The default boxes of one model: ground truth matched to them (:mod:`src.models.matching`),
    and boxes converted to and from offsets.

    :param dboxes_cxcywh: (B, 4) default boxes, normalised (cx, cy, w, h)
    :param max_log_size: :meth:`decode` clamps the scaled log-size offsets at this (torchvision's
        models: ``log(1000 / 16)``); None: no clamp (NVIDIA's and the original's)
    """

    def __init__(self, dboxes_cxcywh: torch.Tensor, iou_threshold: float = IOU_THRESHOLD,
                 max_log_size: float | None = None):
        self.dboxes_cxcywh = dboxes_cxcywh
        self.dboxes_ltrb = box_convert(dboxes_cxcywh, "cxcywh", "xyxy")
        self.iou_threshold = iou_threshold
        self.max_log_size = max_log_size

    @classmethod
    def for_spec(cls, spec, device="cpu") -> "BoxCoder":
        """The coder of a model of architecture ``spec``, its default boxes on ``device``."""
        return cls(default_boxes(spec).to(device), max_log_size=spec.decoding.max_log_size)

    @property
    def num_boxes(self) -> int:
        return self.dboxes_cxcywh.shape[0]

    def match(self, gt_ltrb: torch.Tensor, gt_labels: torch.Tensor, crowd_ltrb: torch.Tensor | None = None,
              chunk_elements: int = MATCH_CHUNK_ELEMENTS):
        """:func:`src.models.matching.match` against these default boxes and threshold: a padded
        batch (N, M, 4), (N, M) -> ``(boxes_cxcywh (N, B, 4), labels (N, B))``."""
        return match(gt_ltrb, gt_labels, self.dboxes_cxcywh, self.iou_threshold, crowd_ltrb, chunk_elements)

    def match_one(self, gt_ltrb: torch.Tensor, gt_labels: torch.Tensor):
        """:meth:`match` for one image: (M, 4), (M,) -> (B, 4), (B,)."""
        boxes, labels = self.match(gt_ltrb[None], gt_labels[None])
        return boxes[0], labels[0]

    def encode(self, boxes_cxcywh: torch.Tensor) -> torch.Tensor:
        """Offsets of (..., B, 4) cxcywh boxes from the default boxes, as the model predicts them."""
        d = self.dboxes_cxcywh.to(boxes_cxcywh.device)
        center = (boxes_cxcywh[..., :2] - d[:, :2]) / (CENTER_VARIANCE * d[:, 2:])
        size = torch.log(boxes_cxcywh[..., 2:] / d[:, 2:]) / SIZE_VARIANCE
        return torch.cat([center, size], dim=-1)

    def decode(self, offsets: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`: (..., B, 4) offsets -> (..., B, 4) normalised ltrb boxes."""
        d = self.dboxes_cxcywh.to(offsets.device)
        center = offsets[..., :2] * CENTER_VARIANCE * d[:, 2:] + d[:, :2]
        log_size = offsets[..., 2:] * SIZE_VARIANCE
        if self.max_log_size is not None:
            log_size = log_size.clamp(max=self.max_log_size)
        size = torch.exp(log_size) * d[:, 2:]
        return box_convert(torch.cat([center, size], dim=-1), "cxcywh", "xyxy")
