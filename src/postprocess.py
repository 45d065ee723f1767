"""From raw head outputs to detections: softmax, decode, threshold, per-class NMS."""
import torch
from torchvision.ops import batched_nms

from .box_coder import BoxCoder


class Postprocessor:
    """Turns ``(ploc, plabel)`` into detections, batched over images and classes.

    :param coder: the model's :class:`BoxCoder`
    :param score_threshold: minimum class probability of a candidate
    :param nms_threshold: IoU above which a lower-scored box of the same class is dropped
    :param max_per_class: candidates kept per class before NMS
    :param max_output: detections kept per image after NMS
    """

    def __init__(self, coder: BoxCoder, score_threshold=0.05, nms_threshold=0.5,
                 max_per_class=200, max_output=200):
        self.coder = coder
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_per_class = max_per_class
        self.max_output = max_output

    @torch.no_grad()
    def __call__(self, ploc: torch.Tensor, plabel: torch.Tensor):
        """
        :param ploc: (N, 4, B) predicted offsets
        :param plabel: (N, C, B) class logits, class 0 = background
        :return: a list of N tuples ``(boxes (k, 4) normalised ltrb clamped to [0, 1],
            labels (k,) in 1..C-1, scores (k,))``, by descending score
        """
        n, num_classes, num_boxes = plabel.shape
        boxes = self.coder.decode(ploc.float().transpose(1, 2))  # (N, B, 4)
        scores = torch.softmax(plabel.float(), dim=1)[:, 1:]  # (N, C-1, B)

        k = min(self.max_per_class, num_boxes)
        top_scores, top_index = scores.topk(k, dim=2)  # (N, C-1, k)
        keep = top_scores > self.score_threshold  # (N, C-1, k)
        image, cls, _ = keep.nonzero(as_tuple=True)
        cand_scores = top_scores[keep]  # (K,)
        cand_boxes = boxes[image, top_index[keep]]  # (K, 4)
        cand_labels = cls + 1

        # one NMS call for the whole batch: a group per (image, class)
        kept = batched_nms(cand_boxes, cand_scores, image * num_classes + cand_labels, self.nms_threshold)
        kept = kept[self._rank_within_image(image[kept], n) < self.max_output]
        kept = kept[torch.argsort(image[kept], stable=True)]  # group by image, scores still descending
        counts = torch.bincount(image[kept], minlength=n).tolist()
        return list(zip(cand_boxes[kept].clamp(0, 1).split(counts),
                        cand_labels[kept].split(counts),
                        cand_scores[kept].split(counts)))

    @staticmethod
    def _rank_within_image(image: torch.Tensor, n: int) -> torch.Tensor:
        """Rank of each entry among those of its image, for ``image`` ids in score order."""
        order = torch.argsort(image, stable=True)
        counts = torch.bincount(image, minlength=n)
        starts = torch.cumsum(counts, 0) - counts  # (N,)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=image.device) - starts[image[order]]
        return rank
