import torch
from torchvision.ops import box_convert, box_iou

from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.matching import batched_box_iou, pad_targets
from src.models.specs import SSDLITE


def coder():
    return BoxCoder(default_boxes(SSDLITE))


def random_boxes(n, g):
    xy = torch.rand(n, 2, generator=g) * 0.6
    wh = 0.05 + torch.rand(n, 2, generator=g) * 0.35
    return torch.cat([xy, xy + wh], dim=1)


def test_batched_iou_equals_torchvision():
    g = torch.Generator().manual_seed(0)
    a, b = random_boxes(7, g), random_boxes(11, g)
    torch.testing.assert_close(batched_box_iou(a[None], b)[0], box_iou(a, b))


def test_encode_decode_round_trip():
    c = coder()
    g = torch.Generator().manual_seed(1)
    gt = random_boxes(5, g)
    boxes_cxcywh, labels = c.match_one(gt, torch.tensor([1, 2, 3, 4, 1]))
    offsets = c.encode(boxes_cxcywh)
    decoded = c.decode(offsets)  # (B, 4) ltrb
    positive = labels > 0
    assert positive.sum() >= 5
    torch.testing.assert_close(decoded, box_convert(boxes_cxcywh, "cxcywh", "xyxy"), atol=1e-5, rtol=0)
    # every positive default box decodes to one of the ground-truth boxes
    iou_with_gt = box_iou(decoded[positive], gt).max(dim=1).values
    torch.testing.assert_close(iou_with_gt, torch.ones_like(iou_with_gt), atol=1e-4, rtol=0)
    # unmatched boxes encode to zero offsets
    assert offsets[~positive].abs().max() < 1e-5


def test_every_ground_truth_keeps_its_best_default_box():
    c = coder()
    tiny = torch.tensor([[0.50, 0.50, 0.51, 0.51]])  # IoU with any default box far below 0.5
    _, labels = c.match_one(tiny, torch.tensor([3]))
    assert (labels == 3).sum() == 1
    assert labels.argmax() == box_iou(tiny, c.dboxes_ltrb)[0].argmax()


def test_match_batched_equals_single_and_handles_empty():
    c = coder()
    g = torch.Generator().manual_seed(2)
    targets = [{"boxes": random_boxes(3, g), "labels": torch.tensor([1, 2, 3])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
               {"boxes": random_boxes(6, g), "labels": torch.tensor([4, 4, 1, 2, 3, 1])}]
    boxes, labels = c.match(*pad_targets(targets))
    assert boxes.shape == (3, c.num_boxes, 4) and labels.shape == (3, c.num_boxes)
    for i, t in enumerate(targets):
        if len(t["labels"]):
            b, lab = c.match_one(t["boxes"], t["labels"])
        else:
            b, lab = c.dboxes_cxcywh, torch.zeros(c.num_boxes, dtype=torch.long)
        assert torch.equal(labels[i], lab)
        torch.testing.assert_close(boxes[i], b)


def test_match_one_without_ground_truth():
    c = coder()
    boxes, labels = c.match_one(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert labels.eq(0).all() and torch.equal(boxes, c.dboxes_cxcywh)


def test_pad_targets_shapes():
    boxes, labels, crowd = pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert boxes.shape == (1, 1, 4) and labels.tolist() == [[0]] and crowd.shape == (1, 0, 4)


def test_default_boxes_mostly_inside_a_crowd_are_ignored_unless_positive():
    c = coder()
    gt = torch.tensor([[0.05, 0.05, 0.35, 0.35]])
    crowd = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    boxes, labels = c.match(gt[None], torch.tensor([[2]]), crowd[None])
    boxes, labels = boxes[0], labels[0]
    d = c.dboxes_ltrb
    inter = (torch.min(d[:, 2:], crowd[:, 2:]) - torch.max(d[:, :2], crowd[:, :2])).clamp(min=0).prod(1)
    inside = inter > 0.5 * (d[:, 2:] - d[:, :2]).prod(1)
    assert inside.sum() > 10
    assert (labels[inside] == -1).all()  # neither positive nor negative
    assert (labels[~inside] >= 0).all()
    no_crowd = c.match(gt[None], torch.tensor([[2]]))[1][0]
    assert torch.equal(labels.clamp(min=0), no_crowd)  # positives and the rest as without the crowd
    # a crowd over the object does not take its positives away
    over = c.match(gt[None], torch.tensor([[2]]), gt[None])[1][0]
    assert torch.equal(over > 0, no_crowd > 0)


def test_matching_in_chunks_equals_matching_at_once():
    c = coder()
    g = torch.Generator().manual_seed(3)
    targets = [{"boxes": random_boxes(n, g), "labels": torch.randint(1, 5, (n,), generator=g),
                "crowd": random_boxes(k, g)} for n, k in [(5, 1), (0, 0), (40, 2), (1, 0), (12, 3)]]
    padded = pad_targets(targets)
    whole = c.match(*padded)
    one_image_at_a_time = c.match(*padded, chunk_elements=1)
    assert torch.equal(whole[1], one_image_at_a_time[1])
    assert torch.equal(whole[0], one_image_at_a_time[0])
