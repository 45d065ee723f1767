"""One training step of SSDLite on a fixed global batch of 4 synthetic images, in one process
or split over the processes of torchrun. Saves the gradients and updated weights (rank 0).

    python tests/ddp_step.py OUT.pt                          # the whole batch in one process
    torchrun --nproc_per_node=2 tests/ddp_step.py OUT.pt     # two halves, gradients all-reduced

BatchNorm runs in eval mode: per-process batch statistics differ from whole-batch ones by design.
"""
import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from src.models.box_coder import BoxCoder  # noqa: E402
from src.models.default_boxes import default_boxes  # noqa: E402
from src.models.loss import MultiBoxLoss  # noqa: E402
from src.models.specs import SSDLITE  # noqa: E402
from src.models.ssd import build_model  # noqa: E402
from src.training.loop import Step, train_step  # noqa: E402
from src.training.optim import param_groups  # noqa: E402
from src.utils.distributed import cleanup, init_distributed  # noqa: E402

GLOBAL_BATCH = 4


def fixed_batch():
    g = torch.Generator().manual_seed(7)
    images = torch.randn(GLOBAL_BATCH, 3, 300, 300, generator=g)
    targets = []
    for i in range(GLOBAL_BATCH):
        xy = torch.rand(i + 1, 2, generator=g) * 0.5
        targets.append({"boxes": torch.cat([xy, xy + 0.2 + 0.2 * torch.rand(i + 1, 2, generator=g)], 1),
                        "labels": torch.randint(1, 4, (i + 1,), generator=g), "image_id": i})
    return images, targets


def main(out):
    torch.set_num_threads(1)
    rank, _, world, device = init_distributed("cpu")
    torch.manual_seed(0)
    model = build_model("ssdlite", num_classes=4).eval()
    criterion = MultiBoxLoss(BoxCoder(default_boxes(SSDLITE)))
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=0.05, momentum=0.9)
    net = DistributedDataParallel(model) if world > 1 else model
    images, targets = fixed_batch()
    per = GLOBAL_BATCH // world
    mine = slice(rank * per, (rank + 1) * per)
    train_step(net, criterion, images[mine], targets[mine], Step(optimizer, None, device))
    if rank == 0:
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters()},
                    "weights": model.state_dict()}, out)
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
