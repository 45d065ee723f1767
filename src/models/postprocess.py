"""From raw head outputs to detections: softmax, decode, threshold, per-class NMS."""
import torch
from torchvision.ops import batched_nms, nms

from src.models.box_coder import BoxCoder


class Postprocessor:
    """Turns ``(ploc, plabel)`` into detections, batched over images and classes.

    The policy is written once: :meth:`candidates` (softmax, decode, the best ``max_per_class``
    boxes of every (image, class) group above ``score_threshold``), an NMS step, and
    :meth:`select` (the best ``max_output`` survivors of each image). ``__call__`` runs it with
    :func:`greedy_nms`; the ONNX export runs the same two halves around ONNX's own
    NonMaxSuppression (:mod:`src.inference.export`).

    :param coder: the model's :class:`BoxCoder`
    :param score_threshold: minimum class probability of a candidate
    :param nms_threshold: IoU above which a lower-scored box of the same class is dropped
    :param max_per_class: candidates kept per class before NMS
    :param max_output: detections kept per image after NMS
    :param num_labels: labels 1..num_labels are decoded, the others never (a head wider than
        the categories it was trained on, as the original's 81-way head on a smaller set); None: all
    :param nms: a name of :data:`NMS_METHODS`; None: the fastest on the outputs' device
        (:data:`NMS_BY_DEVICE`). All give the same detections.
    :param clip_before_nms: clamp the candidates to the image before NMS (torchvision's order);
        False clamps the survivors (NVIDIA's and the original's)
    """

    def __init__(self, coder: BoxCoder, score_threshold=0.05, nms_threshold=0.5,
                 max_per_class=200, max_output=200, num_labels=None, nms=None, clip_before_nms=False):
        self.coder = coder
        self.nms = nms
        self.num_labels = num_labels
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_per_class = max_per_class
        self.max_output = max_output
        self.clip_before_nms = clip_before_nms

    @classmethod
    def for_spec(cls, spec, device="cpu", **kwargs) -> "Postprocessor":
        """The decoder of a model of architecture ``spec`` (its default boxes on ``device``), with
        the thresholds that come with it (``spec.decoding``) where ``kwargs`` give None or nothing."""
        d = spec.decoding
        defaults = {"score_threshold": d.score_threshold, "nms_threshold": d.nms_threshold,
                    "max_per_class": d.max_per_class, "max_output": d.max_output, "clip_before_nms": d.clip_before_nms}
        chosen = {**defaults, **{k: v for k, v in kwargs.items() if v is not None}}
        return cls(BoxCoder.for_spec(spec, device), **chosen)

    def candidates(self, ploc, plabel, trim=True):
        """The best ``max_per_class`` boxes of every (image, class) group, by descending score.

        :param ploc: (N, 4, B) predicted offsets
        :param plabel: (N, C, B) class logits, class 0 = background
        :param trim: cut the groups to the longest run of scores above the threshold (fewer
            boxes for NMS); False keeps the shapes fixed, as a traced graph needs
        :return: ``(boxes (N, L, k, 4) normalised ltrb, scores (N, L, k), valid (N, L, k))``,
            L = the labels decoded, ``valid`` the scores above the threshold
        """
        n, _, num_boxes = plabel.shape
        boxes = self.coder.decode(ploc.float().transpose(1, 2))  # (N, B, 4)
        scores = torch.softmax(plabel.float(), dim=1)[:, 1:][:, :self.num_labels]  # (N, L, B)
        top_scores, top_index = scores.topk(min(self.max_per_class, num_boxes), dim=2)  # (N, L, k)
        valid = top_scores > self.score_threshold
        if trim:
            k = max(int(valid.sum(2).max()), 1)  # no group has more candidates than this
            top_scores, top_index, valid = top_scores[..., :k], top_index[..., :k], valid[..., :k]
        labels, k = top_index.shape[1:]
        cand = boxes.gather(1, top_index.reshape(n, -1, 1).expand(-1, -1, 4))  # (N, L * k, 4)
        if self.clip_before_nms:
            cand = cand.clamp(0, 1)
        return cand.reshape(n, labels, k, 4), top_scores, valid

    def select(self, boxes, scores, keep):
        """The best ``max_output`` boxes that NMS kept, in each image.

        :param boxes: (N, L, k, 4), ``scores`` (N, L, k) as :meth:`candidates` gives them
        :param keep: (N, L, k) bool, the NMS survivors (valid ones only)
        :return: ``(boxes (N, M, 4) clamped to [0, 1], labels (N, M) in 1..L, scores (N, M))``, M =
            ``max_output``, by descending score; slots past the survivors have score 0
        """
        n, _, k = scores.shape
        kept_scores = (scores * keep).flatten(1)  # (N, L * k)
        best, where = kept_scores.topk(min(self.max_output, kept_scores.shape[1]), dim=1)  # (N, M)
        best_boxes = boxes.flatten(1, 2).gather(1, where[..., None].expand(-1, -1, 4)).clamp(0, 1)  # (N, M, 4)
        return best_boxes, where // k + 1, best

    @torch.no_grad()
    def __call__(self, ploc: torch.Tensor, plabel: torch.Tensor, out_device=None):
        """
        :param ploc: (N, 4, B) predicted offsets
        :param plabel: (N, C, B) class logits, class 0 = background
        :param out_device: where the results go (one copy for the batch); default: stay put
        :return: a list of N tuples ``(boxes (k, 4) normalised ltrb clamped to [0, 1],
            labels (k,) in 1..C-1, scores (k,))``, by descending score
        """
        boxes, scores, valid = self.candidates(ploc, plabel)
        method = NMS_METHODS[self.nms or NMS_BY_DEVICE.get(ploc.device.type, "greedy")]
        keep = method(boxes.flatten(0, 1), scores.flatten(0, 1), valid.flatten(0, 1), self.nms_threshold)  # (N*L, k)
        best_boxes, best_labels, best = self.select(boxes, scores, keep.view_as(valid))
        if out_device is not None:
            best_boxes, best_labels, best = (t.to(out_device) for t in (best_boxes, best_labels, best))
        counts = (best > 0).sum(1).tolist()  # the survivors come first: the empty slots scored 0
        return [(b[:c], lab[:c], s[:c]) for b, lab, s, c in zip(best_boxes, best_labels, best, counts)]


def greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float,
               chunk_pairs: int | None = None) -> torch.Tensor:
    """Non-maximum suppression of many groups at once, exactly as greedy per-group NMS.

    Each group's boxes come sorted by descending score. A box is kept unless a kept box
    before it in its group overlaps it by IoU > ``iou_threshold``. The overlaps of all pairs
    are computed batched; the greedy pass walks the k ranks, each step over all groups, so
    there is no Python loop over groups or classes (on a GPU: k small kernels, not thousands).

    :param boxes: (G, k, 4) ltrb, each group by descending score
    :param valid: (G, k) bool, False for padding
    :param chunk_pairs: the (G, k, k) overlaps are built this many pairs at a time, to bound
        memory; default 2**20 on the CPU (the temporaries stay in cache), 2**26 on a GPU
    :return: keep (G, k) bool
    """
    g, k = valid.shape
    chunk_pairs = chunk_pairs or (2**20 if boxes.device.type == "cpu" else 2**26)
    step = max(1, chunk_pairs // (k * k))
    over = torch.cat([_overlaps(boxes[i:i + step], iou_threshold) for i in range(0, g, step)])  # (G, k, k)
    keep = valid.clone()
    for i in range(k - 1):
        keep[:, i + 1:] &= ~(over[:, i, i + 1:] & keep[:, i, None])
    return keep


def _overlaps(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """(G, k, k) bool: IoU(box i, box j) > threshold, within each group of (G, k, 4) ltrb boxes."""
    left, top, right, bottom = boxes[..., None].unbind(-2)  # each (G, k, 1)
    left_t, top_t, right_t, bottom_t = (v.transpose(1, 2) for v in (left, top, right, bottom))  # each (G, 1, k)
    inter = torch.minimum(right, right_t).sub_(torch.maximum(left, left_t)).clamp_(min=0)  # (G, k, k) widths
    inter.mul_(torch.minimum(bottom, bottom_t).sub_(torch.maximum(top, top_t)).clamp_(min=0))
    # IoU > t  <=>  inter > t / (1 + t) * (area_i + area_j): no division, no union tensor
    scaled_area = (right - left).clamp(min=0) * (bottom - top).clamp(min=0) * (iou_threshold / (1 + iou_threshold))
    return inter > scaled_area + scaled_area.transpose(1, 2)


# Three exact ways to run per-group NMS on the candidates: boxes (G, k, 4) ltrb and scores (G, k),
# each group by descending score, valid (G, k) a prefix of each group -> keep (G, k) bool.

def _greedy(boxes, scores, valid, iou_threshold):
    return greedy_nms(boxes, valid, iou_threshold)


def _torchvision_loop(boxes, scores, valid, iou_threshold):
    """torchvision.ops.nms once per (image, class) group that has candidates."""
    keep = torch.zeros_like(valid)
    for group, count in enumerate(valid.sum(1).tolist()):
        if count:
            keep[group, nms(boxes[group, :count], scores[group, :count], iou_threshold)] = True
    return keep


def _torchvision_batched(boxes, scores, valid, iou_threshold):
    """torchvision.ops.batched_nms on every candidate at once, the group as its class index."""
    group, rank = valid.nonzero(as_tuple=True)
    kept = batched_nms(boxes[group, rank], scores[group, rank], group, iou_threshold)
    keep = torch.zeros_like(valid)
    keep[group[kept], rank[kept]] = True
    return keep


NMS_METHODS = {"greedy": _greedy, "torchvision-loop": _torchvision_loop, "torchvision-batched": _torchvision_batched}
# the fastest on each device, as measured by `python benchmark.py --only decode` (docs/speed.md)
NMS_BY_DEVICE = {"cpu": "greedy", "cuda": "torchvision-batched"}
