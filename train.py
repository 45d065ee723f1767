"""Train SSD300-ResNet50 or SSDLite-MobileNetV2 on COCO 2017 or any COCO-format dataset.

    python train.py --model ssdlite --batch-size 32                    # one GPU, or the CPU
    torchrun --nproc_per_node=8 train.py --model ssd --batch-size 32 --amp

Run the same command again after a stop: training continues from <save-folder>/<model>.pth.
"""
import argparse
import contextlib
import os
import sys
from dataclasses import asdict, dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from src.checkpoints.published import local_path
from src.checkpoints.schema import (
    TrainingCheckpoint,
    checkpoint_state,
    has_reduced_tail,
    load_matching_weights,
    load_model_weights,
)
from src.cli import (
    ArgumentParser,
    default_device,
    device_name,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_cli,
    sgd_momentum,
    training_batch_size,
    zoom_factor,
)
from src.data.augment import COLOUR_DISTORTIONS
from src.data.categories import match_by_name
from src.data.crop import IOU_CROP_OPTIONS
from src.data.dataset import (
    collate,
    dataset_from,
    eval_loader,
    loader_workers,
    read_rgb,
    read_source,
    worker_init,
)
from src.data.formats import DEFAULT_SPLITS, FORMATS, dataset_folders, detect_format, merge, source
from src.data.transforms import model_transforms, train_transforms
from src.evaluation.analysis import RECALL_THRESHOLDS
from src.evaluation.evaluate import evaluate
from src.inference.detections import Detections
from src.models.box_coder import BoxCoder
from src.models.loss import MultiBoxLoss
from src.models.postprocess import Postprocessor
from src.models.specs import MODEL_NAMES, get_spec
from src.models.ssd import BACKBONE_VERSIONS, backbone_versions, build_model, imagenet_weights
from src.training.loop import EpochStats, EpochTotals, Step, epoch_summary, train_one_epoch
from src.training.optim import batch_recipe, param_groups, scaled_lr, warmup_multistep
from src.training.resume import (
    ResumableSampler,
    begin_epoch,
    capture,
    resume_point,
    rng_states,
    seed_everything,
)
from src.training.stop import GracefulStop
from src.utils.distributed import broadcast_buffers, cleanup, get_world_size, init_distributed, is_main_process
from src.utils.errors import CheckpointError, DatasetError, ImageReadError, NonFiniteLossError, UserError
from src.utils.outputs import FolderLock, OutputGuard, folder_kept_only_if_used, identity

EMPTY_NEGATIVES = 30  # hard negatives of an image without objects: those of an image with 10 positives
CROP = "nvidia"  # NVIDIA's and the original's crop search: what the ablation chose (docs/results.md)
COLOUR = "paper"  # the colour distortion: what the ablation chose (docs/results.md)


class TrainArgumentParser(ArgumentParser):
    """train.py's flags, with the checks of flags that only go together."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if parsed.detach_first_map and parsed.model != "ssdlite":
            self.error("--detach-first-map applies to --model ssdlite only")
        if parsed.backbone_weights and parsed.backbone_weights not in backbone_versions(parsed.model):
            self.error(f"--backbone-weights {parsed.backbone_weights}: {parsed.model}'s backbone has "
                       f"{', '.join(backbone_versions(parsed.model))}")
        if parsed.channel_shuffle and parsed.colour != "paper":
            self.error("--channel-shuffle is a step of --colour paper")
        return parsed


def get_args_parser():
    p = TrainArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-path", nargs="+", default=["/coco"], metavar="ROOT",
                   help="the dataset: COCO (annotations/, train2017/, val2017/), VOC (Annotations/, JPEGImages/, "
                        "ImageSets/Main/) or YOLO (data.yaml); several roots train on all their train splits and "
                        "validate on the first's val split (VOC2007 + VOC2012 trainval, VOC2007 test)")
    p.add_argument("--data-format", choices=["auto", *FORMATS], default="auto", help="the layout (auto: detected)")
    p.add_argument("--train-split", default=None, help="the training split (default: train; VOC: trainval)")
    p.add_argument("--val-split", default=None, help="the validation split (default: val; VOC: test)")
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
    p.add_argument("--lr", type=learning_rate, default="auto",
                   help="for 32 images a step; scaled by the global batch. auto: NVIDIA's, 2.6e-3 up to a global "
                        "batch of 512, 2.7e-3 from 1024 (linear between)")
    p.add_argument("--momentum", type=sgd_momentum, default=0.9, help="SGD momentum, in [0, 1)")
    p.add_argument("--weight-decay", type=non_negative_float, default=5e-4, help="on conv weights, not on BN or biases")
    p.add_argument("--warmup", type=warmup_length, default="auto",
                   help="iterations of linear warm-up; auto: NVIDIA's for the global batch (300 up to 512 images "
                        "a step, 1200 from 1024, linear between), shortened in proportion for runs of fewer than "
                        "6000 iterations (a short run on a small set is not spent warming up: 5%% of it at 300)")
    p.add_argument("--backbone-weights", choices=BACKBONE_VERSIONS, default=None,
                   help="torchvision's ImageNet weights of the backbone (default: IMAGENET1K_V2 for ssd and ssd512, "
                        "NVIDIA's since 2022; IMAGENET1K_V1 for ssdlite, the original's, and ssdlite320-mnv3; "
                        "IMAGENET1K_FEATURES for ssd300-vgg16, torchvision's)")
    p.add_argument("--zoom-out", type=zoom_factor, default=1.0,
                   help="largest zoom-out (expand) of the augmentation, e.g. 4 (the paper's, for small objects, "
                        "with a longer schedule); 1 turns it off")
    p.add_argument("--crop", choices=["paper", "nvidia"], default=CROP,
                   help="crop search: 'paper' tries 50 crops per draw, one box must overlap enough (torchvision's); "
                        "'nvidia' tries one, every box must (NVIDIA's and the original's; gentler)")
    p.add_argument("--colour", choices=COLOUR_DISTORTIONS, default=COLOUR,
                   help="colour distortion: 'paper' each of brightness, contrast, saturation, hue with chance 0.5 "
                        "(the paper's code, torchvision's); 'nvidia' saturation, contrast and brightness on every "
                        "image (NVIDIA's DALI pipeline)")
    p.add_argument("--photometric", type=fraction, default=1.0,
                   help="strength of the colour distortion: 1 its full ranges, 0 off")
    p.add_argument("--empty-negatives", type=non_negative_int, default=EMPTY_NEGATIVES,
                   help="hardest negatives an image without objects contributes to the loss (0: none, as the paper)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                   help="Nesterov momentum (the original's); --no-nesterov for plain momentum")
    variants = p.add_argument_group("recipe variants", "what the ablation study compares (docs/results.md); the "
                                                        "defaults are the recipe")
    variants.add_argument("--crop-ious", type=fraction, nargs="+", default=list(IOU_CROP_OPTIONS), metavar="IOU",
                          help="minimum IoUs the crop draws from, each equally likely: 1 keeps the whole image, 0 is "
                               "a patch with no IoU constraint (default: the paper's seven)")
    variants.add_argument("--channel-shuffle", type=fraction, default=0.0, metavar="P",
                          help="probability of reordering the colour channels (torchvision's last colour step)")
    variants.add_argument("--decay-all", action="store_true",
                          help="weight decay on BatchNorm parameters and biases too (the original's)")
    variants.add_argument("--skip-empty-images", action="store_true",
                          help="leave images without annotations out of training (NVIDIA's and the original's)")
    variants.add_argument("--detach-first-map", action="store_true",
                          help="SSDLite: no gradient from the first feature map into the backbone (the original's "
                               "forward hook)")
    p.add_argument("--nms-threshold", type=fraction, default=None,
                   help="of the evaluation (default: the model's own: 0.5; torchvision's 0.45 and 0.55)")
    p.add_argument("--num-workers", type=non_negative_int, default=4)
    p.add_argument("--device", type=device_name, default=default_device())
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-pretrained-backbone", action="store_true", help="do not load ImageNet weights")
    p.add_argument("--finetune-from", default=None, metavar="PATH|NAME",
                   help="start from a checkpoint of any form; class heads of another class count start afresh")
    p.add_argument("--eval-every", type=non_negative_int, default=1, help="COCO mAP every N epochs; 0 turns it off")
    p.add_argument("--dist-timeout", type=positive_float, default=600, help="seconds before a stalled rank fails")
    p.add_argument("--max-bad-images", type=fraction, default=0.05,
                   help="share of missing or unreadable images tolerated (skipped with a warning); above it, an error")
    # torch.distributed.launch passes --local-rank (or --local_rank); torchrun sets LOCAL_RANK
    p.add_argument("--local-rank", "--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(args):
    rank, _, world_size, device = init_distributed(args.device, args.dist_timeout)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(args.seed + rank)  # the model's initial weights, the first shuffle
    with prepare_outputs(args) if is_main_process() else contextlib.nullcontext():
        train_set, val_set = build_datasets(args, world_size)
        ckpt = TrainingCheckpoint.read(checkpoint_path(args), args.model,
                                       (train_set.category_ids, train_set.category_names),
                                       train_set.annotation_file, args.batch_size * world_size) \
            if os.path.exists(checkpoint_path(args)) else None
        model = create_model(args, train_set.num_classes, device, ckpt.model if ckpt else None)
        sampler, loader = build_loader(args, train_set, rank, world_size, device)
        step = build_step(args, model, len(loader), world_size, device)
        log = restore(ckpt, model, step, checkpoint_path(args)) if ckpt else TrainingLog()
        point = resume_point(ckpt, rank, world_size)
        del ckpt
        trained = distribute(model, args, world_size, device)  # what the steps run: DDP and/or compiled
        criterion = MultiBoxLoss(BoxCoder.for_spec(model.spec, device), empty_negatives=args.empty_negatives)
        postprocess = Postprocessor.for_spec(model.spec, device, nms_threshold=args.nms_threshold)
        writer = start_logging(args, train_set, val_set, world_size, step, point, len(loader))
        stopper = GracefulStop().install()
        for epoch in range(point.epoch, args.epochs):
            totals = begin_epoch(point, epoch, sampler, args.batch_size, args.seed, rank)
            try:
                totals = train_one_epoch(trained, criterion, loader, step, totals=totals, writer=writer,
                                         should_stop=stopper.should_stop, desc=f"epoch {epoch + 1}/{args.epochs}")
            except NonFiniteLossError as e:
                raise NonFiniteLossError(f"{e}; {what_is_saved(checkpoint_path(args))}") from None
            if not totals.complete:  # stopped by a signal mid-epoch: save where, and leave
                save_stop(args, model, step, train_set, log, epoch, totals)
                break
            stats, evaluation, results = epoch_summary(totals), None, None
            if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
                broadcast_buffers(model)  # evaluate, on every rank, the model rank 0 saves
                evaluation, results = evaluate(model, build_val_loader(args, val_set, rank, world_size, device),
                                               postprocess, device, category_ids=val_set.label_ids, amp=args.amp,
                                               channels_last=args.channels_last)
            improved = log.add(epoch + 1, stats, evaluation and evaluation.stats)
            if is_main_process():
                report_epoch(writer, epoch, stats, evaluation, val_set, results)
                save_checkpoint(checkpoint_path(args), args, model, step, train_set, log, epoch + 1)
                if improved:
                    save_checkpoint(best_path(args), args, model, step, train_set, log, epoch + 1)
            if stopper.agreed():
                if is_main_process():
                    print(f"Stopped after epoch {epoch + 1}; run the same command to continue.")
                break
        stopper.uninstall()
        finish_logging(writer, args, log, world_size, trained=point.epoch < args.epochs)
    cleanup()


def log_dir(args) -> str:
    return args.log_path or os.path.join("runs", args.model)


def checkpoint_path(args) -> str:
    return os.path.join(args.save_folder, f"{args.model}.pth")


def best_path(args) -> str:
    return os.path.join(args.save_folder, f"{args.model}_best.pth")


@contextlib.contextmanager
def prepare_outputs(args):
    """Before any work: the save and log folders exist, are writable and are not dataset folders;
    no other run holds the save folder (locked until the end of the ``with``); nothing there
    would be overwritten that is not this run's. A run that fails before writing anything
    removes the folders it made (an offline first run leaves no empty folder or lock behind)."""
    for root in args.data_path:
        if not os.path.exists(root):
            raise DatasetError(f"dataset {root} not found (set --data-path)")
    guard = OutputGuard(folder for root in args.data_path for folder in dataset_folders(root))
    try:
        guard.folder(args.save_folder, "--save-folder")
        guard.folder(log_dir(args), "--log-path")
        guard.claim()
        with FolderLock(args.save_folder) as lock:
            if lock.taken_over:
                print(f"note: {args.save_folder} was held by a run that ended without releasing it "
                      f"({lock.taken_over}); taken over")
            check_save_folder(args)
            yield
    except BaseException:
        guard.remove_empty_created()
        raise


def check_save_folder(args):
    """Neither checkpoint this run writes may be one it reads or one another run left."""
    last, best = checkpoint_path(args), best_path(args)
    source = identity(local_path(args.finetune_from)) if args.finetune_from else None
    if source is not None and source in (identity(last), identity(best)):
        raise UserError(f"--finetune-from {args.finetune_from} is where this run saves its checkpoints: "
                        "copy it elsewhere or choose another --save-folder")
    if os.path.lexists(best) and not os.path.lexists(last):
        raise CheckpointError(f"{best} is left from an earlier run and {last} is absent, so this run would "
                              "replace it: move it away or choose another --save-folder")


def what_is_saved(path: str) -> str:
    """After a failure: the checkpoint a run can go on from, if there is one."""
    if not os.path.exists(path):
        return "no checkpoint was saved yet: lower --lr (or --warmup longer) and start again"
    epoch = torch.load(path, map_location="cpu", weights_only=True).get("epoch", "?")
    return (f"{path} (after epoch {epoch}) is kept, not overwritten: run the same command to go on from it, "
            "perhaps with a lower --lr")


def schedule_warning(args) -> str | None:
    """A learning-rate drop (--multistep) that this run's --epochs never reaches, said."""
    beyond = [m for m in args.multistep if m >= args.epochs]
    if not beyond:
        return None
    never = "it never drops" if len(beyond) == len(args.multistep) else "not all of them happen"
    return (f"warning: the learning rate drops after epoch(s) {', '.join(map(str, beyond))} (--multistep) lie "
            f"beyond this {args.epochs}-epoch run: {never}; set --multistep to drop within the run")


def build_datasets(args, world_size: int):
    """The checked train and val sets (their warnings printed once)."""
    fmt = detect_format(args.data_path[0]) if args.data_format == "auto" else args.data_format
    train_split, val_split = args.train_split or DEFAULT_SPLITS[fmt][0], args.val_split or DEFAULT_SPLITS[fmt][1]
    train_source = merge([source(root, train_split, fmt, "--train-split") for root in args.data_path], read_source)
    spec = get_spec(args.model)
    augment = train_transforms(spec.fig_size, zoom_out=args.zoom_out, photometric=args.photometric, crop=args.crop,
                               min_ious=args.crop_ious, channel_shuffle=args.channel_shuffle, colour=args.colour,
                               mean=spec.preprocessing.mean, std=spec.preprocessing.std)
    train = dataset_from(train_source, augment, max_missing=args.max_bad_images)
    if args.skip_empty_images and train.drop_empty() and is_main_process():
        print(f"{len(train)} training images with annotations kept (--skip-empty-images)")
    val = dataset_from(source(args.data_path[0], val_split, fmt, "--val-split"), model_transforms(spec),
                       max_missing=args.max_bad_images)
    if val_split == train_split and is_main_process():
        print(f"warning: validating on the training split '{train_split}': its AP says how well the model fits "
              "the images it learns from, not how it does on others", file=sys.stderr)
    # val's id of each trained label, matched by name (refused when val scores a category train lacks)
    val.label_ids, notes = match_by_name((train.category_ids, train.category_names), val.categories)
    if train.report.boxes == 0:
        r = train.report
        raise DatasetError(f"no annotation of {train.annotation_file} is a usable box ({r.degenerate} degenerate, "
                           f"{r.crowd} crowd or difficult): nothing to learn")
    if len(train) < args.batch_size * world_size:
        raise DatasetError(f"{len(train)} training images are fewer than one global batch "
                           f"({args.batch_size} x {world_size}): lower --batch-size")
    if val.report.boxes == 0 and args.eval_every:
        args.eval_every = 0  # COCO's twelve -1 every epoch would look like a score
        val.warnings.append(f"{val.annotation_file} has no ground-truth box: nothing to score, so no evaluation")
    if is_main_process():
        for line in train.warnings + val.warnings:
            print(f"warning: {line}", file=sys.stderr)
        for line in notes:
            print(line, file=sys.stderr)
    return train, val


def create_model(args, num_classes: int, device, resumed: dict | None = None):
    """The model on ``device``: ImageNet backbone weights, or fine-tuned from ``--finetune-from``,
    or (``resumed``: the state dict of the run's checkpoint) left for the checkpoint to fill. The
    weights the run started from decide what torchvision's builders decide from them: SSDLite320's
    tail (read from the resumed or fine-tuned state dict) and VGG-16's frozen first stage."""
    from_checkpoint = resumed is not None
    finetune = args.finetune_from and not from_checkpoint
    pretrained = not args.no_pretrained_backbone and not from_checkpoint and not finetune
    source = resumed if from_checkpoint else checkpoint_state(args.finetune_from) if finetune else None
    if pretrained:
        fetch_backbone_weights(args.model, args.backbone_weights)
        if is_main_process():
            print(f"Backbone: torchvision's {imagenet_weights(args.model, args.backbone_weights)}")
    model = build_model(args.model, num_classes, pretrained_backbone=pretrained, detach_first_map=args.detach_first_map,
                        backbone_weights=args.backbone_weights,
                        reduced_tail=has_reduced_tail(source) if source is not None else None,
                        from_trained=bool(args.finetune_from) or not args.no_pretrained_backbone)
    if finetune:
        skipped = load_matching_weights(model, args.finetune_from, source)
        if is_main_process():
            print(f"Fine-tuning from {args.finetune_from}; re-initialised (other shape or absent): "
                  f"{', '.join(skipped) if skipped else 'nothing'}")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format)


def fetch_backbone_weights(model_name: str, version: str | None):
    """torchvision's ImageNet weights of the backbone, downloaded once into the torch hub cache."""
    try:
        with folder_kept_only_if_used(os.path.join(torch.hub.get_dir(), "checkpoints")):
            imagenet_weights(model_name, version).get_state_dict(progress=is_main_process())
    except (OSError, RuntimeError) as e:  # no network (a URLError is an OSError), or a corrupt download
        torch_home = os.environ.get("TORCH_HOME", "~/.cache/torch")
        raise UserError(f"could not get the ImageNet weights of the backbone ({e}); train with "
                        f"--no-pretrained-backbone, or place the weight file in {torch_home}/hub/checkpoints "
                        "(TORCH_HOME sets that folder)") from None


def distribute(model, args, world_size: int, device):
    """The module the training steps run: ``model`` in DDP over the processes, compiled if asked."""
    trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world_size > 1 else model
    return torch.compile(trained) if args.compile else trained


def build_loader(args, train_set, rank: int, world_size: int, device):
    sampler = ResumableSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed,
                               drop_last=True)
    workers = loader_workers(args.num_workers, len(sampler) // args.batch_size)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate, pin_memory=device.type == "cuda", drop_last=True,
                        persistent_workers=workers > 0, worker_init_fn=worker_init)
    return sampler, loader


def build_val_loader(args, val_set, rank: int, world_size: int, device):
    """This rank's shard of the val set, in order (built for each evaluation: no idle workers between)."""
    return eval_loader(val_set, args.batch_size, args.num_workers, rank, world_size, pin_memory=device.type == "cuda")


def warmup_length(text: str):
    """argparse type of --warmup: "auto" or a number of iterations."""
    return text if text == "auto" else non_negative_int(text)


def learning_rate(text: str):
    """argparse type of --lr: "auto" or a positive number."""
    return text if text == "auto" else positive_float(text)


FULL_WARMUP_RUN = 6000  # iterations: runs shorter than this warm up for a share of NVIDIA's warm-up


def warmup_iterations(args, iters_per_epoch: int, global_batch: int) -> int:
    """--warmup, or for "auto" NVIDIA's for ``global_batch``, shortened in proportion for a run of
    fewer than :data:`FULL_WARMUP_RUN` iterations: at most 5% of a run at NVIDIA's 300 (a
    200-iteration run warms up for 10), 20% at its 1200. COCO at NVIDIA's global batches runs
    7,475 (1024) to 240,240 (32) iterations in 65 epochs: its warm-ups are kept whole."""
    if args.warmup != "auto":
        return args.warmup
    run = iters_per_epoch * args.epochs
    return max(1, round(batch_recipe(global_batch).warmup * min(1.0, run / FULL_WARMUP_RUN)))


def lr_per_32(args, global_batch: int) -> float:
    """--lr, or for "auto" NVIDIA's for ``global_batch``: the rate for 32 images a step."""
    return batch_recipe(global_batch).lr if args.lr == "auto" else args.lr


def build_step(args, model, iters_per_epoch: int, world_size: int, device) -> Step:
    """SGD (the lr scaled to the global batch), warm-up and drops, the AMP scaler: one training step."""
    lr = scaled_lr(lr_per_32(args, args.batch_size * world_size), args.batch_size, world_size)
    optimizer = torch.optim.SGD(param_groups(model, args.weight_decay, args.decay_all), lr=lr, momentum=args.momentum,
                                nesterov=args.nesterov and args.momentum > 0)
    warmup = warmup_iterations(args, iters_per_epoch, args.batch_size * world_size)
    return Step(optimizer, warmup_multistep(optimizer, iters_per_epoch, warmup, args.multistep), device,
                scaler=torch.amp.GradScaler("cuda") if args.amp and device.type == "cuda" else None,
                amp=args.amp, channels_last=args.channels_last, max_bad_share=args.max_bad_images)


@dataclass
class TrainingLog:
    """Every finished epoch's losses and COCO stats, and the best AP so far."""
    best_map: float = 0.0
    history: list = field(default_factory=list)

    def add(self, epoch: int, stats: EpochStats, coco_stats: dict | None) -> bool:
        """Record an epoch; True when its AP is the best so far."""
        self.history.append({"epoch": epoch, **asdict(stats), **(coco_stats or {})})
        if coco_stats is None or coco_stats["AP"] < self.best_map:
            return False
        self.best_map = coco_stats["AP"]
        return True


def restore(ckpt: TrainingCheckpoint, model, step: Step, path: str) -> TrainingLog:
    """A resumed run's weights and optimizer, schedule and scaler states; its log so far."""
    load_model_weights(model, ckpt.model, path)
    step.optimizer.load_state_dict(ckpt.optimizer)
    step.lr_scheduler.load_state_dict(ckpt.lr_scheduler)
    if step.scaler is not None and ckpt.scaler:
        step.scaler.load_state_dict(ckpt.scaler)
    return TrainingLog(ckpt.best_map, ckpt.history)


def save_checkpoint(path, args, model, step: Step, data, log: TrainingLog, epoch: int, progress=None, rng=None):
    """``epoch``: whole epochs done; ``progress``: every rank's totals of the epoch in flight
    when stopped mid-way, with ``rng`` every rank's random states at that point."""
    TrainingCheckpoint(
        model=model.state_dict(), optimizer=step.optimizer.state_dict(), lr_scheduler=step.lr_scheduler.state_dict(),
        scaler=step.scaler.state_dict() if step.scaler else None, epoch=epoch, iteration=step.lr_scheduler.last_epoch,
        model_name=args.model, num_classes=data.num_classes, category_ids=data.category_ids,
        category_names=data.category_names, best_map=log.best_map, history=log.history, progress=progress,
        rng=rng or [rng_states()], args=vars(args), global_batch=args.batch_size * get_world_size()).save(path)


def save_stop(args, model, step: Step, data, log: TrainingLog, epoch: int, totals: EpochTotals):
    """A mid-epoch checkpoint, with every rank's place in the epoch (a collective call)."""
    point = capture(totals)
    if is_main_process():
        save_checkpoint(checkpoint_path(args), args, model, step, data, log, epoch, **point)
        print(f"\nStopped at iteration {step.lr_scheduler.last_epoch} ({totals.batches} of epoch {epoch + 1}); "
              f"saved {checkpoint_path(args)}. Run the same command to continue.")


def start_logging(args, train_set, val_set, world_size, step: Step, point,
                  iters_per_epoch: int) -> SummaryWriter | None:
    """The run's first lines, and its TensorBoard writer (on the main process only)."""
    if not is_main_process():
        return None
    if point.epoch >= args.epochs:
        print(f"{checkpoint_path(args)} is complete: {point.epoch} of {args.epochs} epochs done, nothing to train "
              "(raise --epochs to train longer)")
    elif point.epoch or point.progress:
        done = f", {point.progress.batches} iterations into epoch {point.epoch + 1}" if point.progress else ""
        print(f"Resuming from {checkpoint_path(args)}: {point.epoch} epochs done{done}")
    if schedule_warning(args) and point.epoch < args.epochs:
        print(schedule_warning(args), file=sys.stderr)
    batch = args.batch_size * world_size
    print(f"{args.model}: {train_set.num_classes - 1} classes, {len(train_set)} train / {len(val_set)} val "
          f"images, {world_size} process(es) on {step.device.type}, lr {step.lr_scheduler.base_lrs[0]:g} "
          f"({lr_per_32(args, batch):g} for 32 images a step, {batch} a step) after "
          f"{warmup_iterations(args, iters_per_epoch, batch)} iterations of warm-up, TensorBoard in {log_dir(args)}")
    return SummaryWriter(log_dir(args), purge_step=step.lr_scheduler.last_epoch or None)


def finish_logging(writer, args, log: TrainingLog, world_size: int, trained: bool):
    """When this run trained the last epoch, its settings beside its final mAP, for TensorBoard's
    HPARAMS tab."""
    if writer is None:
        return
    last = log.history[-1] if log.history else {}
    if trained and last.get("epoch") == args.epochs and "AP" in last:
        hparams = {"model": args.model, "batch_size": args.batch_size, "world_size": world_size,
                   "lr": lr_per_32(args, args.batch_size * world_size),
                   "epochs": args.epochs, "warmup": str(args.warmup), "weight_decay": args.weight_decay,
                   "amp": args.amp, "zoom_out": args.zoom_out, "backbone_weights": "none" if args.no_pretrained_backbone
                   else imagenet_weights(args.model, args.backbone_weights).name,
                   "finetune_from": str(args.finetune_from)}
        writer.add_hparams(hparams, {"hparam/AP": last["AP"], "hparam/AP50": last["AP50"],
                                     "hparam/best_AP": log.best_map}, run_name="hparams")
    writer.close()


def report_epoch(writer, epoch, stats, evaluation, val_set, results):
    line = (f"epoch {epoch + 1}: loss {stats.loss:.4f} (loc {stats.loc:.4f}, cls {stats.cls:.4f}), "
            f"{stats.images_per_s:.1f} images/s")
    if stats.bad_images:
        line += f", {stats.bad_images} bad images skipped"
    if stats.resized:
        line += (f", {stats.resized} images of another size than annotated (even turned by EXIF): boxes scaled "
                 "to them")
    writer.add_scalar("epoch/bad_images", stats.bad_images, epoch + 1)
    if evaluation is not None:
        line += f", AP {evaluation.stats['AP']:.4f}, AP50 {evaluation.stats['AP50']:.4f}"
        for name, value in evaluation.stats.items():
            writer.add_scalar(f"coco/{name}", value, epoch + 1)
        log_per_class(writer, evaluation, val_set, epoch)
        log_val_images(writer, val_set, results, epoch)
    writer.add_scalar("epoch/loss", stats.loss, epoch + 1)
    print(line, flush=True)


def log_per_class(writer, evaluation, val_set, epoch):
    """Each category's AP (a scalar per category; none for one without ground truth in val) and
    its precision-recall curve at IoU 0.5, so that a run's weak categories show while it trains."""
    names = dict(zip(val_set.category_ids, val_set.category_names))
    recall = RECALL_THRESHOLDS
    for k, cat in enumerate(evaluation.category_ids):
        ap = evaluation.class_ap(k)
        if ap is None:
            continue
        writer.add_scalar(f"coco_AP_per_category/{names[cat]}", ap, epoch + 1)
        precision = evaluation.precision[0, :, k, 0, -1] if evaluation.precision is not None else recall * 0
        zeros = [0] * len(recall)
        writer.add_pr_curve_raw(f"pr_IoU0.5/{names[cat]}", zeros, zeros, zeros, zeros, precision[::-1].tolist(),
                                recall[::-1].tolist(), epoch + 1, num_thresholds=len(recall))


def log_val_images(writer, val_set, results, epoch, count=4, min_score=0.3):
    for image_id in val_set.ids[:count]:
        try:
            image = read_rgb(val_set.image_path(image_id))
        except ImageReadError:  # named by the evaluation's warnings already
            continue
        mine = [r for r in results if r["image_id"] == image_id and r["score"] >= min_score]
        dets = Detections.from_coco_results(mine, val_set.category_ids, val_set.category_names)
        labels = [f"{name} {score:.2f}" for name, score in zip(dets.names, dets.scores.tolist())]
        writer.add_image_with_boxes(f"val/{image_id}", image, dets.boxes, epoch, labels=labels or None)


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
