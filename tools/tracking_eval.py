"""Tracking measured on generated videos whose identities are known: IDF1, MOTA and ID switches
(motmetrics), and what tracking adds to the time of a frame.

Each video (src/data/toy_video.py) has toy shapes crossing a still background on straight paths,
some leaving and coming back. The tracker (the one test_video.py --track runs) is fed either the
ground truth made noisy (boxes moved by 5% of their side, 10% of detections dropped, a 5-frame gap
per object), or a checkpoint's detections.

    python tools/tracking_eval.py                                   # noisy ground truth, 8 videos
    python tools/tracking_eval.py --pretrained-model demo/trained_models/ssdlite.pth --size 240 320 --objects 3 \
        --object-size 70 130 --videos 6                            # the demo's detector, clips like its images
    python tools/tracking_eval.py --write-clip clip.mp4             # one video, to try test_video.py --track on

Results: docs/results.md, "Following objects in video".
"""
import json
import os
import statistics
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from src.cli import ArgumentParser, NumpyImages, fraction, positive_int, run_cli  # noqa: E402
from src.data.toy_video import make_toy_video, noisy_truth  # noqa: E402
from src.evaluation.mot_eval import track_metrics  # noqa: E402
from src.inference.detections import Detections  # noqa: E402
from src.inference.draw import draw_detections  # noqa: E402
from src.inference.tracking import Tracker  # noqa: E402
from src.utils.errors import UserError  # noqa: E402
from src.utils.outputs import OutputGuard  # noqa: E402

NAMES = ["circle", "square", "triangle", "cross"]


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained-model", default=None,
                   help="track this checkpoint's detections (default: the noisy ground truth)")
    p.add_argument("--videos", type=positive_int, default=8)
    p.add_argument("--frames", type=positive_int, default=150)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--size", type=positive_int, nargs=2, default=[360, 480], metavar=("H", "W"))
    p.add_argument("--objects", type=positive_int, default=6)
    p.add_argument("--object-size", type=positive_int, nargs=2, default=[70, 140], metavar=("MIN", "MAX"),
                   help="side of the shapes in pixels")
    p.add_argument("--track-high", type=fraction, default=0.5, help="as test_video.py's")
    p.add_argument("--track-low", type=fraction, default=0.1, help="as test_video.py's")
    p.add_argument("--picture", default=None, help="also draw a frame of the first video with ids and trails here")
    p.add_argument("--picture-at", type=fraction, default=0.6, help="which frame, as a share of the video")
    p.add_argument("--write-clip", default=None, help="only write the first video here (.mp4) and stop")
    p.add_argument("--json", default=None, help="write the figures here")
    return p


def video_of(args, seed):
    return make_toy_video(seed, frames=args.frames, size=tuple(args.size), objects=args.objects,
                          size_range=tuple(args.object_size))


def detections_of(args, video, seed, detector):
    """Per frame: Detections, and the seconds the detector took for it (0 for the ground truth)."""
    if detector is None:
        return [(Detections(b, lab, s, [NAMES[i - 1] for i in lab.tolist()]), 0.0)
                for b, lab, s in noisy_truth(video, seed)]
    out = []
    for frame in video.frames:
        start = time.perf_counter()
        found = detector([np.ascontiguousarray(frame[..., ::-1])])[0]
        out.append((found, time.perf_counter() - start))
    return out


def run_video(args, seed, detector, picture=None) -> dict:
    video = video_of(args, seed)
    tracker = Tracker(high=args.track_high, low=min(args.track_low, args.track_high))
    predicted, tracking, detecting = [], 0.0, 0.0
    for f, (frame, (dets, seconds)) in enumerate(zip(video.frames, detections_of(args, video, seed, detector))):
        rgb = np.ascontiguousarray(frame[..., ::-1])  # as test_video.py has it for the detector
        start = time.perf_counter()
        shown = tracker.update(dets, rgb)
        tracking += time.perf_counter() - start
        detecting += seconds
        predicted.append([(t.id, t.shown_box) for t in shown])
        if picture and f == int(len(video.frames) * args.picture_at):
            draw_frame(picture, frame, shown)
    m = track_metrics(video.truth, predicted)
    m.update(seed=seed, crossings=video.crossings, ids_given=len(tracker.seen),
             track_ms=1000 * tracking / len(video.frames), detect_ms=1000 * detecting / len(video.frames))
    print(f"video {seed}: IDF1 {m['idf1']:.3f}  MOTA {m['mota']:.3f}  ID switches {m['id_switches']} "
          f"(crossings {m['crossings']})  objects {m['identities']}, ids given {m['ids_given']}  "
          f"tracking {m['track_ms']:.2f} ms/frame" + (f", detector {m['detect_ms']:.1f} ms/frame" if detector else ""),
          flush=True)
    return m


def draw_frame(path, frame, shown):
    """One frame with the tracks' ids and trails, enlarged to at least 640 px wide."""
    k = max(1, 640 // frame.shape[1])
    big = cv2.resize(frame, None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR)
    drawn = Detections(k * np.array([t.shown_box for t in shown], np.float32).reshape(-1, 4),
                       np.array([t.label for t in shown]), np.array([t.score for t in shown]), [t.name for t in shown])
    trails = [[(k * x, k * y) for x, y in t.trail] for t in shown]
    if not cv2.imwrite(path, draw_detections(big, drawn, [t.id for t in shown], trails)):
        raise UserError(f"could not write {path}")


def write_clip(args, path):
    video = video_of(args, args.first_seed)
    h, w = video.frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for frame in video.frames:
        writer.write(frame)
    writer.release()
    print(f"{len(video.frames)} frames written to {path} ({len({o for f in video.truth for o, _, _ in f})} objects, "
          f"{video.crossings} crossings)")


def main(args):
    guard = OutputGuard([args.pretrained_model])
    outputs = [p for p in (args.picture, args.write_clip, args.json) if p]
    guard.files(outputs, "output")
    detector = None
    if args.pretrained_model:
        if not os.path.isfile(args.pretrained_model):
            raise UserError(f"checkpoint {args.pretrained_model} does not exist")
        from src.inference.detector import Detector
        detector = NumpyImages(Detector.from_checkpoint(args.pretrained_model,
                                                        cls_threshold=min(args.track_low, args.track_high)))
    guard.claim()
    if args.write_clip:
        write_clip(args, args.write_clip)
        guard.record([args.write_clip])
        return
    rows = [run_video(args, args.first_seed + i, detector, args.picture if i == 0 else None)
            for i in range(args.videos)]
    idf1 = [r["idf1"] for r in rows]
    switches, crossings = sum(r["id_switches"] for r in rows), sum(r["crossings"] for r in rows)
    share = statistics.median(r["track_ms"] / (r["track_ms"] + r["detect_ms"]) for r in rows) if detector else None
    print(f"{len(rows)} videos: IDF1 mean {statistics.mean(idf1):.3f} (min {min(idf1):.3f}), MOTA mean "
          f"{statistics.mean(r['mota'] for r in rows):.3f}, ID switches {switches} for {crossings} crossings"
          + (f"; tracking {100 * share:.1f}% of a frame's time (median)" if share is not None else
             f"; tracking {statistics.median(r['track_ms'] for r in rows):.2f} ms/frame (median)"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": args.pretrained_model or "noisy ground truth", "videos": rows}, f, indent=1)
    guard.record([p for p in (args.picture, args.json) if p])


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
