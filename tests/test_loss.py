import torch

from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.loss import MultiBoxLoss
from src.models.matching import pad_targets
from src.models.specs import SSDLITE


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
    gt_cxcywh, gt_labels = coder.match_one(torch.tensor([[0.2, 0.2, 0.6, 0.7]]), torch.tensor([3]))
    ploc = coder.encode(gt_cxcywh).T[None]  # (1, 4, B)
    plabel = torch.full((1, 5, b), -10.0)
    plabel[0, gt_labels, torch.arange(b)] = 10.0
    out = loss_fn(ploc, plabel, gt_cxcywh[None], gt_labels[None])
    assert out["loc"].item() < 1e-6 and out["cls"].item() < 1e-3

    num_pos = int((gt_labels > 0).sum())
    ce = torch.rand(1, b)
    mask = loss_fn._hard_negatives(ce, (gt_labels == 0)[None], torch.tensor([3 * num_pos]))
    assert int(mask.sum()) == 3 * num_pos and not mask[(gt_labels > 0)[None]].any()
    assert ce[mask].min() >= ce[~mask & ~(gt_labels > 0)[None]].max()


def test_an_image_without_objects_teaches_its_hardest_negatives():
    coder = BoxCoder(default_boxes(SSDLITE))
    b = coder.num_boxes
    plabel = torch.randn(1, 5, b, generator=torch.Generator().manual_seed(0), requires_grad=True)
    ploc = torch.zeros(1, 4, b)
    gt = coder.match(*pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]))
    assert MultiBoxLoss(coder)(ploc, plabel, *gt)["total"].item() == 0.0  # the paper's rule: nothing learned
    out = MultiBoxLoss(coder, empty_negatives=30)(ploc, plabel, *gt)
    ce = torch.nn.functional.cross_entropy(plabel.detach(), torch.zeros(1, b, dtype=torch.long), reduction="none")
    hardest = ce[0].topk(30).values
    # normalised as an image with 30 / 3 = 10 positives would be
    torch.testing.assert_close(out["cls"], hardest.sum() / 10)
    assert out["loc"].item() == 0.0
    out["total"].backward()
    assert (plabel.grad[0].abs().sum(0) > 0).sum() == 30  # exactly the 30 hardest boxes are pushed


def test_ignored_boxes_are_never_negatives():
    coder = BoxCoder(default_boxes(SSDLITE))
    b = coder.num_boxes
    gt_cxcywh, labels = coder.match_one(torch.tensor([[0.1, 0.1, 0.3, 0.3]]), torch.tensor([1]))
    ignored = torch.zeros(b, dtype=torch.bool)
    ignored[-500:] = True  # say, a crowd in the corner
    labels = labels.masked_fill(ignored & (labels == 0), -1)
    plabel = torch.zeros(1, 5, b)
    plabel[0, 1:, ignored] = 20.0  # the ignored boxes look like objects: the hardest "negatives" if counted
    plabel.requires_grad_(True)
    out = MultiBoxLoss(coder)(torch.zeros(1, 4, b), plabel, gt_cxcywh[None], labels[None])
    out["total"].backward()
    assert plabel.grad[0][:, ignored].abs().sum() == 0
