"""Detect objects in photos: a file, a folder or a glob; draws boxes and prints each detection.

    python test_image.py --pretrained-model trained_models/ssd.pth --input photo.jpg
    python test_image.py --input "photos/*.jpg" --output predictions/ --json detections.json
"""
import glob
import json
import os
import sys

import cv2

from src.cli import (
    ArgumentParser,
    add_categories_arg,
    add_detector_args,
    add_tile_args,
    categories_from_args,
    checkpoint_from_args,
    detector_from_args,
    input_path_of,
    positive_int,
    run_cli,
    tiled,
)
from src.data.images import read_image
from src.inference.draw import draw_detections
from src.utils.errors import ImageReadError, UserError
from src.utils.outputs import OutputGuard, not_our_outputs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_args(p, cls_threshold=0.3)
    add_categories_arg(p)
    p.add_argument("--input", required=True, help="an image, a folder of images, or a glob")
    p.add_argument("--output", help="a file for one input, a folder for several "
                                    "(default: beside each input, with a _prediction suffix)")
    p.add_argument("--json", help="write every detection (class, score, box in pixels) here")
    p.add_argument("--batch-size", type=positive_int, default=8)
    add_tile_args(p)
    return p


def list_inputs(pattern: str) -> list[str]:
    """The images at ``pattern``, without the pictures an earlier run of this script wrote."""
    if os.path.isdir(pattern):
        files = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern)) if f.lower().endswith(IMAGE_EXTENSIONS)]
    elif os.path.isfile(pattern):
        if not cv2.haveImageReader(pattern):
            raise UserError(f"input {pattern} is not an image OpenCV can read")
        return [pattern]
    else:
        files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    files = not_our_outputs(files)
    if not files:
        raise UserError(f"no image found at {pattern}" + (" (a folder, or a glob in quotes)" if os.path.exists(pattern)
                                                           else ""))
    return files


def default_output(path: str) -> str:
    """``photo.jpg`` -> ``photo_prediction.jpg`` (a JPEG when the input's format cannot be written)."""
    stem, ext = os.path.splitext(path)
    return f"{stem}_prediction{ext if cv2.haveImageWriter(path) else '.jpg'}"


def output_paths(inputs: list[str], output: str | None) -> list[str]:
    """Where each input's picture goes: beside it by default; into ``output`` (a file for one
    input, else a folder) otherwise. Inputs from several folders keep their subfolders under
    ``output``, so two inputs of the same name get distinct pictures."""
    if output is None:
        return [default_output(p) for p in inputs]
    if len(inputs) == 1 and not os.path.isdir(output) and os.path.splitext(output)[1]:
        return [output]
    if not os.path.isdir(output) and os.path.splitext(output)[1].lower() in IMAGE_EXTENSIONS:
        raise UserError(f"--output {output} names one picture, but there are {len(inputs)} inputs: give a folder")
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in inputs])
    return [os.path.join(output, os.path.relpath(default_output(os.path.abspath(p)), root)) for p in inputs]


def check_formats(outputs: list[str]):
    for path in outputs:
        if not cv2.haveImageWriter(path):
            raise UserError(f"cannot write a picture as {path}: use an image extension such as .jpg or .png")


def image_sizes(paths: list[str]) -> list[tuple[int, int]]:
    """(w, h) of each readable image, from its header (PIL reads no pixels for this)."""
    from PIL import Image
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except (OSError, ValueError, Image.DecompressionBombError):
            pass  # reported when it is read
    return sizes


def read_batch(paths: list[str], single: bool):
    """The decodable images of ``paths`` (EXIF orientation applied: phone photos come upright);
    a bad one is skipped with a warning, or is an error when it is the only input."""
    good = []
    for path in paths:
        try:
            good.append((path, read_image(path, apply_exif=True)))
        except ImageReadError as e:
            if single:
                raise
            print(f"warning: skipped: {e}", file=sys.stderr, flush=True)
    return good


def main(args):
    inputs = list_inputs(args.input)
    checkpoint = checkpoint_from_args(args)
    categories = categories_from_args(args)
    guard = OutputGuard([*inputs, input_path_of(checkpoint), args.annotations])
    outputs = output_paths(inputs, args.output)
    check_formats(outputs)
    guard.files(outputs, "--output")
    if args.json:
        guard.file(args.json, "--json")
    output_of = dict(zip(inputs, outputs))
    detector = detector_from_args(args, checkpoint, categories)
    detector = tiled(args, detector, image_sizes(inputs) if args.tile else ())
    guard.claim()  # checked and loaded: nothing is written before this
    report = []
    for start in range(0, len(inputs), args.batch_size):
        batch = read_batch(inputs[start:start + args.batch_size], single=len(inputs) == 1)
        for (path, image), dets in zip(batch, detector([image for _, image in batch])):
            out = output_of[path]
            if not cv2.imwrite(out, draw_detections(image[..., ::-1], dets)):  # RGB -> BGR
                raise UserError(f"could not write {out}")
            print(f"{path}: {len(dets.scores)} detections -> {out}")
            for d in dets.to_list():
                print(f"  {d['name']:>16s} {d['score']:.3f}  box {d['box']}")
            report.append({"input": path, "output": out, "detections": dets.to_list()})
        guard.record([r["output"] for r in report[-len(batch):]] if batch else [])
    if not report:
        raise UserError(f"none of the {len(inputs)} inputs could be read (see the warnings above)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        guard.record([args.json])
    skipped = len(inputs) - len(report)
    print(f"{len(report)} picture(s) written" + (f", detections in {args.json}" if args.json else "")
          + (f"; {skipped} unreadable input(s) skipped" if skipped else ""))


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
