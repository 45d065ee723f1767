"""Reading an image file: decoded by OpenCV, a truncated JPEG caught, EXIF orientation on request.
(No torch here: the inference scripts read photos with it when they run an exported model.)"""
import os

import cv2
import numpy as np

from src.utils.errors import ImageReadError


def _is_jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG stream reaches its end-of-image marker. Some decoders (OpenCV's
    ``imread``, libjpeg) turn a file cut short into a half-grey picture with only a warning;
    this walks the markers (skipping segments by their length, and scan data to the next
    marker) so that a truncated file is caught whatever the decoder does. Trailing bytes
    after the marker (some cameras add them) are allowed."""
    if data.endswith(b"\xff\xd9"):
        return True
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # fill byte, TEM, RSTn: no length
            pos += 1 if marker == 0xFF else 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            while (pos := data.find(b"\xff", pos)) >= 0 and pos + 1 < n and (
                    data[pos + 1] == 0 or 0xD0 <= data[pos + 1] <= 0xD7):
                pos += 2  # a stuffed 0xFF00 or a restart marker
            if pos < 0 or pos + 1 >= n:
                return False
    return False


def read_image(path: str, apply_exif: bool = False) -> np.ndarray:
    """Decode an image file (JPEG, PNG...; grayscale, CMYK, palette or RGBA) to uint8 RGB (H, W, 3).

    OpenCV decodes faster than PIL and is not deprecated like torchvision.io's decoders.
    EXIF orientation is ignored by default, as COCO's annotations are on the stored pixels;
    photos from a phone want ``apply_exif=True``. A missing, unreadable or truncated file
    raises :class:`ImageReadError` saying which.
    """
    if os.path.isdir(path):
        raise ImageReadError(f"image {path} is a folder, not an image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"image {path} {'does not exist' if not os.path.exists(path) else e.strerror}") from None
    return decode_image(data.tobytes(), f"image {path}", apply_exif)


def decode_image(data: bytes, what: str, apply_exif: bool = False) -> np.ndarray:
    """The bytes of an image file decoded as :func:`read_image` does; ``what`` names it in the
    :class:`ImageReadError` of bytes that are no image, or a JPEG cut short."""
    if data[:2] == b"\xff\xd8" and not _is_jpeg_complete(data):
        raise ImageReadError(f"{what} is truncated (the JPEG ends before its end-of-image marker)")
    flags = cv2.IMREAD_COLOR if apply_exif else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags) if data else None
    if bgr is None:
        raise ImageReadError(f"{what} is not an image OpenCV can decode (empty, truncated or another format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
