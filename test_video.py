"""Detect objects in a video file or a camera stream and write the annotated video.

    python test_video.py --pretrained-model trained_models/ssd.pth --input clip.mp4 --output out.mp4
    python test_video.py --input 0 --output webcam.avi --display
"""
import math
import os
import time

import cv2
from tqdm import tqdm

from src.cli import (
    ArgumentParser,
    add_categories_arg,
    add_detector_args,
    categories_from_args,
    checkpoint_from_args,
    detector_from_args,
    input_path_of,
    positive_int,
    run_cli,
)
from src.inference.draw import draw_detections
from src.utils.errors import UserError
from src.utils.outputs import OutputGuard

CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_args(p, cls_threshold=0.3)
    add_categories_arg(p)
    p.add_argument("--input", required=True, help="a video file, or a camera index such as 0")
    p.add_argument("--output", help="output video, .mp4 or .avi (default: beside the input, _prediction)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="frames per forward pass")
    p.add_argument("--display", action="store_true", help="also show the frames in a window")
    return p


def check_input(source: str):
    """A camera index, or a video file (a folder or a still image is refused: test_image.py
    is for pictures)."""
    if source.isdigit():
        return
    if os.path.isdir(source):
        raise UserError(f"input {source} is a folder, not a video file (test_image.py reads folders of pictures)")
    if not os.path.isfile(source):
        raise UserError(f"input video {source} does not exist")
    if cv2.haveImageReader(source):
        raise UserError(f"input {source} is a still image, not a video: use test_image.py")


def open_reader(source: str):
    cap = cv2.VideoCapture(int(source)) if source.isdigit() else cv2.VideoCapture(source)
    if not cap.isOpened():
        raise UserError(f"cannot open camera {source}" if source.isdigit() else f"cannot open {source} as a video")
    return cap


def output_path(args) -> str:
    if args.output:
        out = args.output
    elif args.input.isdigit():
        out = f"camera{args.input}_prediction.mp4"
    else:
        stem, ext = os.path.splitext(args.input)
        out = f"{stem}_prediction{ext if ext.lower() in CODECS else '.mp4'}"
    if os.path.splitext(out)[1].lower() not in CODECS and not os.path.isdir(out):
        raise UserError(f"--output {out}: use a .mp4 or .avi file name")
    return out


def open_writer(path, fps, width, height):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*CODECS[os.path.splitext(path)[1].lower()]),
                             fps, (width, height))
    if not writer.isOpened():
        raise UserError(f"cannot write video {path}")
    return writer


def can_display() -> bool:
    return os.name == "nt" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def read_frames(cap, n):
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def main(args):
    check_input(args.input)
    checkpoint = checkpoint_from_args(args)
    categories = categories_from_args(args)
    guard = OutputGuard([args.input, input_path_of(checkpoint), args.annotations])
    out_path = guard.file(output_path(args), "--output")
    cap = open_reader(args.input)
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and math.isfinite(fps) and fps > 0 else 25.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    detector = detector_from_args(args, checkpoint, categories)
    guard.claim()  # checked and loaded: nothing is written before this
    display = args.display and can_display()
    if args.display and not display:
        print("no display found: --display ignored")
    writer = open_writer(out_path, fps, width, height)
    count, start = 0, time.perf_counter()
    try:
        with tqdm(total=total, unit="frame", dynamic_ncols=True) as bar:
            while frames := read_frames(cap, args.batch_size):
                for frame, dets in zip(frames, detector([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames])):
                    drawn = draw_detections(frame, dets)
                    writer.write(drawn)
                    if display:
                        cv2.imshow("SSD", drawn)
                        if cv2.waitKey(1) & 0xFF == ord("q"):
                            raise KeyboardInterrupt
                count += len(frames)
                bar.update(len(frames))
                bar.set_postfix(fps=f"{count / (time.perf_counter() - start):.1f}")
    finally:
        cap.release()
        writer.release()
        guard.record([out_path])
        if display:
            cv2.destroyAllWindows()
    if count == 0:
        raise UserError(f"no frame could be decoded from {args.input}")
    print(f"{count} frames written to {out_path} at {fps:g} fps")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
