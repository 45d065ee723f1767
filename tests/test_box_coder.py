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


def test_the_threshold_is_strict_and_the_first_ground_truth_keeps_its_forced_match():
    """The paper: positive when IoU > 0.5 (exactly 0.5 is not); every ground truth, the first
    included, keeps its best default box however low its IoU."""
    dboxes = torch.tensor([[0.25, 0.125, 0.5, 0.25],  # ltrb (0, 0, 0.5, 0.25): the first box itself
                           [0.125, 0.125, 0.25, 0.25],  # ltrb (0, 0, 0.25, 0.25): IoU 0.5 exactly
                           [0.8, 0.8, 0.4, 0.4]])  # ltrb (0.6, 0.6, 1, 1): IoU 0.09 with the second box
    coder = BoxCoder(dboxes)
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.25], [0.7, 0.7, 0.8, 0.8]])
    boxes, labels = coder.match_one(gt, torch.tensor([3, 4]))
    assert labels.tolist() == [3, 0, 4]
    torch.testing.assert_close(boxes[2], torch.tensor([0.75, 0.75, 0.1, 0.1]))  # matched to the second box
    only_small = coder.match_one(gt[1:], torch.tensor([4]))[1]
    assert only_small.tolist() == [0, 0, 4]  # the first (and only) ground truth keeps its forced match


def test_pad_targets_types_and_device():
    boxes, labels, crowd = pad_targets([{"boxes": torch.tensor([[0.1, 0.1, 0.2, 0.2]]), "labels": torch.tensor([2])}],
                                       device="cpu")
    assert (boxes.dtype, labels.dtype, crowd.dtype) == (torch.float32, torch.int64, torch.float32)
    assert labels.tolist() == [[2]] and crowd.shape == (1, 0, 4)


def test_chunks_cover_every_image_when_there_are_more_images_than_a_chunk_holds():
    c = coder()
    g = torch.Generator().manual_seed(5)
    targets = [{"boxes": random_boxes(3, g), "labels": torch.randint(1, 5, (3,), generator=g)} for _ in range(7)]
    whole = c.match(*pad_targets(targets)[:2])
    for chunk_elements in (3 * c.num_boxes, 2 * 3 * c.num_boxes):  # one image, then two, a chunk
        chunked = c.match(*pad_targets(targets)[:2], chunk_elements=chunk_elements)
        assert torch.equal(chunked[1], whole[1]) and torch.equal(chunked[0], whole[0])


def test_a_forced_match_overrides_a_better_overlap_of_another_ground_truth():
    """Default box A is the best box of ground truth 0 (IoU 0.06) though it overlaps ground truth 1
    more (0.6): A goes to 0; ground truth 1 keeps its own best box, B."""
    dboxes = torch.tensor([[0.2, 0.2, 0.4, 0.4], [0.3, 0.2, 0.4, 0.4]])  # A: ltrb (0, 0, .4, .4), B: (.1, 0, .5, .4)
    gt = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.1, 0.0, 0.5, 0.4]])
    boxes, labels = BoxCoder(dboxes).match_one(gt, torch.tensor([5, 6]))
    assert labels.tolist() == [5, 6]
    torch.testing.assert_close(boxes[0], torch.tensor([0.05, 0.05, 0.1, 0.1]))  # ground truth 0, cxcywh
