"""One training epoch: the loop train.py runs, and the step it repeats."""
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from src.models.matching import pad_targets
from src.utils.device import autocast, to_input
from src.utils.distributed import all_reduce_sum, is_main_process
from src.utils.errors import DatasetError, NonFiniteLossError


def _check_finite(loss, step, image_ids):
    # checked one step late, so the GPU is never waited for on the step that produced it
    if loss is not None and not math.isfinite(loss.item()):
        raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at iteration {step}, "
                                 f"images {image_ids}: stopping")


@dataclass
class Step:
    """What each training step needs besides the model and the loss; these travel together.

    :param optimizer: updated every step
    :param lr_scheduler: stepped every iteration (warm-up, then drops at epochs)
    :param scaler: a ``GradScaler`` for float16 AMP on CUDA, else None
    :param amp: autocast (float16 on CUDA, bfloat16 on the CPU)
    :param channels_last: NHWC inputs (the model is in that layout too)
    :param max_bad_share: share of unreadable images tolerated in an epoch
    """
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    amp: bool = False
    channels_last: bool = False
    max_bad_share: float = 1.0
    log_every: int = 20


@dataclass
class EpochTotals:
    """This rank's running totals of an epoch: what a mid-epoch checkpoint keeps (as a dict) so that
    the epoch's averages come out as if it never stopped.

    :param sums: summed losses of the batches so far, ``[total, loc, cls]``
    :param batches: batches trained; ``bad_images``: unreadable images met; ``resized``: images of
        another size than annotated
    :param complete: False when a signal stopped the epoch part-way
    """
    sums: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    batches: int = 0
    bad_images: int = 0
    resized: int = 0
    complete: bool = True
    images_per_s: float = 0.0


@dataclass
class EpochStats:
    """An epoch's figures over every rank: mean losses per batch, images skipped or rescaled."""
    loss: float
    loc: float
    cls: float
    bad_images: int
    resized: int
    images_per_s: float


def train_step(model, criterion, images, targets, step: Step) -> dict:
    """Match, forward, loss, backward and optimizer step for one batch; returns the losses.

    The default-box matching runs batched on the training device.
    """
    gt_boxes, gt_labels = criterion.coder.match(*pad_targets(targets, step.device))
    with autocast(step.device, step.amp):
        ploc, plabel = model(to_input(images, step.device, step.channels_last))
    losses = criterion(ploc, plabel, gt_boxes, gt_labels)
    step.optimizer.zero_grad(set_to_none=True)
    if step.scaler is not None:
        step.scaler.scale(losses["total"]).backward()
        step.scaler.step(step.optimizer)  # skips the step on fp16 overflow, by design
        step.scaler.update()
    else:
        losses["total"].backward()
        step.optimizer.step()
    return losses


def _check_bad_share(bad: int, seen: int, max_share: float, final: bool):
    # early in an epoch a few bad files are no verdict: judge against at least 200 images
    if bad and bad > max_share * (seen if final else max(seen, 200)):
        raise DatasetError(f"{bad} of the {seen} images read this epoch could not be decoded (named above), "
                           f"more than {max_share:.0%}: check the image files (--max-bad-images sets the share)")


def train_one_epoch(model, criterion, loader, step: Step, *, totals: EpochTotals | None = None, should_stop=None,
                    writer=None, desc="") -> EpochTotals:
    """Train over ``loader`` once, or until ``should_stop(iteration)`` says so after a step.

    :param totals: the running totals of an epoch resumed mid-way (``loader`` then yields
        only its remaining batches), as returned here; None for a new epoch
    :return: this rank's running totals; :func:`epoch_summary` turns them into averages over
        the ranks. An epoch with more than ``step.max_bad_share`` unreadable images raises
        :class:`DatasetError`.
    """
    model.train()
    totals = totals or EpochTotals()
    sums = torch.tensor(totals.sums, device=step.device)
    batches, bad, resized = totals.batches, totals.bad_images, totals.resized
    previous = (None, None, None)  # (loss, iteration, image ids) of the last step, checked late
    start, seen, complete = time.perf_counter(), 0, True
    bar = tqdm(loader, desc=desc, disable=not is_main_process(), dynamic_ncols=True, leave=True,
               initial=batches, total=batches + len(loader))
    for images, targets in bar:
        iteration = step.lr_scheduler.last_epoch  # iterations done so far
        _check_finite(*previous)
        losses = train_step(model, criterion, images, targets, step)
        step.lr_scheduler.step()

        parts = torch.stack([losses["total"], losses["loc"], losses["cls"]]).detach()
        sums += parts
        batches += 1
        bad += sum(1 for t in targets if t.get("bad"))
        resized += sum(1 for t in targets if t.get("resized"))
        _check_bad_share(bad, batches * len(images), step.max_bad_share, final=False)
        previous = (parts[0], iteration, [t["image_id"] for t in targets])
        seen += len(images)
        if iteration % step.log_every == 0:
            _log_step(bar, writer, parts, step.optimizer, iteration, seen / (time.perf_counter() - start))
        if should_stop is not None and should_stop(iteration):
            complete = False
            break
    bar.close()
    _check_finite(*previous)
    if complete:
        _check_bad_share(bad, batches * loader.batch_size, step.max_bad_share, final=True)
    return EpochTotals(sums.tolist(), batches, bad, resized, complete,
                       images_per_s=seen / max(1e-9, time.perf_counter() - start))


def epoch_summary(totals: EpochTotals) -> EpochStats:
    """Losses averaged over the epoch's batches and the ranks; bad and resized images summed over the ranks."""
    t = torch.tensor([*totals.sums, totals.batches, totals.bad_images, totals.resized], dtype=torch.float64)
    t = all_reduce_sum(t)
    n = max(1.0, t[3].item())
    return EpochStats(loss=t[0].item() / n, loc=t[1].item() / n, cls=t[2].item() / n, bad_images=int(t[4].item()),
                      resized=int(t[5].item()), images_per_s=totals.images_per_s)


def _log_step(bar, writer, parts, optimizer, step, rate):
    total, loc, cls = parts.tolist()
    lr = optimizer.param_groups[0]["lr"]
    bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
    if writer is not None:
        writer.add_scalar("train/loss", total, step)
        writer.add_scalar("train/loss_loc", loc, step)
        writer.add_scalar("train/loss_cls", cls, step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/images_per_s", rate, step)
