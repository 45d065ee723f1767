"""COCO mAP of a checkpoint on a COCO-format split; optionally its detections as JSON and pictures.

    python test_dataset.py --pretrained-model trained_models/ssd.pth --data-path /coco
    python test_dataset.py --pretrained-model SSD.pth --annotations my.json --images my_images/
    torchrun --nproc_per_node=4 test_dataset.py --pretrained-model nvidia_ssdpyt_amp_200703.pt
"""
import argparse
import json
import os

import cv2
import torch

from src.cli import add_detector_args, checkpoint_from_args, non_negative_int, output_folder, positive_int, run_cli
from src.dataset import CocoDetection, coco_paths
from src.detector import Detections, load_checkpoint_model
from src.distributed import cleanup, get_rank, init_distributed
from src.draw import draw_detections
from src.engine import eval_batch_size, evaluate
from src.errors import DatasetError, UserError
from src.postprocess import Postprocessor
from src.box_coder import BoxCoder
from src.default_boxes import default_boxes
from src.transforms import val_transforms


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_args(p, cls_threshold=0.05)
    p.add_argument("--data-path", "--data_path", default="/coco", help="root in the original COCO layout")
    p.add_argument("--split", default="val", help="which <split>2017 of --data-path")
    p.add_argument("--annotations", help="any COCO-format annotation file (with --images)")
    p.add_argument("--images", help="the image folder of --annotations")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per forward pass (default: 32 on a GPU, 8 on a CPU, where it is faster)")
    p.add_argument("--num-workers", type=non_negative_int, default=4)
    p.add_argument("--json", help="write the detections here in COCO results format")
    p.add_argument("--output", help="also draw every image's detections into this folder")
    p.add_argument("--draw-threshold", type=float, default=0.3, help="minimum score drawn with --output")
    return p


def dataset_from_args(args) -> CocoDetection:
    if bool(args.annotations) != bool(args.images):
        raise UserError("--annotations and --images go together")
    if args.annotations:
        ann, images = args.annotations, args.images
    else:
        ann, images = coco_paths(args.data_path, args.split)
    if not os.path.isdir(images):
        raise DatasetError(f"image folder {images} not found")
    return CocoDetection(images, ann, val_transforms())


def check_categories(model_ids, dataset, path):
    """The model's categories must overlap the annotations' (COCOeval ignores the others)."""
    if not set(model_ids) & set(dataset.category_ids):
        raise UserError(f"{path} predicts none of the category ids of the annotations "
                        f"({dataset.category_ids[:5]}...): is this checkpoint trained on this dataset?")


def render(dataset, results, ids, names, folder, min_score, rank, world_size):
    """Draw this rank's share of the images, one file per image in ``folder``."""
    by_image = {}
    for r in results:
        if r["score"] >= min_score:
            by_image.setdefault(r["image_id"], []).append(r)
    for image_id in dataset.ids[rank::world_size]:
        path = dataset.image_path(image_id)
        image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        dets = by_image.get(image_id, [])
        boxes = torch.tensor([r["bbox"] for r in dets], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # ltwh -> ltrb
        labels = torch.tensor([ids.index(r["category_id"]) + 1 for r in dets], dtype=torch.long)
        detections = Detections(boxes, labels, torch.tensor([r["score"] for r in dets]),
                                [names[i - 1] for i in labels.tolist()])
        out = os.path.join(folder, os.path.basename(path))
        if not cv2.imwrite(out, draw_detections(image, detections)):
            raise UserError(f"could not write {out}")


def main(args):
    rank, _, world_size, device = init_distributed(args.device)
    path = checkpoint_from_args(args)
    dataset = dataset_from_args(args)
    if args.output:
        output_folder(args.output)
    model, ids, names = load_checkpoint_model(path, args.model)
    check_categories(ids, dataset, path)
    model.to(device, memory_format=torch.channels_last)  # NHWC convolutions: faster on CPU and with AMP
    coder = BoxCoder(default_boxes(model.spec).to(device))
    postprocess = Postprocessor(coder, args.cls_threshold, args.nms_threshold)
    if rank == 0:
        print(f"{path}: {model.spec.name}, {len(names)} classes; {len(dataset)} images, {world_size} process(es)")
    stats, results = evaluate(model, postprocess, dataset, device, ids,
                              batch_size=args.batch_size or eval_batch_size(device),
                              num_workers=args.num_workers, amp=args.amp, channels_last=True,
                              rank=rank, world_size=world_size)
    if args.json and get_rank() == 0:
        with open(args.json, "w") as f:
            json.dump(results, f)
        print(f"{len(results)} detections written to {args.json}")
    if args.output:
        render(dataset, results, ids, names, args.output, args.draw_threshold, rank, world_size)
        if rank == 0:
            print(f"pictures written to {args.output}")
    cleanup()
    return stats


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
