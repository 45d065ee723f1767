"""The MultiBox loss of the SSD paper (section 2.2, "Training objective")."""
import torch
import torch.nn.functional as F
from torch import nn

from src.models.box_coder import BoxCoder


class MultiBoxLoss(nn.Module):
    """Smooth-L1 localisation loss on positives plus cross-entropy on positives and the
    hardest negatives, normalised per image by its number of positives.

    An image without positives (background only) keeps its ``empty_negatives`` hardest
    negatives and is normalised as an image with ``empty_negatives / neg_pos_ratio``
    positives would be: it teaches the model what is not an object. With
    ``empty_negatives=0`` such an image adds 0, as in the paper's code (and still counts in
    the batch mean). Default boxes labelled -1 by the matcher (inside a crowd region) are
    neither positives nor negatives.

    :param coder: the model's :class:`BoxCoder` (gives the default boxes for the offsets)
    :param neg_pos_ratio: hard negatives kept per positive
    :param empty_negatives: hard negatives kept in an image without positives
    """

    def __init__(self, coder: BoxCoder, neg_pos_ratio: int = 3, empty_negatives: int = 0):
        super().__init__()
        self.coder = coder
        self.neg_pos_ratio = neg_pos_ratio
        self.empty_negatives = empty_negatives

    def forward(self, ploc, plabel, gt_cxcywh, gt_labels) -> dict:
        """
        :param ploc: (N, 4, B) predicted offsets
        :param plabel: (N, C, B) class logits
        :param gt_cxcywh: (N, B, 4) matched boxes from :meth:`BoxCoder.match`, normalised xywh
        :param gt_labels: (N, B) matched labels, 0 = background, -1 = ignored
        :return: ``{"loc", "cls", "total"}``, scalars averaged over the batch
        """
        positive = gt_labels > 0  # (N, B)
        num_pos = positive.sum(dim=1)  # (N,)

        gt_offsets = self.coder.encode(gt_cxcywh).transpose(1, 2)  # (N, 4, B)
        loc = F.smooth_l1_loss(ploc.float(), gt_offsets, reduction="none").sum(dim=1)  # (N, B)
        loc = (loc * positive).sum(dim=1)  # (N,)

        ce = F.cross_entropy(plabel.float(), gt_labels.clamp(min=0), reduction="none")  # (N, B)
        num_neg = torch.where(num_pos > 0, self.neg_pos_ratio * num_pos, self.empty_negatives)  # (N,)
        negatives = self._hard_negatives(ce, gt_labels == 0, num_neg)
        cls = (ce * (positive | negatives)).sum(dim=1)  # (N,)

        # per image: divide by its positives (an empty image by empty_negatives / neg_pos_ratio)
        norm = torch.where(num_pos > 0, num_pos.float(), self.empty_negatives / self.neg_pos_ratio)  # (N,)
        scale = (norm > 0) / norm.clamp(min=1e-6)
        loc, cls = (loc * scale).mean(), (cls * scale).mean()
        return {"loc": loc, "cls": cls, "total": loc + cls}

    @staticmethod
    def _hard_negatives(ce, background, num_neg):
        """(N, B) mask of the ``num_neg`` background boxes of each image with the highest loss."""
        neg_ce = ce.detach().masked_fill(~background, -1.0)  # positives and ignored boxes rank last
        rank = neg_ce.argsort(dim=1, descending=True).argsort(dim=1)  # (N, B): 0 = hardest
        return (rank < num_neg[:, None]) & background
