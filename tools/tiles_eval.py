"""Tiled inference measured: small objects in large images, with and without --tile.

Makes (once) a set of large toy images (default 1280x1280) with 20 to 40 objects of 10-30 px and now and
then one of 256-512 px (the toy generator's "small" style), runs a checkpoint on it whole and in tiles
(the code test_dataset.py --tile runs), and prints COCO AP, AP_small, AP_large, the recall at IoU 0.5 of the
small and of the large objects, and the time per image.

    python tools/tiles_eval.py --pretrained-model scales/ssdlite.pth --out tiles/
    python tools/tiles_eval.py --pretrained-model scales/ssdlite.pth --out tiles/ --tiles 300 400 --overlap 0.25

The model must know objects of 10-30 px at its input size, as one trained on the "scales" style does
(docs/results.md says how). Results: docs/results.md, "Small objects in large images".
"""
import json
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.cli import ArgumentParser, NumpyImages, fraction, positive_int, run_cli, tile_overlap  # noqa: E402
from src.data.dataset import dataset_from  # noqa: E402
from src.data.formats import source  # noqa: E402
from src.data.toy_dataset import write_split  # noqa: E402
from src.data.transforms import val_transforms  # noqa: E402
from src.evaluation.evaluate import evaluate_images  # noqa: E402
from src.inference.detections import Detections  # noqa: E402
from src.inference.detector import Detector  # noqa: E402
from src.inference.draw import draw_detections  # noqa: E402
from src.inference.tiles import TiledDetector  # noqa: E402
from src.inference.tracking import iou_matrix  # noqa: E402
from src.utils.errors import UserError  # noqa: E402
from src.utils.outputs import OutputGuard  # noqa: E402

SMALL, LARGE = (0, 32 ** 2), (96 ** 2, 1e10)  # COCO's area ranges


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained-model", required=True, help="a checkpoint of this project")
    p.add_argument("--out", required=True, help="the generated set and results.json go here")
    p.add_argument("--images", type=positive_int, default=20, help="images in the generated set")
    p.add_argument("--size", type=positive_int, default=1280, help="side of the generated images")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--tiles", type=positive_int, nargs="*", default=[300], help="tile sizes to compare")
    p.add_argument("--overlap", type=tile_overlap, default=0.2)
    p.add_argument("--edge", type=float, default=0.025, help="TiledDetector's edge (share of a tile)")
    p.add_argument("--largest", type=float, default=0.3, help="TiledDetector's largest (share of a tile)")
    p.add_argument("--cls-threshold", type=fraction, default=None, help="(default: the model's own)")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--picture", default=None,
                   help="also draw a crop of the first image, whole-image detections beside tiled ones, here")
    return p


def recall_at_half(dataset, results, area) -> tuple[int, int]:
    """(found, total) objects whose area is in ``area`` matched by a detection of their category
    at IoU >= 0.5, each detection matching one object, best scores first (COCO's greedy rule)."""
    found = total = 0
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    for image_id in dataset.ids:
        gts = [a for a in dataset.coco.imgToAnns.get(image_id, []) if area[0] <= a["area"] < area[1]]
        total += len(gts)
        free = list(gts)
        for r in sorted(by_image.get(image_id, []), key=lambda r: -r["score"]):
            same = [g for g in free if g["category_id"] == r["category_id"]]
            if not same:
                continue
            ious = iou_matrix(ltrb([r["bbox"]]), ltrb([g["bbox"] for g in same]))[0]
            best = int(np.argmax(ious))
            if ious[best] >= 0.5:
                free.remove(same[best])
                found += 1
    return found, total


def ltrb(xywh) -> np.ndarray:
    b = np.array(xywh, np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)


def measure(name, detector, dataset, category_ids) -> dict:
    start = time.perf_counter()
    evaluation, results = evaluate_images(detector, dataset, 1, category_ids=category_ids, verbose=False)
    seconds = (time.perf_counter() - start) / len(dataset.ids)
    small, large = recall_at_half(dataset, results, SMALL), recall_at_half(dataset, results, LARGE)
    row = {"run": name, "AP": evaluation.stats["AP"], "AP_small": evaluation.stats["AP_small"],
           "AP_large": evaluation.stats["AP_large"], "recall50_small": small[0] / max(small[1], 1),
           "recall50_large": large[0] / max(large[1], 1), "small_objects": small[1], "large_objects": large[1],
           "s_per_image": seconds}
    print(f"{name:>28s}  AP {row['AP']:.3f}  AP_small {row['AP_small']:.3f}  AP_large {row['AP_large']:.3f}  "
          f"recall@0.5 small {row['recall50_small']:.3f} ({small[0]}/{small[1]})  large {row['recall50_large']:.3f} "
          f"({large[0]}/{large[1]})  {seconds:.2f} s/image", flush=True)
    return row


def draw_pair(path, dataset, whole, tiled, crop=640, min_score=0.1):
    """The quarter of the first image holding the most objects: the whole-image detections
    (left) beside the tiled ones (right), those scoring ``min_score`` or more."""
    image_id = dataset.ids[0]
    image = np.ascontiguousarray(dataset.read_image(image_id)[0].permute(1, 2, 0).numpy())  # RGB (H, W, 3)
    h, w = image.shape[:2]
    corners = [(x, y) for y in (0, max(0, h - crop)) for x in (0, max(0, w - crop))]
    boxes = ltrb([a["bbox"] for a in dataset.coco.imgToAnns.get(image_id, [])])
    x0, y0 = max(corners, key=lambda c: int(((boxes[:, 0] >= c[0]) & (boxes[:, 2] <= c[0] + crop)
                                               & (boxes[:, 1] >= c[1]) & (boxes[:, 3] <= c[1] + crop)).sum()))
    sides = []
    for detector, title in ((whole, "whole image"), (tiled, f"tiles of {tiled.tile} px")):
        found = detector([image])[0]
        keep = np.asarray(found.scores) >= min_score
        shown = Detections(np.asarray(found.boxes)[keep] - np.array([x0, y0, x0, y0], np.float32),
                           np.asarray(found.labels)[keep], np.asarray(found.scores)[keep],
                           [n for n, k in zip(found.names, keep) if k])
        part = np.ascontiguousarray(image[y0:y0 + crop, x0:x0 + crop, ::-1])  # RGB -> BGR
        drawn = draw_detections(part, shown)
        cv2.putText(drawn, f"{title}: {int(keep.sum())} detections >= {min_score:g}", (8, 24),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
        sides.append(drawn)
    gap = np.full((sides[0].shape[0], 6, 3), 255, np.uint8)
    if not cv2.imwrite(path, np.concatenate([sides[0], gap, sides[1]], axis=1)):
        raise UserError(f"could not write {path}")


def main(args):
    if not os.path.isfile(args.pretrained_model):
        raise UserError(f"checkpoint {args.pretrained_model} does not exist")
    data = os.path.join(args.out, "data")
    guard = OutputGuard([args.pretrained_model])
    out_json = guard.file(os.path.join(args.out, "results.json"), "--out")
    if args.picture:
        guard.file(args.picture, "--picture")
    guard.claim()
    if not os.path.exists(os.path.join(data, "annotations", "instances_val2017.json")):
        write_split(data, "val", args.images, args.seed, (args.size, args.size), "small")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    dataset = dataset_from(source(data, "val", "coco"), val_transforms())
    pytorch = Detector.from_checkpoint(args.pretrained_model, categories=dataset.categories,
                                       cls_threshold=args.cls_threshold)
    whole = NumpyImages(pytorch)
    rows = [measure("whole image", whole, dataset, pytorch.category_ids)]
    for tile in args.tiles:
        tiled = TiledDetector(whole, tile, args.overlap, edge=args.edge, largest=args.largest)
        rows.append(measure(f"tiles {tile} px, overlap {args.overlap:g}", tiled, dataset, pytorch.category_ids))
    if args.picture:
        draw_pair(args.picture, dataset, whole, TiledDetector(whole, args.tiles[0], args.overlap, edge=args.edge,
                                                              largest=args.largest))
        guard.record([args.picture])
    base = rows[0]
    for row in rows[1:]:
        ratio = row["recall50_small"] / base["recall50_small"] if base["recall50_small"] else float("inf")
        print(f"{row['run']}: small-object recall x{ratio:.1f} the whole image's; AP_large "
              f"{row['AP_large'] - base['AP_large']:+.3f}; time x{row['s_per_image'] / base['s_per_image']:.1f}")
    with open(out_json, "w") as f:
        json.dump({"rows": rows, "images": len(dataset.ids), "size": args.size,
                   "checkpoint": args.pretrained_model}, f, indent=1)
    guard.record([out_json])


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
