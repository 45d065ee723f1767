"""The published SSD300-ResNet50 COCO checkpoints, by name, downloaded once into the torch hub cache."""
import os
import shutil
import subprocess
import sys
import urllib.error

import torch

from src.utils.errors import CheckpointError, UserError

PUBLISHED = {
    "nvidia": {
        "file": "nvidia_ssdpyt_amp_200703.pt",
        "url": "https://api.ngc.nvidia.com/v2/models/nvidia/ssd_pyt_ckpt_amp/versions/20.06.0/files/"
               "nvidia_ssdpyt_amp_200703.pt",
        "what": "NVIDIA SSD300 v1.1 (AMP, 2020-07)",
    },
    "original": {
        "file": "SSD.pth",
        "drive_folder": "https://drive.google.com/drive/folders/1_DYYDJUfwLIvGBDnM3hMFNgkVRZW6MgX",
        "what": "the original SSD-pytorch repository's SSD-ResNet50",
    },
}


def cache_path(name: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", PUBLISHED[name]["file"])


def local_path(name_or_path: str) -> str:
    """Where the checkpoint ``name_or_path`` is (or will be, once downloaded) on this machine."""
    return cache_path(name_or_path) if name_or_path in PUBLISHED else name_or_path


def resolve_checkpoint(name_or_path: str, url: str | None = None) -> str:
    """A checkpoint path: ``name_or_path`` itself, or for "nvidia" / "original" the published file
    in the torch hub cache, downloaded (and checked) the first time. ``url`` overrides the
    source (tests use a file:// URL)."""
    if name_or_path not in PUBLISHED:
        return name_or_path
    path = cache_path(name_or_path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if name_or_path == "nvidia" or url:
            _download(url or PUBLISHED["nvidia"]["url"], path, name_or_path)
        else:
            _download_from_drive(path)
        check_published(path)
    return path


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


def check_published(path: str):
    """Every key and shape of a downloaded SSD300 checkpoint, before use; a bad file is removed."""
    # imported here: checkpoint.py resolves published names through this module
    from src.checkpoints.schema import adapt_state_dict, infer_model_name, model_state_dict, read_checkpoint
    from src.models.ssd import build_model
    try:
        state = adapt_state_dict(model_state_dict(read_checkpoint(path), path), "ssd")
        expected = build_model("ssd", 81).state_dict()
        if infer_model_name(state) != "ssd" or state.keys() != expected.keys() or any(
                state[k].shape != v.shape for k, v in expected.items()):
            raise CheckpointError(f"{path} is not an 81-class SSD300-ResNet50 checkpoint")
    except CheckpointError:
        os.remove(path)
        raise
