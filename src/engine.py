"""One training epoch and one prediction pass: the loops that train.py and test_dataset.py run."""
import math
import time

import torch
from tqdm import tqdm

from .box_coder import pad_targets
from .coco_eval import coco_evaluate, to_coco_results
from .dataset import eval_loader
from .distributed import all_reduce_mean, broadcast_object, gather_lists, is_main_process
from .errors import NonFiniteLossError


def autocast(device: torch.device, amp: bool):
    """float16 autocast on CUDA, bfloat16 on the CPU; a no-op without ``amp``."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def _check_finite(loss, step, image_ids):
    # checked one step late, so the GPU is never waited for on the step that produced it
    if loss is not None and not math.isfinite(loss.item()):
        raise NonFiniteLossError(f"non-finite loss ({loss.item()}) at iteration {step}, "
                                 f"images {image_ids}: stopping; the last checkpoint is kept")


def train_step(model, criterion, optimizer, scaler, images, targets, device, amp=False) -> dict:
    """Match, forward, loss, backward and optimizer step for one batch; returns the losses.

    The default-box matching runs batched on ``device``.
    """
    gt_boxes, gt_labels = criterion.coder.match(*pad_targets(targets, device))
    with autocast(device, amp):
        ploc, plabel = model(images.to(device, non_blocking=True))
    losses = criterion(ploc, plabel, gt_boxes, gt_labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(losses["total"]).backward()
        scaler.step(optimizer)  # skips the step on fp16 overflow, by design
        scaler.update()
    else:
        losses["total"].backward()
        optimizer.step()
    return losses


def train_one_epoch(model, criterion, optimizer, lr_scheduler, scaler, loader, device, epoch, *,
                    amp=False, writer=None, log_every=20, desc=""):
    """Train over ``loader`` once.

    :return: ``{"loss", "loc", "cls", "images_per_s"}`` averaged over the epoch and the ranks
    """
    model.train()
    sums = torch.zeros(3, device=device)
    previous = (None, None, None)  # (loss, step, image ids) of the last step, checked late
    start, seen = time.perf_counter(), 0
    bar = tqdm(loader, desc=desc, disable=not is_main_process(), dynamic_ncols=True, leave=True)
    for images, targets in bar:
        step = lr_scheduler.last_epoch  # iterations done so far
        _check_finite(*previous)
        losses = train_step(model, criterion, optimizer, scaler, images, targets, device, amp)
        lr_scheduler.step()

        parts = torch.stack([losses["total"], losses["loc"], losses["cls"]]).detach()
        sums += parts
        previous = (parts[0], step, [t["image_id"] for t in targets])
        seen += len(images)
        if step % log_every == 0:
            _log_step(bar, writer, parts, optimizer, step, seen / (time.perf_counter() - start))
    _check_finite(*previous)
    n = max(1, len(loader))
    means = all_reduce_mean(sums / n).tolist()
    rate = seen / (time.perf_counter() - start)
    return {"loss": means[0], "loc": means[1], "cls": means[2], "images_per_s": rate}


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


@torch.no_grad()
def predict(model, postprocess, loader, device, *, amp=False, desc="eval"):
    """Detections for every image of ``loader`` (this rank's shard).

    :return: ``(detections, image_ids, orig_sizes)``: per image ``(boxes (k, 4) normalised
        ltrb, labels (k,), scores (k,))`` on the CPU, its id and its (h, w)
    """
    model.eval()
    detections, image_ids, sizes = [], [], []
    for images, targets in tqdm(loader, desc=desc, disable=not is_main_process(), dynamic_ncols=True):
        with autocast(device, amp):
            ploc, plabel = model(images.to(device, non_blocking=True))
        for boxes, labels, scores in postprocess(ploc, plabel):
            detections.append((boxes.cpu(), labels.cpu(), scores.cpu()))
        image_ids += [t["image_id"] for t in targets]
        sizes += [t["orig_size"] for t in targets]
    return detections, image_ids, sizes


def evaluate(model, postprocess, dataset, device, category_ids, *, batch_size=32, num_workers=4, amp=False,
             rank=0, world_size=1):
    """COCO mAP of ``model`` on ``dataset`` (every image, those without annotations included).

    Each rank predicts its own shard; the detections are gathered and the main process runs
    COCOeval and prints the 12-line summary.
    :param category_ids: dataset category id of each label 1..K
    :return: ``(stats, results)``: the 12 COCO stats (on every rank) and all detections in
        COCO results format (pixels, ltwh)
    """
    loader = eval_loader(dataset, batch_size, num_workers, rank, world_size, pin_memory=device.type == "cuda")
    detections, image_ids, sizes = predict(model, postprocess, loader, device, amp=amp)
    results = gather_lists(to_coco_results(detections, image_ids, sizes, category_ids))
    stats = coco_evaluate(dataset.coco, results) if is_main_process() else None
    return broadcast_object(stats), results
