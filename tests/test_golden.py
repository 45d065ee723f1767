"""A few values worked out by hand from the paper's formulas, written inline: readable checks
beside the opaque .pt comparisons of the conformance kit."""
import math

import torch

from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.loss import MultiBoxLoss
from src.models.specs import SSD300, SSDLITE


def test_first_and_last_default_boxes():
    ssd = default_boxes(SSD300)
    # level 0: a 38x38 map every 8 pixels of 300 (37.5 cells a side), s_k = 21 / 300
    torch.testing.assert_close(ssd[0], torch.tensor([0.5 / 37.5, 0.5 / 37.5, 0.07, 0.07]))
    torch.testing.assert_close(ssd[1], torch.tensor([1.5 / 37.5, 0.5 / 37.5, 0.07, 0.07]))
    s_prime = math.sqrt(21 * 45) / 300  # the second square box, sqrt(s_k s_k+1)
    torch.testing.assert_close(ssd[38 * 38], torch.tensor([0.5 / 37.5, 0.5 / 37.5, s_prime, s_prime]))
    ratio2 = [0.07 * math.sqrt(2), 0.07 / math.sqrt(2)]  # aspect ratio 2: w = s sqrt(a), h = s / sqrt(a)
    torch.testing.assert_close(ssd[2 * 38 * 38], torch.tensor([0.5 / 37.5, 0.5 / 37.5, *ratio2]))
    # the last: the 1x1 map, aspect 1/2 of s_k = 261 / 300, its width clamped to 1
    torch.testing.assert_close(ssd[-1], torch.tensor([0.5, 0.5, 0.87 / math.sqrt(2), 1.0]))
    lite = default_boxes(SSDLITE)
    # a 19x19 map every 16 pixels (18.75 cells a side), s_k = 60 / 300
    torch.testing.assert_close(lite[0], torch.tensor([0.5 / 18.75, 0.5 / 18.75, 0.2, 0.2]))
    assert len(ssd) == 8732 and len(lite) == 3000


def test_one_encode_decode_pair():
    coder = BoxCoder(torch.tensor([[0.5, 0.5, 0.2, 0.2]]))  # cxcywh
    box = torch.tensor([[0.55, 0.45, 0.3, 0.1]])
    expected = torch.tensor([[0.05 / (0.1 * 0.2), -0.05 / (0.1 * 0.2), math.log(1.5) / 0.2, math.log(0.5) / 0.2]])
    torch.testing.assert_close(coder.encode(box), expected)  # (2.5, -2.5, 2.0273, -3.4657)
    torch.testing.assert_close(coder.decode(expected), torch.tensor([[0.40, 0.40, 0.70, 0.50]]))  # ltrb


def test_one_small_loss():
    dboxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.7, 0.2, 0.2, 0.2], [0.2, 0.7, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    coder = BoxCoder(dboxes)
    gt_cxcywh, labels = dboxes[None].clone(), torch.tensor([[1, 0, 0, 0]])  # box 0 matches its own default box
    ploc = torch.zeros(1, 4, 4)
    ploc[0, 0, 0] = 0.5  # smooth L1 of an offset error 0.5: 0.5 * 0.5**2 = 0.125
    plabel = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 1.0, -1.0]]])  # (1, 2 classes, 4 boxes)
    ce = [math.log(2), math.log(1 + math.e ** 2), math.log(1 + math.e), math.log(1 + math.e ** -1)]
    out = MultiBoxLoss(coder)(ploc, plabel, gt_cxcywh, labels)  # 1 positive, 3 negatives all kept
    torch.testing.assert_close(out["loc"], torch.tensor(0.125))
    torch.testing.assert_close(out["cls"], torch.tensor(sum(ce)))
    hardest = MultiBoxLoss(coder, neg_pos_ratio=1)(ploc, plabel, gt_cxcywh, labels)  # only box 1, the hardest
    torch.testing.assert_close(hardest["cls"], torch.tensor(ce[0] + ce[1]))
