"""Detect objects in a video file or a camera stream and write the annotated video.

    python test_video.py --pretrained-model trained_models/ssd.pth --input clip.mp4 --output out.mp4
    python test_video.py --input 0 --output webcam.avi --display
    python test_video.py --input clip.mp4 --track              # ids and trails; clip_prediction_tracks.csv
"""
import csv
import json
import math
import os
import time

import cv2
import numpy as np
from tqdm import tqdm

from src.cli import (
    ArgumentParser,
    add_categories_arg,
    add_detector_args,
    add_tile_args,
    categories_from_args,
    checkpoint_from_args,
    detector_from_args,
    fraction,
    input_path_of,
    positive_int,
    run_cli,
    tiled,
)
from src.inference.detections import Detections
from src.inference.draw import draw_detections
from src.inference.tracking import Tracker
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
    p.add_argument("--track", action="store_true",
                   help="follow the objects: each keeps an id across frames, drawn with a trail; writes --tracks "
                        "and prints how many distinct objects of each category were seen. ByteTrack's thresholds "
                        "replace --cls-threshold: detections from --track-high are matched first, from --track-high "
                        "+ 0.1 they start a track, and weaker ones down to --track-low only extend one")
    p.add_argument("--track-high", type=fraction, default=0.5, help="with --track: a confident detection (default 0.5)")
    p.add_argument("--track-low", type=fraction, default=0.1,
                   help="with --track: the least score of a detection used (default 0.1)")
    p.add_argument("--tracks", help="with --track: every tracked object in every frame (frame, id, category, score, "
                                    "box in pixels), .csv or .json (default: beside --output, _tracks.csv)")
    add_tile_args(p)
    return p


def check_input(source: str, track: bool = False):
    """A camera index, or a video file (a folder or a still image is refused: test_image.py
    is for pictures)."""
    if source.isdigit():
        return
    if os.path.isdir(source):
        raise UserError(f"input {source} is a folder, not a video file (test_image.py reads folders of pictures)")
    if not os.path.isfile(source):
        raise UserError(f"input video {source} does not exist")
    if cv2.haveImageReader(source):
        raise UserError(f"--track follows objects through the frames of a video: {source} is a still image" if track
                        else f"input {source} is a still image, not a video: use test_image.py")


def tracks_path(args, video_out: str) -> str | None:
    """Where --track writes its table: --tracks (.csv or .json), or beside the output video."""
    if not args.track:
        if args.tracks:
            raise UserError("--tracks is written by --track: add --track")
        return None
    path = args.tracks or f"{os.path.splitext(video_out)[0]}_tracks.csv"
    if os.path.splitext(path)[1].lower() not in (".csv", ".json"):
        raise UserError(f"--tracks {path}: use a .csv or .json file name")
    return path


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


class TrackLog:
    """--track's table: one row per tracked object per frame, written at the end (.csv or .json,
    with the distinct objects per category)."""

    def __init__(self, path: str):
        self.path, self.rows = path, []

    def add(self, frame: int, tracks):
        for t in tracks:
            x1, y1, x2, y2 = (round(float(v), 1) for v in t.shown_box)
            self.rows.append({"frame": frame, "id": t.id, "category": t.name, "score": round(t.score, 4),
                              "x1": x1, "y1": y1, "x2": x2, "y2": y2})

    def write(self, counts: dict):
        if self.path.lower().endswith(".json"):
            with open(self.path, "w") as f:
                json.dump({"tracks": self.rows, "distinct_objects": counts}, f, indent=1)
            return
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["frame", "id", "category", "score", "x1", "y1", "x2", "y2"])
            writer.writeheader()
            writer.writerows(self.rows)


def tracked(tracker, frame_rgb, dets, frame_index, log):
    """This frame's tracks as detections to draw, their ids and trails; logged."""
    shown = tracker.update(dets, frame_rgb)
    log.add(frame_index, shown)
    boxes = [t.shown_box for t in shown]
    drawn = Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array([t.label for t in shown], np.int64),
                       np.array([t.score for t in shown], np.float32), [t.name for t in shown])
    return drawn, [t.id for t in shown], [list(t.trail) for t in shown]


def main(args):
    check_input(args.input, args.track)
    checkpoint = checkpoint_from_args(args)
    categories = categories_from_args(args)
    guard = OutputGuard([args.input, input_path_of(checkpoint), args.annotations])
    out_path = guard.file(output_path(args), "--output")
    table = tracks_path(args, out_path)
    if table:
        guard.file(table, "--tracks")
    cap = open_reader(args.input)
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and math.isfinite(fps) and fps > 0 else 25.0
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if args.track:  # the detector keeps the weak detections too: they extend tracks
        args.cls_threshold = min(args.track_low, args.track_high)
    detector = tiled(args, detector_from_args(args, checkpoint, categories), [(width, height)])
    tracker = Tracker(high=args.track_high, low=args.cls_threshold) if args.track else None
    log = TrackLog(table) if table else None
    guard.claim()  # checked and loaded: nothing is written before this
    display = args.display and can_display()
    if args.display and not display:
        print("no display found: --display ignored")
    writer = open_writer(out_path, fps, width, height)
    count, start, tracking = 0, time.perf_counter(), 0.0
    try:
        with tqdm(total=total, unit="frame", dynamic_ncols=True) as bar:
            while frames := read_frames(cap, args.batch_size):
                rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]
                for i, (frame, dets) in enumerate(zip(frames, detector(rgb))):
                    if tracker:
                        t0 = time.perf_counter()
                        dets, ids, trails = tracked(tracker, rgb[i], dets, count + i, log)
                        tracking += time.perf_counter() - t0
                        drawn = draw_detections(frame, dets, ids, trails)
                    else:
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
        if log and count:  # also when stopped: the frames done so far
            log.write(tracker.counts())
            guard.record([table])
        if display:
            cv2.destroyAllWindows()
    if count == 0:
        raise UserError(f"no frame could be decoded from {args.input}")
    print(f"{count} frames written to {out_path} at {fps:g} fps")
    if tracker:
        seen = ", ".join(f"{n} {name}" for name, n in sorted(tracker.counts().items())) or "none"
        elapsed = time.perf_counter() - start
        print(f"tracks written to {table}; distinct objects: {seen}; tracking took "
              f"{1000 * tracking / count:.2f} ms a frame ({100 * tracking / elapsed:.1f}% of the time)")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
