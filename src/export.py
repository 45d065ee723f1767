"""An ONNX-exportable SSD: raw head outputs, or detections decoded inside the graph.

Decoding uses ONNX's own NonMaxSuppression operator, which runs per (image, class) in one
node; the outputs have fixed shapes (``max_output`` slots per image, score 0 = empty slot).
"""
import torch
from torch import nn
from torchvision.ops import batched_nms

from .box_coder import BoxCoder


class _NonMaxSuppression(torch.autograd.Function):
    """torchvision's NMS when run, ONNX's NonMaxSuppression when exported.

    boxes (G, K, 4) ltrb and scores (G, 1, K), one group per batch entry -> selected (S, 3)
    as ONNX defines it: (group, 0, box index), best first within each group.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_group: int, iou_threshold: float, score_threshold: float):
        groups, k = scores.shape[0], scores.shape[2]
        flat = scores.reshape(-1)
        candidates = torch.nonzero(flat > score_threshold).squeeze(1)
        group = candidates // k
        kept = batched_nms(boxes.reshape(-1, 4)[candidates], flat[candidates], group, iou_threshold)
        chosen = candidates[kept][:groups * max_per_group]
        return torch.stack([chosen // k, torch.zeros_like(chosen), chosen % k], dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_group, iou_threshold, score_threshold):
        def const(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))
        return g.op("NonMaxSuppression", boxes, scores, const(max_per_group, torch.int64),
                    const(iou_threshold, torch.float32), const(score_threshold, torch.float32))


class ExportableSSD(nn.Module):
    """``model`` for export. Without decoding: ``(ploc (N, 4, B), plabel (N, C, B))``.
    With decoding: ``(boxes (N, M, 4) normalised ltrb, labels (N, M), scores (N, M))``,
    M = ``max_output``, by descending score; slots with score 0 are empty.

    The decoding is :class:`~src.postprocess.Postprocessor`'s: softmax, the best
    ``max_per_class`` boxes per class above ``score_threshold``, per-class NMS, the best
    ``max_output`` per image.
    """

    def __init__(self, model, coder: BoxCoder, decode=False, score_threshold=0.05, nms_threshold=0.5,
                 max_per_class=200, max_output=200):
        super().__init__()
        self.model = model
        self.decode = decode
        self.register_buffer("dboxes_xywh", coder.dboxes_xywh.clone())
        self.coder = coder
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.max_per_class, self.max_output = max_per_class, max_output

    def forward(self, images):
        ploc, plabel = self.model(images)
        if not self.decode:
            return ploc, plabel
        return self.detect(ploc, plabel)

    def detect(self, ploc, plabel):
        n, num_classes, num_boxes = plabel.shape
        k = min(self.max_per_class, num_boxes)
        boxes = BoxCoder(self.dboxes_xywh).decode(ploc.transpose(1, 2))  # (N, B, 4)
        scores = torch.softmax(plabel, dim=1)[:, 1:]  # (N, C-1, B)
        top_scores, top_index = scores.topk(k, dim=2)  # (N, C-1, k)
        cand = boxes.gather(1, top_index.reshape(n, -1, 1).expand(-1, -1, 4))  # (N, (C-1)*k, 4)
        groups = cand.reshape(-1, k, 4)  # (N*(C-1), k, 4): one NMS group per (image, class)
        selected = _NonMaxSuppression.apply(groups, top_scores.reshape(-1, 1, k), k, self.nms_threshold,
                                            self.score_threshold)
        keep = torch.zeros_like(top_scores).reshape(-1, k)  # (N*(C-1), k)
        keep = keep.index_put((selected[:, 0], selected[:, 2]), torch.ones_like(selected[:, 0], dtype=keep.dtype))
        kept_scores = (top_scores.reshape(-1, k) * keep).reshape(n, -1)  # (N, (C-1)*k)
        out_scores, out_index = kept_scores.topk(min(self.max_output, kept_scores.shape[1]), dim=1)  # (N, M)
        out_boxes = cand.gather(1, out_index.unsqueeze(-1).expand(-1, -1, 4)).clamp(0, 1)
        return out_boxes, out_index // k + 1, out_scores
