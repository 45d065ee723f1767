"""Detect objects in photos: a file, a folder or a glob; draws boxes and prints each detection.

    python test_image.py --pretrained-model trained_models/ssd.pth --input photo.jpg
    python test_image.py --input "photos/*.jpg" --output predictions/ --json detections.json
"""
import argparse
import glob
import json
import os

import cv2

from src.cli import add_detector_args, checkpoint_from_args, output_folder, positive_int, run_cli
from src.dataset import read_rgb
from src.detector import Detector
from src.draw import draw_detections
from src.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_args(p, cls_threshold=0.3)
    p.add_argument("--input", required=True, help="an image, a folder of images, or a glob")
    p.add_argument("--output", help="a file for one input, a folder for several "
                                    "(default: beside each input, with a _prediction suffix)")
    p.add_argument("--json", help="write every detection (class, score, box in pixels) here")
    p.add_argument("--batch-size", type=positive_int, default=8)
    return p


def list_inputs(pattern: str) -> list[str]:
    if os.path.isdir(pattern):
        files = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))
                 if f.lower().endswith(IMAGE_EXTENSIONS) and "_prediction." not in f]
    elif os.path.isfile(pattern):
        files = [pattern]
    else:
        files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise UserError(f"no image found at {pattern}")
    return files


def default_output(path: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}_prediction{ext}"


def output_paths(inputs: list[str], output: str | None) -> list[str]:
    """Where each input's picture goes; an input is never overwritten."""
    if output is None:
        outs = [default_output(p) for p in inputs]
    elif len(inputs) == 1 and not os.path.isdir(output) and os.path.splitext(output)[1]:
        outs = [output]
    else:
        outs = [os.path.join(output, os.path.basename(default_output(p))) for p in inputs]
    for src, dst in zip(inputs, outs):
        if os.path.abspath(src) == os.path.abspath(dst):
            raise UserError(f"output {dst} is the input itself: choose another --output")
    return outs


def save(path: str, image):
    try:
        ok = cv2.imwrite(path, image)
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"could not write {path} (unknown image extension or unwritable)")


def main(args):
    inputs = list_inputs(args.input)
    outputs = output_paths(inputs, args.output)
    for folder in sorted({os.path.dirname(os.path.abspath(p)) for p in outputs}):
        output_folder(folder)
    images = [read_rgb(p, apply_exif=True) for p in inputs]  # phone photos: boxes on the upright image
    detector = Detector.from_checkpoint(checkpoint_from_args(args), args.model, args.device,
                                        cls_threshold=args.cls_threshold, nms_threshold=args.nms_threshold,
                                        amp=args.amp)
    report = []
    for start in range(0, len(images), args.batch_size):
        chunk = images[start:start + args.batch_size]
        for i, (image, dets) in enumerate(zip(chunk, detector(chunk)), start):
            bgr = image.permute(1, 2, 0).numpy()[..., ::-1]
            save(outputs[i], draw_detections(bgr, dets))
            print(f"{inputs[i]}: {len(dets.scores)} detections -> {outputs[i]}")
            for d in dets.to_list():
                print(f"  {d['name']:>16s} {d['score']:.3f}  box {d['box']}")
            report.append({"input": inputs[i], "output": outputs[i], "detections": dets.to_list()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{len(outputs)} picture(s) written" + (f", detections in {args.json}" if args.json else ""))


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
