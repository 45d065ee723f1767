"""Matching ground truth to default boxes: the SSD paper's matching strategy (section 2.2),
with crowd regions ignored as COCOeval ignores them. Boxes are normalised ltrb unless a name says
cxcywh (:mod:`src.models.box_coder` states the conventions)."""
import torch
from torchvision.ops import box_convert

IOU_THRESHOLD = 0.5  # the paper's: a default box is positive above this IoU with a ground truth
CROWD_COVER = 0.5  # a default box over half inside a crowd region is ignored
MATCH_CHUNK_ELEMENTS = 2**24  # overlaps held at once while matching: 64 MB of float32 per temporary


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of (..., 4) ltrb boxes."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def batched_intersection(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection areas of every box of ``boxes1`` (N, M, 4) with every box of ``boxes2`` (B, 4),
    both ltrb: (N, M, B)."""
    lt = torch.max(boxes1[..., None, :2], boxes2[:, :2])  # (N, M, B, 2)
    rb = torch.min(boxes1[..., None, 2:], boxes2[:, 2:])  # (N, M, B, 2)
    wh = (rb - lt).clamp_(min=0)
    return wh[..., 0] * wh[..., 1]  # (N, M, B)


def batched_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``boxes1`` (N, M, 4) with every box of ``boxes2`` (B, 4), both ltrb.

    torchvision.ops.box_iou takes 2-D inputs only; this is its batched form.
    :return: (N, M, B)
    """
    inter = batched_intersection(boxes1, boxes2)
    return inter / (box_area(boxes1)[..., None] + box_area(boxes2) - inter)


def match(gt_ltrb: torch.Tensor, gt_labels: torch.Tensor, dboxes_cxcywh: torch.Tensor,
          iou_threshold: float = IOU_THRESHOLD, crowd_ltrb: torch.Tensor | None = None,
          chunk_elements: int = MATCH_CHUNK_ELEMENTS):
    """Assign a ground-truth box to every default box, for a padded batch.

    A default box is positive when its best IoU exceeds the threshold; besides, every
    ground-truth box keeps its own best default box whatever the IoU (when two boxes
    claim the same default box, the later one wins). A default box that is not positive
    and lies mostly inside a crowd region (over half of its area, COCOeval's rule for
    ignoring a detection on a crowd at IoU 0.5) is ignored: neither positive nor negative.

    The images are matched a chunk at a time, so that the (images, M, B) overlaps hold at
    most ``chunk_elements`` values: dense images do not blow up memory.

    :param gt_ltrb: (N, M, 4) normalised ltrb ground truth, padded
    :param gt_labels: (N, M) int labels, 0 where a row is padding
    :param dboxes_cxcywh: (B, 4) the default boxes, normalised (cx, cy, w, h)
    :param iou_threshold: a default box whose best IoU exceeds it is positive (the paper's 0.5)
    :param crowd_ltrb: (N, K, 4) normalised ltrb crowd regions, padded with empty boxes
    :return: ``(boxes_cxcywh (N, B, 4), labels (N, B))``: the matched ground truth as
        (cx, cy, w, h), or the default box itself where unmatched; label 0 there, -1 where ignored
    """
    n, m = gt_labels.shape
    step = max(1, chunk_elements // (max(m, 1, 0 if crowd_ltrb is None else crowd_ltrb.shape[1])
                                     * dboxes_cxcywh.shape[0]))
    dboxes_cxcywh = dboxes_cxcywh.to(gt_ltrb.device)
    dboxes_ltrb = box_convert(dboxes_cxcywh, "cxcywh", "xyxy")  # once per batch, not per chunk
    parts = [_match_chunk(gt_ltrb[i:i + step], gt_labels[i:i + step], dboxes_cxcywh, dboxes_ltrb, iou_threshold,
                          None if crowd_ltrb is None else crowd_ltrb[i:i + step]) for i in range(0, n, step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _match_chunk(gt_ltrb, gt_labels, dboxes_cxcywh, dboxes_ltrb, iou_threshold, crowd_ltrb):
    if gt_labels.shape[1] == 0:  # no ground truth at all: one padding row keeps the shapes valid
        gt_ltrb, gt_labels = gt_ltrb.new_zeros(len(gt_ltrb), 1, 4), gt_labels.new_zeros(len(gt_labels), 1)
    n, m = gt_labels.shape
    num_boxes = dboxes_ltrb.shape[0]
    valid = gt_labels > 0  # (N, M)
    ious = batched_box_iou(gt_ltrb, dboxes_ltrb)  # (N, M, B)
    ious = ious.masked_fill(~valid[..., None], -1.0)

    best_iou, best_gt = ious.max(dim=1)  # (N, B): best ground truth of each default box
    best_dbox = ious.argmax(dim=2)  # (N, M): best default box of each ground truth
    del ious

    # each ground truth keeps its best default box: scatter its index there ("amax" makes
    # the later ground truth win deterministically on every device)
    image = torch.arange(n, device=gt_ltrb.device)[:, None].expand(n, m)
    gt_index = torch.arange(m, device=gt_ltrb.device)[None].expand(n, m)
    flat = (image * num_boxes + best_dbox)[valid]
    forced = torch.full((n * num_boxes,), -1, dtype=torch.long, device=gt_ltrb.device)
    forced.scatter_reduce_(0, flat, gt_index[valid], reduce="amax")
    forced = forced.view(n, num_boxes)  # (N, B)
    best_gt = torch.where(forced >= 0, forced, best_gt)
    positive = (forced >= 0) | (best_iou > iou_threshold)  # (N, B)

    labels = torch.gather(gt_labels, 1, best_gt) * positive  # (N, B)
    if crowd_ltrb is not None and crowd_ltrb.shape[1]:
        in_crowd = (batched_intersection(crowd_ltrb, dboxes_ltrb).amax(1)
                    > CROWD_COVER * box_area(dboxes_ltrb))  # (N, B)
        labels = labels.masked_fill(in_crowd & ~positive, -1)
    matched = torch.gather(gt_ltrb, 1, best_gt[..., None].expand(n, num_boxes, 4))  # (N, B, 4)
    matched = box_convert(matched, "xyxy", "cxcywh")
    boxes = torch.where(positive[..., None], matched, dboxes_cxcywh)
    return boxes, labels.long()


def pad_targets(targets: list[dict], device=None):
    """Stack variable-length targets into a padded batch for :meth:`BoxCoder.match`.

    :param targets: dicts with ``boxes`` (n_i, 4) normalised ltrb, ``labels`` (n_i,) and
        optionally ``crowd`` (k_i, 4) normalised ltrb crowd regions
    :return: ``(boxes (N, M, 4), labels (N, M), crowd (N, K, 4))``, M = max n_i (at least 1),
        label 0 = padding; crowd padded with empty boxes (K may be 0)
    """
    m = max([1] + [len(t["labels"]) for t in targets])
    k = max([0] + [len(t.get("crowd", ())) for t in targets])
    boxes = torch.zeros(len(targets), m, 4)
    labels = torch.zeros(len(targets), m, dtype=torch.long)
    crowd = torch.zeros(len(targets), k, 4)
    for i, t in enumerate(targets):
        boxes[i, :len(t["labels"])] = t["boxes"]
        labels[i, :len(t["labels"])] = t["labels"]
        if len(t.get("crowd", ())):
            crowd[i, :len(t["crowd"])] = t["crowd"]
    return tuple(x.to(device, non_blocking=True) for x in (boxes, labels, crowd))
