"""Train SSD300-ResNet50 or SSDLite-MobileNetV2 on COCO 2017 or any COCO-format dataset.

    python train.py --model ssdlite --batch-size 32                    # one GPU, or the CPU
    torchrun --nproc_per_node=8 train.py --model ssd --batch-size 32 --amp

Run the same command again after a stop: training continues from <save-folder>/<model>.pth.
"""
import argparse
import os
import random
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from src.box_coder import BoxCoder
from src.checkpoint import load_matching_weights, load_model_weights, model_state_dict, read_checkpoint, save_atomic
from src.cli import (ArgumentParser, default_device, device_name, fraction, non_negative_float, non_negative_int,
                     positive_float, positive_int, run_cli, sgd_momentum, training_batch_size, zoom_factor)
from src.dataset import CocoDetection, ResumableSampler, coco_paths, collate, read_rgb, worker_init
from src.default_boxes import default_boxes
from src.distributed import broadcast_buffers, cleanup, gather_lists, init_distributed
from src.engine import epoch_summary, evaluate, train_one_epoch
from src.errors import CheckpointError, DatasetError, ImageReadError, UserError
from src.outputs import FolderLock, OutputGuard, identity
from src.loss import MultiBoxLoss
from src.model import build_model
from src.optim import param_groups, scaled_lr, warmup_multistep
from src.postprocess import Postprocessor
from src.specs import MODEL_NAMES, get_spec
from src.stop import GracefulStop
from src.transforms import train_transforms, val_transforms
from src.weights import local_path, resolve_checkpoint

EMPTY_NEGATIVES = 30  # hard negatives of an image without objects: those of an image with 10 positives


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-path", default="/coco", help="root with annotations/, train2017/, val2017/")
    p.add_argument("--save-folder", default="trained_models", help="where <model>.pth is written")
    p.add_argument("--log-path", default=None, help="TensorBoard folder (default: runs/<model>)")
    p.add_argument("--model", choices=MODEL_NAMES, default="ssd")
    p.add_argument("--epochs", type=positive_int, default=65)
    p.add_argument("--batch-size", type=training_batch_size, default=32,
                   help="images per process and step (at least 2: BatchNorm on the 1x1 feature map needs two)")
    p.add_argument("--multistep", type=non_negative_int, nargs="*", default=[43, 54],
                   help="epochs at which lr drops 10x")
    p.add_argument("--amp", action="store_true", help="mixed precision: float16 on CUDA, bfloat16 on the CPU")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster with --amp)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--lr", type=positive_float, default=2.6e-3,
                   help="for 32 images a step; scaled by the global batch")
    p.add_argument("--momentum", type=sgd_momentum, default=0.9, help="SGD momentum, in [0, 1)")
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="on conv weights, not on BN or biases")
    p.add_argument("--warmup", type=non_negative_int, default=300, help="iterations of linear warm-up")
    p.add_argument("--zoom-out", type=zoom_factor, default=1.0,
                   help="largest zoom-out (expand) of the augmentation, e.g. 4 (the paper's, for small objects, "
                        "with a longer schedule); 1 turns it off")
    p.add_argument("--photometric", type=fraction, default=1.0,
                   help="strength of the colour distortion: 1 the paper's ranges, 0 off")
    p.add_argument("--empty-negatives", type=non_negative_int, default=EMPTY_NEGATIVES,
                   help="hardest negatives an image without objects contributes to the loss (0: none, as the paper)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="Nesterov momentum (the original's); --no-nesterov for plain momentum")
    p.add_argument("--nms-threshold", type=fraction, default=0.5)
    p.add_argument("--num-workers", type=non_negative_int, default=4)
    p.add_argument("--device", type=device_name, default=default_device())
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-pretrained-backbone", action="store_true", help="do not load ImageNet weights")
    p.add_argument("--finetune-from", default=None, metavar="PATH|original|nvidia",
                   help="start from a checkpoint of any form; class heads of another class count start afresh")
    p.add_argument("--eval-every", type=non_negative_int, default=1, help="COCO mAP every N epochs; 0 turns it off")
    p.add_argument("--dist-timeout", type=positive_float, default=600, help="seconds before a stalled rank fails")
    p.add_argument("--max-bad-images", type=fraction, default=0.05,
                   help="share of missing or unreadable images tolerated (skipped with a warning); above it, an error")
    # torch.distributed.launch passes --local-rank (or --local_rank); torchrun sets LOCAL_RANK
    p.add_argument("--local-rank", "--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """This process's random states, as tensors and plain types (loadable with weights_only)."""
    _, keys, pos, *_ = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.copy()), "numpy_pos": int(pos),
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict):
    torch.set_rng_state(states["torch"])
    np.random.set_state(("MT19937", states["numpy"].numpy(), states["numpy_pos"], 0, 0.0))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def log_dir(args) -> str:
    return args.log_path or os.path.join("runs", args.model)


def prepare_outputs(args) -> FolderLock:
    """Before any work: the save and log folders exist, are writable and are not dataset folders;
    no other run holds the save folder; nothing there would be overwritten that is not this run's."""
    if not os.path.isdir(args.data_path):
        raise DatasetError(f"dataset folder {args.data_path} not found (set --data-path)")
    reads = [args.data_path, *coco_paths(args.data_path, "train"), *coco_paths(args.data_path, "val"),
             os.path.dirname(coco_paths(args.data_path, "train")[0])]
    guard = OutputGuard(reads)
    guard.folder(args.save_folder, "--save-folder")
    guard.folder(log_dir(args), "--log-path")
    lock = FolderLock(args.save_folder).acquire()
    if lock.taken_over:
        print(f"note: {args.save_folder} was held by a run that ended without releasing it ({lock.taken_over}); "
              "taken over")
    last, best = checkpoint_path(args), best_path(args)
    if args.finetune_from and identity(local_path(args.finetune_from)) in (identity(last), identity(best)):
        raise UserError(f"--finetune-from {args.finetune_from} is where this run saves its checkpoints: "
                        "copy it elsewhere or choose another --save-folder")
    if os.path.lexists(best) and not os.path.lexists(last):
        raise CheckpointError(f"{best} is left from an earlier run and {last} is absent, so this run would "
                              "replace it: move it away or choose another --save-folder")
    return lock


def build_datasets(args):
    train_ann, train_images = coco_paths(args.data_path, "train")
    val_ann, val_images = coco_paths(args.data_path, "val")
    augment = train_transforms(zoom_out=args.zoom_out, photometric=args.photometric)
    train = CocoDetection(train_images, train_ann, augment, max_missing=args.max_bad_images)
    val = CocoDetection(val_images, val_ann, val_transforms(), max_missing=args.max_bad_images)
    if train.category_ids != val.category_ids:
        raise DatasetError(f"train and val annotations of {args.data_path} list different categories")
    if train.report.boxes == 0:
        r = train.report
        raise DatasetError(f"no annotation of {train_ann} is a usable box ({r.degenerate} degenerate, "
                           f"{r.crowd} crowd): nothing to learn")
    return train, val


def create_model(args, num_classes: int, resuming: bool):
    finetune = args.finetune_from and not resuming
    # a resumed or fine-tuned run gets all its weights from a checkpoint
    pretrained = not args.no_pretrained_backbone and not resuming and not finetune
    try:
        model = build_model(args.model, num_classes, pretrained_backbone=pretrained)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        torch_home = os.environ.get("TORCH_HOME", "~/.cache/torch")
        raise UserError(f"could not get the ImageNet weights of the backbone ({e}); train with "
                        f"--no-pretrained-backbone, or place the weight file in {torch_home}/hub/checkpoints "
                        "(TORCH_HOME sets that folder)") from None
    if finetune:
        path = resolve_checkpoint(args.finetune_from)
        skipped = load_matching_weights(model, model_state_dict(read_checkpoint(path), path), path)
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"Fine-tuning from {path}; re-initialised (other shape or absent): "
                  f"{', '.join(skipped) if skipped else 'nothing'}")
    return model


def checkpoint_path(args) -> str:
    return os.path.join(args.save_folder, f"{args.model}.pth")


def best_path(args) -> str:
    return os.path.join(args.save_folder, f"{args.model}_best.pth")


def read_resume_checkpoint(args, dataset):
    """Our own checkpoint of this run, checked against the model and the dataset, or None."""
    path = checkpoint_path(args)
    if not os.path.exists(path):
        return None
    ckpt = read_checkpoint(path)
    if "model_name" not in ckpt or "optimizer" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint of this project: move it away "
                              "or choose another --save-folder")
    if ckpt["model_name"] != args.model:
        raise CheckpointError(f"{path} is a {ckpt['model_name']} checkpoint, not {args.model}: "
                              f"use --model {ckpt['model_name']} or another --save-folder")
    if list(ckpt["category_ids"]) != dataset.category_ids:
        raise CheckpointError(f"{path} was trained on {ckpt['num_classes'] - 1} other categories than the "
                              f"{dataset.num_classes - 1} of {args.data_path}: choose another --save-folder")
    return ckpt


@dataclass
class Run:
    """What one training run holds; ``model`` may be the DDP wrapper of ``model_without_ddp``."""
    args: argparse.Namespace
    rank: int
    world_size: int
    device: torch.device
    train_set: CocoDetection
    val_set: CocoDetection
    model: torch.nn.Module
    model_without_ddp: torch.nn.Module
    criterion: MultiBoxLoss
    postprocess: Postprocessor
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    sampler: ResumableSampler
    loader: DataLoader
    writer: SummaryWriter | None = None
    best_map: float = 0.0
    history: list = field(default_factory=list)


def build_run(args, rank, world_size, device, train_set, val_set, resuming) -> Run:
    model = create_model(args, train_set.num_classes, resuming).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    coder = BoxCoder(default_boxes(get_spec(args.model)).to(device))
    lr = scaled_lr(args.lr, args.batch_size, world_size)
    optimizer = torch.optim.SGD(param_groups(model, args.weight_decay), lr=lr, momentum=args.momentum,
                                nesterov=args.nesterov and args.momentum > 0)
    sampler = ResumableSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed,
                               drop_last=True)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=args.num_workers > 0, worker_init_fn=worker_init)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world_size > 1 else model
    if args.compile:
        ddp = torch.compile(ddp)
    return Run(args, rank, world_size, device, train_set, val_set, ddp, model,
               MultiBoxLoss(coder, empty_negatives=args.empty_negatives),
               Postprocessor(coder, nms_threshold=args.nms_threshold), optimizer,
               warmup_multistep(optimizer, len(loader), args.warmup, args.multistep),
               torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None,
               sampler, loader)


def restore(run: Run, ckpt: dict, path: str):
    load_model_weights(run.model_without_ddp, ckpt["model"], path)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.best_map, run.history = ckpt["best_map"], ckpt["history"]


def save_checkpoint(run: Run, path: str, epoch: int, progress=None, rng=None):
    """``epoch``: whole epochs done; ``progress``: every rank's totals of the epoch in flight
    when stopped mid-way, with ``rng`` every rank's random states at that point."""
    model = run.model_without_ddp
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise UserError(f"weights became non-finite ({name}): not saving over {path}")
    args, data = run.args, run.train_set
    save_atomic({
        "model": model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(), "scaler": run.scaler.state_dict() if run.scaler else None,
        "epoch": epoch, "iteration": run.lr_scheduler.last_epoch, "progress": progress,
        "rng": rng or [rng_states()], "model_name": args.model, "num_classes": data.num_classes,
        "category_ids": data.category_ids, "category_names": data.category_names,
        "best_map": run.best_map, "history": run.history, "args": vars(args),
    }, path)


def log_val_images(writer, val_set, results, epoch, count=4, min_score=0.3):
    for image_id in val_set.ids[:count]:
        try:
            image = read_rgb(val_set.image_path(image_id))
        except ImageReadError:  # named by the evaluation's warnings already
            continue
        dets = [r for r in results if r["image_id"] == image_id and r["score"] >= min_score]
        boxes = torch.tensor([r["bbox"] for r in dets], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        names = val_set.category_names
        labels = [f"{names[val_set.category_ids.index(r['category_id'])]} {r['score']:.2f}" for r in dets]
        writer.add_image_with_boxes(f"val/{image_id}", image, boxes, epoch, labels=labels or None)


def main(args):
    rank, _, world_size, device = init_distributed(args.device, args.dist_timeout)
    lock = prepare_outputs(args) if rank == 0 else None
    try:
        train(args, rank, world_size, device)
    finally:
        if lock is not None:
            lock.release()
        cleanup()


def train(args, rank, world_size, device):
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(args.seed + rank)
    train_set, val_set = build_datasets(args)
    if rank == 0:
        for line in train_set.warnings + val_set.warnings:
            print(f"warning: {line}", file=sys.stderr)
    if len(train_set) < args.batch_size * world_size:
        raise DatasetError(f"{len(train_set)} training images are fewer than one global batch "
                           f"({args.batch_size} x {world_size}): lower --batch-size")
    ckpt = read_resume_checkpoint(args, train_set)
    run = build_run(args, rank, world_size, device, train_set, val_set, resuming=ckpt is not None)
    start_epoch, progress, rng = 0, None, None
    if ckpt is not None:
        restore(run, ckpt, checkpoint_path(args))
        start_epoch, progress, rng = ckpt["epoch"], ckpt.get("progress"), ckpt["rng"]
        if rank == 0:
            done = f", {progress[0]['batches']} iterations into epoch {start_epoch + 1}" if progress else ""
            print(f"Resuming from {checkpoint_path(args)}: {start_epoch} epochs done{done}")
    del ckpt
    if rank == 0:
        run.writer = SummaryWriter(log_dir(args), purge_step=run.lr_scheduler.last_epoch or None)
        print(f"{args.model}: {train_set.num_classes - 1} classes, {len(train_set)} train / {len(val_set)} val "
              f"images, {world_size} process(es) on {device.type}, lr {run.optimizer.param_groups[0]['lr']:g}, "
              f"TensorBoard in {log_dir(args)}")
    stopper = GracefulStop().install()
    for epoch in range(start_epoch, args.epochs):
        mine = rank if progress and len(progress) == world_size else 0
        if not train_epoch(run, epoch, stopper, progress[mine] if progress else None, rng[mine] if progress else None):
            break
        progress = None
        if epoch + 1 == args.epochs and rank == 0 and "AP" in run.history[-1]:
            log_hparams(run)
        if stopper.agreed():
            if rank == 0:
                print(f"Stopped after epoch {epoch + 1}; run the same command to continue.")
            break
    stopper.uninstall()
    if run.writer is not None:
        run.writer.close()


def train_epoch(run: Run, epoch: int, stopper, progress=None, rng=None) -> bool:
    """Train (the rest of) one epoch, evaluate, save. False when a signal stopped it mid-way."""
    args = run.args
    run.sampler.set_epoch(epoch)
    run.sampler.skip = progress["batches"] * args.batch_size if progress else 0
    if rng is not None:
        set_rng_states(rng)  # mid-epoch resume: continue the same random stream
    else:
        seed_everything(args.seed + 1000 * epoch + run.rank)  # exact resume at any epoch boundary
    totals = train_one_epoch(run.model, run.criterion, run.optimizer, run.lr_scheduler, run.scaler, run.loader,
                             run.device, totals=progress, should_stop=stopper.should_stop, amp=args.amp,
                             channels_last=args.channels_last, writer=run.writer,
                             desc=f"epoch {epoch + 1}/{args.epochs}", max_bad_share=args.max_bad_images)
    if not totals["complete"]:
        progress, rng = gather_lists([totals]), gather_lists([rng_states()])
        if run.rank == 0:
            save_checkpoint(run, checkpoint_path(args), epoch, progress, rng)
            print(f"\nStopped at iteration {run.lr_scheduler.last_epoch} ({totals['batches']} of epoch {epoch + 1}); "
                  f"saved {checkpoint_path(args)}. Run the same command to continue.")
        return False
    stats = epoch_summary(totals)
    coco_stats, results = None, None
    if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
        broadcast_buffers(run.model_without_ddp)  # evaluate the model rank 0 saves, on every rank
        coco_stats, results = evaluate(run.model_without_ddp, run.postprocess, run.val_set, run.device,
                                       run.val_set.category_ids, batch_size=args.batch_size,
                                       num_workers=args.num_workers, amp=args.amp,
                                       channels_last=args.channels_last, rank=run.rank, world_size=run.world_size)
    run.history.append({"epoch": epoch + 1, **stats, **(coco_stats or {})})
    improved = coco_stats is not None and coco_stats["AP"] >= run.best_map
    run.best_map = max(run.best_map, coco_stats["AP"]) if coco_stats else run.best_map
    if run.rank == 0:
        report_epoch(run.writer, epoch, stats, coco_stats)
        if coco_stats is not None:
            log_val_images(run.writer, run.val_set, results, epoch)
        save_checkpoint(run, checkpoint_path(args), epoch + 1)
        if improved:
            save_checkpoint(run, best_path(args), epoch + 1)
    return True


def log_hparams(run: Run):
    """The run's settings beside its final mAP, for TensorBoard's HPARAMS tab."""
    args, last = run.args, run.history[-1]
    hparams = {"model": args.model, "batch_size": args.batch_size, "world_size": run.world_size, "lr": args.lr,
               "epochs": args.epochs, "warmup": args.warmup, "weight_decay": args.weight_decay, "amp": args.amp,
               "zoom_out": args.zoom_out, "pretrained_backbone": not args.no_pretrained_backbone,
               "finetune_from": str(args.finetune_from)}
    run.writer.add_hparams(hparams, {"hparam/AP": last["AP"], "hparam/AP50": last["AP50"],
                                     "hparam/best_AP": run.best_map}, run_name="hparams")


def report_epoch(writer, epoch, stats, coco_stats):
    line = (f"epoch {epoch + 1}: loss {stats['loss']:.4f} (loc {stats['loc']:.4f}, cls {stats['cls']:.4f}), "
            f"{stats['images_per_s']:.1f} images/s")
    if stats["bad_images"]:
        line += f", {stats['bad_images']} bad images skipped"
    if stats["resized"]:
        line += (f", {stats['resized']} images of another size than annotated (even turned by EXIF): boxes scaled "
                 "to them")
    writer.add_scalar("epoch/bad_images", stats["bad_images"], epoch + 1)
    if coco_stats is not None:
        line += f", AP {coco_stats['AP']:.4f}, AP50 {coco_stats['AP50']:.4f}"
        for name, value in coco_stats.items():
            writer.add_scalar(f"coco/{name}", value, epoch + 1)
    writer.add_scalar("epoch/loss", stats["loss"], epoch + 1)
    print(line, flush=True)


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    if arguments.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(arguments.local_rank))
    try:
        run_cli(main, arguments)
    except torch.OutOfMemoryError:
        print(f"train.py: error: out of GPU memory at --batch-size {arguments.batch_size}: lower --batch-size"
              f"{'' if arguments.amp else ' or add --amp'}", file=sys.stderr)
        sys.exit(1)
