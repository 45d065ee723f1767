import torch

from src.box_coder import BoxCoder, pad_targets
from src.default_boxes import default_boxes
from src.loss import MultiBoxLoss
from src.specs import SSDLITE


def setup(num_classes=5):
    coder = BoxCoder(default_boxes(SSDLITE))
    return coder, MultiBoxLoss(coder)


def test_images_without_positives_count_zero():
    coder, loss_fn = setup()
    b = coder.num_boxes
    ploc = torch.randn(2, 4, b, requires_grad=True)
    plabel = torch.randn(2, 5, b, requires_grad=True)
    targets = [{"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    gt = coder.match(*pad_targets(targets))
    both = loss_fn(ploc, plabel, *gt)
    first = loss_fn(ploc[:1], plabel[:1], gt[0][:1], gt[1][:1])
    assert torch.isfinite(both["total"])
    torch.testing.assert_close(both["total"], first["total"] / 2)  # the empty image adds 0 to the mean
    empty = loss_fn(ploc[1:], plabel[1:], gt[0][1:], gt[1][1:])
    assert empty["total"].item() == 0.0
    both["total"].backward()
    assert torch.isfinite(ploc.grad).all() and torch.isfinite(plabel.grad).all()


def test_perfect_prediction_has_low_loss_and_hard_negatives_are_three_per_positive():
    coder, loss_fn = setup()
    b = coder.num_boxes
    gt_xywh, gt_labels = coder.match_one(torch.tensor([[0.2, 0.2, 0.6, 0.7]]), torch.tensor([3]))
    ploc = coder.encode(gt_xywh).T[None]  # (1, 4, B)
    plabel = torch.full((1, 5, b), -10.0)
    plabel[0, gt_labels, torch.arange(b)] = 10.0
    out = loss_fn(ploc, plabel, gt_xywh[None], gt_labels[None])
    assert out["loc"].item() < 1e-6 and out["cls"].item() < 1e-3

    num_pos = int((gt_labels > 0).sum())
    ce = torch.rand(1, b)
    mask = loss_fn._hard_negatives(ce, (gt_labels > 0)[None], torch.tensor([num_pos]))
    assert int(mask.sum()) == 3 * num_pos
    assert ce[mask].min() >= ce[~mask & ~(gt_labels > 0)[None]].max()
