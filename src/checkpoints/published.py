"""The published COCO checkpoints, by name, downloaded once into the torch hub cache: NVIDIA's and the
original's SSD300-ResNet50, torchvision's SSD300-VGG16 and SSDLite320-MobileNetV3 (the very files its
weights API downloads, so one fetched by torchvision is found here too)."""
import os
import shutil
import subprocess
import sys
import urllib.error

import torch

from src.utils.errors import UserError
from src.utils.outputs import folder_kept_only_if_used

PUBLISHED = {
    "nvidia": {
        "file": "nvidia_ssdpyt_amp_200703.pt",
        "url": "https://api.ngc.nvidia.com/v2/models/nvidia/ssd_pyt_ckpt_amp/versions/20.06.0/files/"
               "nvidia_ssdpyt_amp_200703.pt",
        "what": "NVIDIA SSD300 v1.1 (AMP, 2020-07)",
        "model": "ssd", "num_classes": 81,
    },
    "original": {
        "file": "SSD.pth",
        "drive_folder": "https://drive.google.com/drive/folders/1_DYYDJUfwLIvGBDnM3hMFNgkVRZW6MgX",
        "what": "the original SSD-pytorch repository's SSD-ResNet50",
        "model": "ssd", "num_classes": 81,
    },
    "torchvision-vgg16": {
        "file": "ssd300_vgg16_coco-b556d3b4.pth",
        "url": "https://download.pytorch.org/models/ssd300_vgg16_coco-b556d3b4.pth",
        "what": "torchvision's SSD300_VGG16_Weights.COCO_V1",
        "model": "ssd300-vgg16", "num_classes": 91,
    },
    "torchvision-mnv3": {
        "file": "ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
        "url": "https://download.pytorch.org/models/ssdlite320_mobilenet_v3_large_coco-a79551df.pth",
        "what": "torchvision's SSDLite320_MobileNet_V3_Large_Weights.COCO_V1",
        "model": "ssdlite320-mnv3", "num_classes": 91,
    },
}


def cache_path(name: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", PUBLISHED[name]["file"])


def local_path(name_or_path: str) -> str:
    """Where the checkpoint ``name_or_path`` is (or will be, once downloaded) on this machine."""
    return cache_path(name_or_path) if name_or_path in PUBLISHED else name_or_path


def fetch(name: str, url: str | None = None) -> tuple[str, bool]:
    """The published checkpoint ``name`` in the torch hub cache, downloaded if absent (``url``
    overrides the source). Checking it is :func:`src.checkpoints.schema.resolve`'s job.

    :return: ``(path, downloaded)``: True when it was fetched by this call
    """
    path = cache_path(name)
    if os.path.exists(path):
        return path, False
    with folder_kept_only_if_used(os.path.dirname(path)):
        if "url" in PUBLISHED[name] or url:
            _download(url or PUBLISHED[name]["url"], path, name)
        else:
            _download_from_drive(path)
    return path, True


def _download(url: str, path: str, name: str):
    tmp = path + ".part"
    try:
        torch.hub.download_url_to_file(url, tmp, progress=sys.stderr.isatty())
        os.replace(tmp, path)
    except (urllib.error.URLError, OSError, ValueError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"could not download {PUBLISHED[name]['what']} ({getattr(e, 'reason', e)}): without "
                        f"network, put {PUBLISHED[name]['file']} at {path} and run again") from None


def _download_from_drive(path: str):
    """Google Drive wants a confirmation step: gdown handles it when installed."""
    folder = PUBLISHED["original"]["drive_folder"]
    manual = (f"download {PUBLISHED['original']['file']} by hand from {folder} and put it at {path} "
              "(or pip install gdown and run again)")
    if shutil.which("gdown") is None:
        raise UserError(f"gdown is not installed: {manual}")
    target = os.path.dirname(path)
    result = subprocess.run(["gdown", "--folder", folder, "-O", target], capture_output=True, text=True)
    found = [os.path.join(root, f) for root, _, files in os.walk(target) for f in files if f == "SSD.pth"]
    if result.returncode != 0 or not found:
        raise UserError(f"gdown could not fetch the original weights: {manual}")
    os.replace(found[0], path)
