"""COCO mAP of a checkpoint on a COCO-format split; optionally its detections as JSON and pictures.

    python test_dataset.py --pretrained-model trained_models/ssd.pth --data-path /coco
    python test_dataset.py --pretrained-model SSD.pth --annotations my.json --images my_images/
    torchrun --nproc_per_node=4 test_dataset.py --pretrained-model nvidia_ssdpyt_amp_200703.pt
"""
import json
import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from src.checkpoints.schema import load_model
from src.cli import (
    ArgumentParser,
    NumpyImages,
    add_detector_args,
    add_tile_args,
    backend_of,
    check_tile_flags,
    checkpoint_from_args,
    fraction,
    input_path_of,
    non_negative_int,
    positive_int,
    pytorch_device,
    run_cli,
    tiled,
)
from src.data.categories import match_by_name
from src.data.dataset import dataset_from, eval_loader
from src.data.formats import DEFAULT_SPLITS, FORMATS, Source, dataset_folders, detect_format, source, splits_of
from src.data.transforms import model_transforms, val_transforms
from src.evaluation.evaluate import eval_batch_size, evaluate, evaluate_images
from src.evaluation.report import build, print_table, report_files, write_report
from src.evaluation.voc_eval import voc_evaluate
from src.inference.detections import Detections
from src.inference.detector import Detector
from src.inference.draw import draw_detections
from src.inference.runtime import ExportedDetector
from src.models.postprocess import Postprocessor
from src.utils.distributed import cleanup, init_distributed, is_main_process
from src.utils.errors import DatasetError, ImageReadError, UserError
from src.utils.outputs import OutputGuard
from src.utils.stopwatch import Stopwatch, process_age


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_args(p, cls_threshold=None)
    p.add_argument("--data-path", "--data_path", default="/coco",
                   help="the dataset: COCO (annotations/, val2017/...), VOC (Annotations/, JPEGImages/, ImageSets/) "
                        "or YOLO (data.yaml)")
    p.add_argument("--data-format", choices=["auto", *FORMATS], default="auto", help="the layout (auto: detected)")
    p.add_argument("--split", default=None, help="which split of --data-path (default: val; VOC: test)")
    p.add_argument("--metric", choices=["coco", "voc07", "voc"], default="coco",
                   help="besides COCO's: voc07, VOC's mAP at IoU 0.5 with 11-point interpolation (the SSD paper's); "
                        "voc, with all points (VOC2010+); difficult objects ignored")
    p.add_argument("--annotations", help="any COCO-format annotation file (with --images)")
    p.add_argument("--images", help="the image folder of --annotations")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per forward pass (default: 32 on a GPU, 2 on a CPU, where it is faster)")
    p.add_argument("--num-workers", type=non_negative_int, default=4)
    p.add_argument("--json", help="write the detections here in COCO results format")
    p.add_argument("--output", help="also draw every image's detections into this folder")
    p.add_argument("--draw-threshold", type=fraction, default=0.3,
                   help="minimum score drawn with --output, and of the report's confusion matrix and gallery")
    p.add_argument("--report", metavar="FOLDER",
                   help="write the evaluation report here: per-category table, PR curves, confusion matrix, error "
                        "breakdown, the worst images, index.html")
    p.add_argument("--gallery", type=non_negative_int, default=12, help="worst images shown in the report")
    p.add_argument("--timings", action="store_true",
                   help="print where the time went: start-up, annotations, checkpoint, reading, forward, decoding, "
                        "COCOeval, report, writing")
    p.add_argument("--max-bad-images", type=fraction, default=0.05,
                   help="share of the listed images that may be missing before it is an error")
    add_tile_args(p)
    return p


def data_source(args) -> tuple[Source, list[str]]:
    """The split to evaluate (from --annotations/--images, or --data-path/--split in any layout),
    and the files and folders it reads."""
    if bool(args.annotations) != bool(args.images):
        raise UserError("--annotations and --images go together")
    if args.annotations:
        return Source(args.images, args.annotations, args.annotations), [args.annotations, args.images]
    if not os.path.exists(args.data_path):
        raise UserError(f"dataset {args.data_path} not found (set --data-path)")
    fmt = detect_format(args.data_path) if args.data_format == "auto" else args.data_format
    every = args.split is None and fmt == "voc" and splits_of(args.data_path, fmt) == ["all"]  # labelImg's
    split = source(args.data_path, "all" if every else args.split or DEFAULT_SPLITS[fmt][1], fmt)
    if every:
        print(f"note: {args.data_path} has no ImageSets/Main/ lists: evaluating every XML of Annotations/ "
              "(split 'all')", file=sys.stderr)
    files = [split.annotations] if isinstance(split.annotations, str) else []
    return split, [*files, split.image_dir, *dataset_folders(args.data_path)]


def print_voc(dataset, results, image_ids, use_07):
    voc = voc_evaluate(dataset.coco, results, image_ids, use_07)
    names = dict(zip(dataset.category_ids, dataset.category_names))
    print(f"VOC mAP at IoU 0.5 ({'11-point, VOC2007' if use_07 else 'all points, VOC2010+'}): {voc['mAP']:.4f}")
    for cat, ap in voc["AP"].items():
        print(f"  {names[cat]:>16s} {'—' if ap is None else f'{ap:.4f}'}")
    return voc


def has_ground_truth(dataset, args) -> bool:
    """Whether there is anything to score. A set without a single ground-truth box would give
    COCO's twelve -1 (or a VOC mAP of 0): refused, unless detections were asked for."""
    if dataset.report.boxes:
        return True
    if args.report or not (args.json or args.output):
        raise DatasetError(f"nothing to score: {dataset.annotation_file} has no ground-truth box (crowd and "
                           "difficult regions are not scored); --json or --output write the detections alone")
    return False


def picture_paths(dataset, folder) -> dict:
    """image id -> its picture in ``folder``, at the image's own relative path (names stay
    unique), always inside ``folder``: a ``..`` step of a file name becomes a folder ``__up__``
    and a leading ``/`` is dropped."""
    return {i: os.path.join(folder, inside(dataset.coco.imgs[i]["file_name"])) for i in dataset.ids}


def inside(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return os.path.join(*["__up__" if p == ".." else p for p in parts])


def render(dataset, results, ids, names, pictures, min_score, rank, world_size) -> list[str]:
    """Draw this rank's share of the images; a file that cannot be read is skipped with a warning."""
    by_image = {}
    for r in results:
        if r["score"] >= min_score:
            by_image.setdefault(r["image_id"], []).append(r)
    written = []
    for image_id in dataset.ids[rank::world_size]:
        try:
            image = dataset.read_image(image_id)[0].permute(1, 2, 0).numpy()[..., ::-1]  # BGR (H, W, 3)
        except ImageReadError as e:
            print(f"warning: not drawn: {e}", file=sys.stderr)
            continue
        detections = Detections.from_coco_results(by_image.get(image_id, []), ids, names)
        out = pictures[image_id]
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if not cv2.imwrite(out, draw_detections(image, detections)):
            raise UserError(f"could not write {out}")
        written.append(out)
    return written


def write(args, evaluation, dataset, results, guard):
    """The evaluation report (on the main process): the table printed, the folder written."""
    evaluated = sorted({r["image_id"] for r in results} | set(dataset.ids))
    report = build(evaluation, dataset, results, evaluated, min_score=args.draw_threshold, gallery=args.gallery)
    print_table(report)

    def read_bgr(image_id):
        try:
            return np.ascontiguousarray(dataset.read_image(image_id)[0].permute(1, 2, 0).numpy()[..., ::-1])
        except ImageReadError:
            return None
    guard.record(write_report(args.report, report, dataset, results, read_bgr))
    print(f"report written to {os.path.join(args.report, 'index.html')}")


@dataclass
class Loaded:
    """The model as the evaluation runs it: a PyTorch model and its decoding, or a detector of
    images (an exported model); the dataset's category id of each label, and the label names."""
    category_ids: list
    category_names: list
    describe: str
    model: object = None
    postprocess: object = None
    detector: object = None


def load_pytorch(args, checkpoint, dataset, device) -> Loaded:
    model, ids, names = load_model(checkpoint, args.model, categories=dataset.categories)
    model.to(device, memory_format=torch.channels_last)  # NHWC convolutions: faster on CPU and with AMP
    dataset.transforms = model_transforms(model.spec)  # the model's input size, normalisation and resize
    postprocess = Postprocessor.for_spec(model.spec, device, score_threshold=args.cls_threshold,
                                         nms_threshold=args.nms_threshold, num_labels=len(ids))
    return Loaded(ids, names, model.spec.name, model=model, postprocess=postprocess)


def load_exported(args, checkpoint, dataset) -> Loaded:
    """An exported model, its categories matched to the dataset's by name."""
    detector = ExportedDetector(checkpoint, backend_of(args), args.cls_threshold, args.nms_threshold, args.threads)
    ids, notes = match_by_name((detector.category_ids, detector.category_names), dataset.categories)
    for line in notes:
        print(line, file=sys.stderr)
    return Loaded(ids, detector.category_names, detector.describe, detector=detector)


def tiled_run(args, run: Loaded, dataset, device) -> Loaded:
    """``run`` as a detector of images on tiles (--tile): each image read at its own size, cut
    into tiles, its detections merged (see src/inference/tiles.py)."""
    detector = run.detector
    if detector is None:
        detector = NumpyImages(Detector(run.model, run.category_ids, run.category_names, device,
                                        cls_threshold=args.cls_threshold, nms_threshold=args.nms_threshold,
                                        amp=args.amp))
    sizes = [dataset.annotated_size(i) for i in dataset.ids]
    detector = tiled(args, detector, [(w, h) for h, w in (s for s in sizes if s)])
    return Loaded(run.category_ids, run.category_names, detector.describe, detector=detector)


def main(args):
    backend = backend_of(args)
    rank, _, world_size, device = init_distributed(pytorch_device(args) if backend == "pytorch" else "cpu")
    if backend != "pytorch" and world_size > 1:
        raise UserError(f"the {backend} backend evaluates in one process: run it without torchrun")
    if args.tile and world_size > 1:
        raise UserError("--tile evaluates in one process: run it without torchrun")
    check_tile_flags(args)
    watch = Stopwatch(device)
    watch.add("start-up", process_age())  # the interpreter and the imports
    checkpoint = checkpoint_from_args(args)
    split, reads = data_source(args)
    guard = OutputGuard([*reads, input_path_of(checkpoint)])
    if args.json:
        guard.file(args.json, "--json")
    if args.output:
        guard.folder(args.output, "--output")
    if args.report:
        guard.folder(args.report, "--report")
    with watch("annotations"):
        dataset = dataset_from(split, val_transforms(), max_missing=args.max_bad_images)
    scored = has_ground_truth(dataset, args)  # before any output is prepared there
    if args.output:
        pictures = picture_paths(dataset, args.output)
        guard.add_inputs(dataset.image_path(i) for i in dataset.ids)
        guard.files(list(pictures.values()), "--output")
    if args.report:
        guard.add_inputs(dataset.image_path(i) for i in dataset.ids)
        guard.files(report_files(args.report, dataset.ids if args.gallery else ()), "--report")
    # matched to the dataset's categories by name; a checkpoint without names (the original's,
    # NVIDIA's) reads its labels as the dataset's, in id order
    with watch("checkpoint"):
        run = load_pytorch(args, checkpoint, dataset, device) if backend == "pytorch" else \
            load_exported(args, checkpoint, dataset)
        if args.tile:
            run = tiled_run(args, run, dataset, device)
    guard.claim()  # checked and loaded: nothing is written before this
    ids, names = run.category_ids, run.category_names
    if is_main_process():
        for line in dataset.warnings:
            print(f"warning: {line}", file=sys.stderr)
        print(f"{checkpoint}: {run.describe}, {len(names)} classes; {len(dataset)} images, {world_size} process(es)")
    if run.model is not None:
        loader = eval_loader(dataset, args.batch_size or eval_batch_size(device), args.num_workers, rank, world_size,
                             pin_memory=device.type == "cuda")
        evaluation, results = evaluate(run.model, loader, run.postprocess, device, category_ids=ids, amp=args.amp,
                                       channels_last=True, watch=watch, score=scored)
    else:
        evaluation, results = evaluate_images(run.detector, dataset, args.batch_size or 1, category_ids=ids,
                                              watch=watch, score=scored)
    if not scored and is_main_process():
        print(f"nothing to score: {dataset.annotation_file} has no ground-truth box; detections only")
    if args.metric != "coco" and scored and is_main_process():
        print_voc(dataset, results, dataset.ids, use_07=args.metric == "voc07")
    if args.report and is_main_process():
        with watch("report"):
            write(args, evaluation, dataset, results, guard)
    with watch("writing"):
        if args.json and is_main_process():
            with open(args.json, "w") as f:
                json.dump(results, f)
            guard.record([args.json])
            print(f"{len(results)} detections written to {args.json}")
        if args.output:
            guard.record(render(dataset, results, ids, names, pictures, args.draw_threshold, rank, world_size))
            if is_main_process():
                print(f"pictures written to {args.output}")
    if args.timings and is_main_process():
        print(f"time: {watch.summary()}")
    cleanup()
    return evaluation.stats if evaluation else None


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
