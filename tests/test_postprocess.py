import torch
from torchvision.ops import nms

from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.postprocess import NMS_METHODS, Postprocessor, greedy_nms
from src.models.specs import SSDLITE


def make_outputs(n, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    b = SSDLITE.num_boxes
    ploc = 0.5 * torch.randn(n, 4, b, generator=g)
    plabel = torch.randn(n, num_classes, b, generator=g)
    hot = torch.randint(0, b, (n, 40), generator=g)
    cls = torch.randint(1, num_classes, (n, 40), generator=g)
    for i in range(n):
        plabel[i, cls[i], hot[i]] += 8.0
    return ploc, plabel


def test_batched_equals_single():
    post = Postprocessor(BoxCoder(default_boxes(SSDLITE)))
    ploc, plabel = make_outputs(4, 7, seed=0)
    batched = post(ploc, plabel)
    assert len(batched) == 4
    for i in range(4):
        single = post(ploc[i:i + 1], plabel[i:i + 1])[0]
        for a, b in zip(batched[i], single):
            assert torch.equal(a, b)


def test_output_is_sorted_clamped_and_capped():
    post = Postprocessor(BoxCoder(default_boxes(SSDLITE)), max_output=25)
    for boxes, labels, scores in post(*make_outputs(3, 7, seed=1)):
        assert len(scores) == 25
        assert torch.all(scores[:-1] >= scores[1:])
        assert boxes.min() >= 0 and boxes.max() <= 1
        assert labels.min() >= 1 and labels.max() <= 6
        assert scores.min() > 0.05


def test_no_detections_gives_empty_tensors():
    post = Postprocessor(BoxCoder(default_boxes(SSDLITE)))
    b = SSDLITE.num_boxes
    plabel = torch.zeros(2, 5, b)
    plabel[:, 0] = 20.0  # background everywhere
    out = post(torch.zeros(2, 4, b), plabel)
    assert [len(s) for _, _, s in out] == [0, 0]
    assert out[0][0].shape == (0, 4)


def test_greedy_nms_equals_torchvision_nms_per_group():
    g = torch.Generator().manual_seed(3)
    groups, k = 12, 40
    xy = torch.rand(groups, k, 2, generator=g)
    boxes = torch.cat([xy, xy + 0.05 + 0.3 * torch.rand(groups, k, 2, generator=g)], dim=-1)  # (G, k, 4)
    counts = torch.randint(0, k + 1, (groups,), generator=g)
    valid = torch.arange(k)[None] < counts[:, None]  # (G, k), padding at the end
    scores = torch.linspace(1, 0.1, k)  # each group by descending score
    for chunk_pairs in (2**20, 1):  # one chunk, and one group per chunk
        keep = greedy_nms(boxes, valid, 0.45, chunk_pairs=chunk_pairs)
        for i in range(groups):
            expected = nms(boxes[i, :counts[i]], scores[:counts[i]], 0.45).sort().values
            assert keep[i].nonzero().flatten().tolist() == expected.tolist()


def test_every_nms_method_gives_the_same_detections():
    ploc, plabel = make_outputs(3, 7, seed=4)
    coder = BoxCoder(default_boxes(SSDLITE))
    results = {name: Postprocessor(coder, nms=name)(ploc, plabel) for name in NMS_METHODS}
    for name, result in results.items():
        for ours, theirs in zip(result, results["greedy"]):
            for a, b in zip(ours, theirs):
                assert torch.equal(a, b), name


def test_nms_keeps_a_box_overlapping_exactly_at_the_threshold_and_drops_the_last_duplicate():
    """torchvision's rule: drop when IoU > threshold. Boxes by descending score: 0 and 1 overlap at
    IoU 0.5 exactly (both kept), 3 duplicates 2 (dropped: the last rank is judged too)."""
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.25], [0.0, 0.0, 0.25, 0.25], [0.6, 0.6, 1.0, 1.0],
                           [0.6, 0.6, 1.0, 0.99]]])
    keep = greedy_nms(boxes, torch.ones(1, 4, dtype=torch.bool), 0.5)
    assert keep.tolist() == [[True, True, True, False]]
    assert sorted(nms(boxes[0], torch.tensor([0.9, 0.8, 0.7, 0.6]), 0.5).tolist()) == [0, 1, 2]


def test_a_score_at_the_threshold_is_not_a_detection_and_labels_beyond_the_categories_never_appear():
    coder = BoxCoder(torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]))
    plabel = torch.zeros(1, 4, 2)  # 4 classes equally likely on box 0: each 0.25
    plabel[0, 3, 1] = 10.0  # box 1: class 3, surely
    ploc = torch.zeros(1, 4, 2)
    at = Postprocessor(coder, score_threshold=0.25)(ploc, plabel)[0]
    assert at[1].tolist() == [3]  # box 0's scores of exactly 0.25 are not above the threshold
    narrow = Postprocessor(coder, score_threshold=0.2, num_labels=2)(ploc, plabel)[0]
    assert narrow[1].tolist() == [1, 2]  # class 3 is beyond the two categories: never decoded
    assert Postprocessor.for_spec(SSDLITE).coder.num_boxes == 3000  # on the CPU by default
