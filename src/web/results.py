"""What the page receives: a model's description, and the detections of a photo or of a video's
frames in the form of ``test_image.py --json`` (boxes ltrb in pixels of the uploaded image)."""
import base64
import itertools

import cv2
import numpy as np

from src.inference.draw import class_color

FRAME_SIDE = 640  # the longest side of a video frame sent back to be shown


def model_info(name: str, detector) -> dict:
    """What the page says of the model in use: its file, what runs it, its categories (each
    with the colour :func:`~src.inference.draw.draw_detections` gives it) and thresholds."""
    names = list(detector.category_names)
    return {"model": name, "describe": detector.describe, "input_size": detector.input_size,
            "score_floor": float(detector.cls_threshold), "nms_threshold": float(detector.nms_threshold),
            "max_output": int(detector.max_output),
            "categories": [{"label": i, "name": n, "color": _hex(class_color(i))} for i, n in enumerate(names, 1)]}


def _hex(bgr) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


def _detections(dets) -> dict:
    """``detections`` as ``test_image.py --json`` writes them (scores to 4 decimals), and
    ``scores`` unrounded, which the page filters on as the model's threshold does."""
    return {"detections": dets.to_list(), "scores": [float(s) for s in np.asarray(dets.scores).tolist()]}


def photo_result(detector, image: np.ndarray, name: str) -> dict:
    """The detections of one uint8 RGB photo (H, W, 3)."""
    h, w = image.shape[:2]
    return {"kind": "photo", "input": name, "width": w, "height": h, **_detections(detector([image])[0])}


def video_result(detector, frames, stride: int, fps: float, name: str, batch: int = 4) -> dict:
    """The detections of each frame of ``frames`` (uint8 RGB; one in ``stride`` of the video's,
    which runs at ``fps``), with the frame itself as a JPEG of at most :data:`FRAME_SIDE` pixels a
    side to show them on (boxes stay in the video's pixels). ``frame`` is the frame's number in
    the video, from 0; ``time`` its time in seconds."""
    out = []
    frames = iter(frames)
    while chunk := list(itertools.islice(frames, batch)):
        for image, dets in zip(chunk, detector(chunk)):
            h, w = image.shape[:2]
            number = len(out) * stride
            out.append({"frame": number, "time": round(number / fps, 3), "width": w, "height": h,
                        "image": _jpeg_url(image), **_detections(dets)})
    return {"kind": "video", "input": name, "step": stride / fps, "frames": out}


def _jpeg_url(frame_rgb: np.ndarray) -> str:
    h, w = frame_rgb.shape[:2]
    scale = min(1.0, FRAME_SIDE / max(h, w))
    small = cv2.resize(frame_rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()
