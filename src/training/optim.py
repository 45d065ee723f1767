"""Optimizer and learning-rate schedule of the SSD recipe (NVIDIA's SSD300 v1.1)."""
import bisect
from dataclasses import dataclass

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Weight decay on conv weights only: not on BatchNorm parameters and biases (all 1-D);
    ``decay_all`` puts it on every parameter (the original repository's choice)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and not decay_all else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass(frozen=True)
class BatchRecipe:
    """The learning rate (for 32 images a step; :func:`scaled_lr` scales it) and the warm-up
    iterations of one global batch size."""
    lr: float
    warmup: int


# NVIDIA's SSD300 v1.1 example scripts (examples/SSD300_*.sh): global batches of 32 to 512 warm up
# for 300 iterations at 2.6e-3 per 32 images; 1024 (SSD300_A100_FP16_{4,8}GPU.sh) for 1200 at 2.7e-3
NVIDIA_BATCH_RECIPES = {512: BatchRecipe(2.6e-3, 300), 1024: BatchRecipe(2.7e-3, 1200)}


def batch_recipe(global_batch: int) -> BatchRecipe:
    """NVIDIA's lr and warm-up for ``global_batch`` images a step: its 512 setting up to 512, its
    1024 setting from 1024 on (the largest it published), linear in the global batch between."""
    (low, a), (high, b) = sorted(NVIDIA_BATCH_RECIPES.items())
    t = min(1.0, max(0.0, (global_batch - low) / (high - low)))
    return BatchRecipe(lr=a.lr + t * (b.lr - a.lr), warmup=round(a.warmup + t * (b.warmup - a.warmup)))


def scaled_lr(base_lr: float, batch_size: int, world_size: int) -> float:
    """The linear scaling rule of the original and NVIDIA's: ``base_lr`` is for 32 images a step."""
    return base_lr * world_size * batch_size / 32


def warmup_multistep(optimizer, iters_per_epoch: int, warmup_iters: int, milestones: list[int], gamma=0.1):
    """Per-iteration schedule: linear warm-up over ``warmup_iters``, then ``gamma`` at the start
    of each epoch in ``milestones`` (epochs counted from 0: 43 means after 43 whole epochs)."""
    milestones = sorted(milestones)

    def factor(it: int) -> float:
        warm = min(1.0, (it + 1) / warmup_iters) if warmup_iters > 0 else 1.0
        return warm * gamma ** bisect.bisect_right(milestones, it // iters_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
