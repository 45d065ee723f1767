"""What the command-line scripts share: detector flags, and errors as one line."""
import argparse
import os
import sys

import torch

from .errors import UserError
from .specs import MODEL_NAMES
from .weights import resolve_checkpoint


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a one-line usage error, not a traceback)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text, low):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is below {low}")
    return value


def add_detector_args(p: argparse.ArgumentParser, cls_threshold: float):
    """Flags of every inference script (the original's underscore spellings work too)."""
    p.add_argument("--pretrained-model", "--pretrained_model", default=None,
                   help="a checkpoint (ours, the original's SSD.pth or NVIDIA's), or 'original' / 'nvidia' "
                        "for their published COCO weights (default trained_models/<model>.pth)")
    p.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help="only needed when no checkpoint is given; read from the checkpoint otherwise")
    p.add_argument("--cls-threshold", "--cls_threshold", type=float, default=cls_threshold,
                   help="minimum score of a detection")
    p.add_argument("--nms-threshold", "--nms_threshold", type=float, default=0.5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")


def checkpoint_from_args(args) -> str:
    """--pretrained-model, or trained_models/<model>.pth, or the one checkpoint found there."""
    if args.pretrained_model:
        return resolve_checkpoint(args.pretrained_model)
    names = [args.model] if args.model else list(MODEL_NAMES)
    for name in names:
        path = os.path.join("trained_models", f"{name}.pth")
        if os.path.exists(path):
            return path
    raise UserError(f"no checkpoint at trained_models/{names[0]}.pth: pass --pretrained-model PATH")


def output_folder(path: str) -> str:
    """Create ``path`` if needed; one clear error if it cannot be created or written."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {path} ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"output folder {path} is not writable")
    return path


def run_cli(main, args):
    """Run ``main(args)``; a :class:`UserError` becomes one line on stderr and exit status 1."""
    prog = os.path.basename(sys.argv[0])
    try:
        return main(args)
    except UserError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # output piped into e.g. head, which has exited
        sys.stdout = open(os.devnull, "w")
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
