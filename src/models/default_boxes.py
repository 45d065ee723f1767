"""Default (prior) boxes of the SSD paper, section 2.2."""
import itertools
import math

import torch

from src.models.specs import SSDSpec


def level_box_sizes(spec: SSDSpec, level: int) -> list[tuple[float, float]]:
    """(w, h) of the boxes at one feature level, normalised by the figure size."""
    s_k = spec.scales[level] / spec.fig_size
    s_prime = math.sqrt(spec.scales[level] * spec.scales[level + 1]) / spec.fig_size
    sizes = [(s_k, s_k), (s_prime, s_prime)]
    for ratio in spec.aspect_ratios[level]:
        w, h = s_k * math.sqrt(ratio), s_k / math.sqrt(ratio)
        sizes += [(w, h), (h, w)]
    return sizes


def default_boxes(spec: SSDSpec) -> torch.Tensor:
    """All default boxes of a model, as normalised (cx, cy, w, h) clamped to [0, 1] (the centres
    only where ``spec.clamp_centres``: with a step that does not divide the input, as SSD300's 32
    for 300 pixels, the last centre lies past the edge, and torchvision keeps it there).

    Order: level, then box size, then row, then column. This is the order in which
    the model flattens its head outputs (``(N, A*K, H, W) -> (N, K, A*H*W)``).

    :return: (B, 4) float32, B = spec.num_boxes (8732 for SSD300, 3000 for SSDLite, 24564 for SSD512,
        3234 for SSDLite320)
    """
    boxes = []
    for level, fmap in enumerate(spec.feature_maps):
        cells_per_side = fmap if spec.steps is None else spec.fig_size / spec.steps[level]
        for w, h in level_box_sizes(spec, level):
            for i, j in itertools.product(range(fmap), repeat=2):
                cx, cy = (j + 0.5) / cells_per_side, (i + 0.5) / cells_per_side
                boxes.append((cx, cy, w, h))
    boxes = torch.tensor(boxes, dtype=torch.float32)
    if spec.clamp_centres:
        return boxes.clamp_(0, 1)
    boxes[:, 2:].clamp_(0, 1)
    return boxes
