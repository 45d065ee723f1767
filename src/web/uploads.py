"""What an upload may be, and how it is read: a photo decoded in memory, a short video read from a
private temporary file that is deleted before the answer. Nothing uploaded is kept.

Every refusal is an :class:`UploadError` whose message the page shows as it is.
"""
import contextlib
import io
import math
import os
import tempfile

import cv2
import numpy as np
from PIL import Image

from src.data.images import decode_image
from src.utils.errors import ImageReadError, UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


class UploadError(UserError):
    """An upload that cannot be used: its message says why, in one line."""


def is_video(name: str, content_type: str) -> bool:
    """Whether an upload is a video, by its type or else its file name."""
    return content_type.startswith("video/") or name.lower().endswith(VIDEO_SUFFIXES)


def image_size(data: bytes, name: str, max_megapixels: float) -> tuple[int, int] | None:
    """(w, h) from an image's header (no pixels are decoded), or None if PIL cannot tell.

    :raises UploadError: the image is over ``max_megapixels``, and so large that PIL refuses to
        open it (a "decompression bomb")
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Image.DecompressionBombError:
        bomb = 2 * Image.MAX_IMAGE_PIXELS / 1e6
        if max_megapixels < bomb:
            raise UploadError(f"{name} is over {bomb:.0f} megapixels: this page takes up to {max_megapixels:g} "
                              "megapixels (app.py --max-megapixels)") from None
        return None  # allowed larger still: measured once decoded
    except (OSError, ValueError, SyntaxError):
        return None


def check_photo(data: bytes, name: str, max_megapixels: float):
    """Refuse a photo over ``max_megapixels`` by its header, before a byte of it is decoded."""
    size = image_size(data, name, max_megapixels)
    if size:
        _check_pixels(name, *size, max_megapixels)


def read_photo(data: bytes, name: str, max_megapixels: float) -> np.ndarray:
    """An uploaded photo as uint8 RGB (H, W, 3), EXIF orientation applied (phone photos upright),
    after :func:`check_photo`."""
    check_photo(data, name, max_megapixels)
    try:
        image = decode_image(data, name, apply_exif=True)
    except ImageReadError as e:
        raise UploadError(str(e)) from None
    _check_pixels(name, image.shape[1], image.shape[0], max_megapixels)  # a format PIL could not measure
    return image


def _check_pixels(name: str, width: int, height: int, max_megapixels: float, what: str = "is"):
    if width * height > max_megapixels * 1e6:
        raise UploadError(f"{name} {what} {width}x{height} pixels: this page takes up to {max_megapixels:g} "
                          "megapixels (app.py --max-megapixels)")


@contextlib.contextmanager
def video_frames(data: bytes, name: str, max_frames: int, max_megapixels: float):
    """``with video_frames(...) as (frames, stride, fps):`` up to ``max_frames`` frames of an
    uploaded video, evenly spread over it, as uint8 RGB (H, W, 3), read one at a time: one in
    ``stride`` of the video's frames, at ``fps`` frames a second. A video with no readable frame
    raises :class:`UploadError` when ``frames`` is run through.

    OpenCV reads videos from files only: the bytes go to a file only this user can read, in a
    folder of its own, removed when the ``with`` block ends.
    """
    suffix = os.path.splitext(name)[1].lower() if name.lower().endswith(VIDEO_SUFFIXES) else ".mp4"
    with tempfile.TemporaryDirectory(prefix="ssd-upload-") as folder:  # mode 0700
        path = os.path.join(folder, "video" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                raise UploadError(f"{name} is not a video OpenCV can read")
            fps = cap.get(cv2.CAP_PROP_FPS)
            fps = fps if math.isfinite(fps) and 0 < fps < 1000 else 25.0
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            stride = max(1, math.ceil(count / max_frames)) if count > 0 else 1
            yield _read(cap, name, stride, max_frames, max_megapixels), stride, fps
        finally:
            cap.release()


def _read(cap, name, stride, max_frames, max_megapixels):
    read = kept = 0
    while kept < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        _check_pixels(name, frame.shape[1], frame.shape[0], max_megapixels, what="has frames of")
        if read % stride == 0:
            kept += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        read += 1
    if not kept:
        raise UploadError(f"{name} has no frame OpenCV can read (an empty video, or a format it does not know)")
