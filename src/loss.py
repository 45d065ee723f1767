"""The MultiBox loss of the SSD paper (section 2.2, "Training objective")."""
import torch.nn.functional as F
from torch import nn

from .box_coder import BoxCoder


class MultiBoxLoss(nn.Module):
    """Smooth-L1 localisation loss on positives plus cross-entropy on positives and the
    hardest negatives, normalised per image by its number of positives.

    Images without positives contribute 0 (not NaN) and still count in the batch mean.

    :param coder: the model's :class:`BoxCoder` (gives the default boxes for the offsets)
    :param neg_pos_ratio: hard negatives kept per positive
    """

    def __init__(self, coder: BoxCoder, neg_pos_ratio: int = 3):
        super().__init__()
        self.coder = coder
        self.neg_pos_ratio = neg_pos_ratio

    def forward(self, ploc, plabel, gt_xywh, gt_labels) -> dict:
        """
        :param ploc: (N, 4, B) predicted offsets
        :param plabel: (N, C, B) class logits
        :param gt_xywh: (N, B, 4) matched boxes from :meth:`BoxCoder.match`, normalised xywh
        :param gt_labels: (N, B) matched labels, 0 = background
        :return: ``{"loc", "cls", "total"}``, scalars averaged over the batch
        """
        positive = gt_labels > 0  # (N, B)
        num_pos = positive.sum(dim=1)  # (N,)

        gt_offsets = self.coder.encode(gt_xywh).transpose(1, 2)  # (N, 4, B)
        loc = F.smooth_l1_loss(ploc.float(), gt_offsets, reduction="none").sum(dim=1)  # (N, B)
        loc = (loc * positive).sum(dim=1)  # (N,)

        ce = F.cross_entropy(plabel.float(), gt_labels, reduction="none")  # (N, B)
        cls = (ce * (positive | self._hard_negatives(ce, positive, num_pos))).sum(dim=1)  # (N,)

        # per image: divide by its positives; an image without positives gives 0
        scale = (num_pos > 0) / num_pos.clamp(min=1)
        loc, cls = (loc * scale).mean(), (cls * scale).mean()
        return {"loc": loc, "cls": cls, "total": loc + cls}

    def _hard_negatives(self, ce, positive, num_pos):
        """(N, B) mask of the ``neg_pos_ratio * num_pos`` negatives with the highest loss."""
        neg_ce = ce.detach().masked_fill(positive, 0.0)
        rank = neg_ce.argsort(dim=1, descending=True).argsort(dim=1)  # (N, B): 0 = hardest
        return rank < (self.neg_pos_ratio * num_pos)[:, None]
