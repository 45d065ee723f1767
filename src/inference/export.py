"""An ONNX-exportable SSD: raw head outputs, or detections decoded inside the graph.

Decoding uses ONNX's own NonMaxSuppression operator, which runs per (image, class) in one
node; the outputs have fixed shapes (``max_output`` slots per image, score 0 = empty slot).
"""
import warnings

import torch
from torch import nn
from torchvision.ops import batched_nms

from src.inference.runtime import metadata
from src.models.postprocess import Postprocessor


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

    The decoding is :class:`~src.models.postprocess.Postprocessor`'s own policy (its ``candidates`` and
    ``select``, with fixed shapes), around ONNX's NonMaxSuppression instead of greedy_nms.
    """

    def __init__(self, model, postprocess: Postprocessor, decode=False):
        super().__init__()
        self.model = model
        self.decode = decode
        self.postprocess = postprocess

    def forward(self, images):
        ploc, plabel = self.model(images)
        if not self.decode:
            return ploc, plabel
        return self.detect(ploc, plabel)

    def detect(self, ploc, plabel):
        post = self.postprocess
        boxes, scores, _ = post.candidates(ploc, plabel, trim=False)  # (N, L, k, 4), (N, L, k)
        n, labels = scores.shape[:2]
        k = min(post.max_per_class, plabel.shape[2])  # a constant of the graph, as ONNX's operator wants
        # one NMS group per (image, label); ONNX's operator applies the score threshold itself
        selected = _NonMaxSuppression.apply(boxes.reshape(-1, k, 4), scores.reshape(-1, 1, k), k,
                                            post.nms_threshold, post.score_threshold)
        keep = torch.zeros(n * labels, k, dtype=torch.bool, device=scores.device)
        keep = keep.index_put((selected[:, 0], selected[:, 2]), torch.ones_like(selected[:, 0], dtype=torch.bool))
        return post.select(boxes, scores, keep.view(n, labels, k))


def export_file(module, path: str, decode: bool, opset: int, size: int = 300):
    """Write ``module`` (an :class:`ExportableSSD`) as ONNX with a dynamic batch axis, for
    ``size`` x ``size`` inputs (the model's ``spec.fig_size``)."""
    names = ["boxes", "labels", "scores"] if decode else ["ploc", "plabel"]
    dummy = torch.randn(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, (dummy,), path, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=names, dynamic_axes={n: {0: "batch"} for n in ["images", *names]})


def model_metadata(spec, category_ids, category_names, post: Postprocessor, precision: str = "fp32") -> dict:
    """:func:`~src.inference.runtime.metadata` of a model of architecture ``spec`` decoded by ``post``."""
    pre = spec.preprocessing
    return metadata(spec.name, spec.fig_size, pre.mean, pre.std, category_ids, category_names, post.score_threshold,
                    post.nms_threshold, post.max_output, precision, pre.antialias)


def add_metadata(path, entries: dict):
    import onnx
    graph = onnx.load(path)
    for key, value in entries.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, path)
