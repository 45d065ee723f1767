"""What the command-line scripts share: detector flags, and errors as one line.

Imports nothing of torch at load: a script that runs an exported model never loads it.
"""
import argparse
import math
import os
import sys

import cv2

from src.data.categories import DatasetCategories
from src.inference.runtime import BACKENDS, is_exported
from src.models.specs import MODEL_NAMES
from src.utils.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a usage error on one line, ``prog: error: message`` (the usage
    itself is one ``--help`` away), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value is a one-line usage error, not a traceback)."""
    return _int_at_least(text, 1)


def training_batch_size(text: str) -> int:
    """argparse type: images per process in training, at least 2 (BatchNorm of the 1x1 feature
    map, the last of both models, has one value per channel and image: one image cannot train it)."""
    return _int_at_least(text, 2)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _bounded_float(accept, wrong: str, doc: str):
    """An argparse type: a finite number that ``accept`` takes, else the usage error ``wrong``."""
    def parse(text: str) -> float:
        value = _float(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{value:g} {wrong}")
        return value
    parse.__doc__ = doc
    return parse


positive_float = _bounded_float(lambda v: v > 0, "is not above 0", "a number > 0 (a learning rate, a timeout)")
non_negative_float = _bounded_float(lambda v: v >= 0, "is below 0", "a number >= 0 (weight decay)")
fraction = _bounded_float(lambda v: 0 <= v <= 1, "is not in [0, 1]", "a number in [0, 1] (a threshold, a share)")
sgd_momentum = _bounded_float(lambda v: 0 <= v < 1, "is not in [0, 1)", "SGD momentum, in [0, 1)")
tile_overlap = _bounded_float(lambda v: 0 <= v < 1, "is not in [0, 1)", "an overlap of tiles, in [0, 1)")
zoom_factor = _bounded_float(lambda v: v >= 1, "is below 1 (1 turns zoom-out off)", "a zoom-out factor, at least 1")


def device_name(text: str) -> str:
    """argparse type: ``cpu``, ``cuda`` or ``cuda:N``, and present on this machine."""
    import torch
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: only cpu and cuda devices are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return text


def device_spec(text: str) -> str:
    """argparse type of the inference scripts: ``cpu``, ``cuda`` or ``cuda:N`` by form only (no
    torch: an exported model never needs it); :func:`pytorch_device` checks it is there."""
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not (kind == "cuda" and index.isdigit())):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")
    return text


def pytorch_device(args) -> str:
    """``--device`` checked against this machine (or the default), and ``--threads`` applied:
    what the PyTorch backend runs on."""
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is None:
        return default_device()
    try:
        return device_name(args.device)
    except argparse.ArgumentTypeError as e:
        raise UserError(f"--device {e}") from None


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


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
                   help="a checkpoint (ours, the original's SSD.pth, NVIDIA's or torchvision's), 'original', "
                        "'nvidia', 'torchvision-vgg16' or 'torchvision-mnv3' for published COCO weights, or a model "
                        "exported with export_onnx.py --with-nms (.onnx) "
                        "(default trained_models/<model>.pth)")
    p.add_argument("--model", choices=MODEL_NAMES, default=None,
                   help="only needed when no checkpoint is given; read from the checkpoint otherwise")
    p.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                   help="what runs the model: auto is PyTorch for a checkpoint, ONNX Runtime for an exported file; "
                        "onnxruntime and openvino take an exported file")
    p.add_argument("--cls-threshold", "--cls_threshold", type=fraction, default=cls_threshold,
                   help="minimum score of a detection, in [0, 1]" + (
                       f" (default {cls_threshold})" if cls_threshold is not None else
                       " (default: the model's own: 0.05, torchvision's 0.01 for ssd300-vgg16 and 0.001 for "
                       "ssdlite320-mnv3; an exported file's own)"))
    p.add_argument("--nms-threshold", "--nms_threshold", type=fraction, default=None,
                   help="IoU above which NMS drops the lower-scored box, in [0, 1] (default: the model's own: 0.5, "
                        "torchvision's 0.45 for ssd300-vgg16 and 0.55 for ssdlite320-mnv3; an exported file's own)")
    p.add_argument("--device", type=device_spec, default=None, help="cpu, cuda or cuda:N (default: cuda when "
                                                                    "there is a GPU); PyTorch only")
    p.add_argument("--amp", action="store_true", help="float16 autocast on CUDA")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads of the backend (default: the runtime's own)")


def add_tile_args(p: argparse.ArgumentParser):
    """``--tile`` and ``--tile-overlap``: tiled inference for small objects in large images."""
    p.add_argument("--tile", type=positive_int, default=None, metavar="SIZE",
                   help="also detect in overlapping tiles of SIZE pixels (at least the model's input size), merged "
                        "with the whole-image pass: small objects in large images")
    p.add_argument("--tile-overlap", type=tile_overlap, default=None, metavar="F",
                   help="share of a tile that neighbouring tiles overlap, in [0, 1) (default 0.2)")


def check_tile_flags(args):
    """``--tile-overlap`` goes with ``--tile``."""
    if args.tile is None and args.tile_overlap is not None:
        raise UserError("--tile-overlap needs --tile SIZE")


def tiled(args, detector, image_sizes=()):
    """``detector`` run on tiles when ``--tile`` is given (checked against the model's input
    size and the images' (w, h) sizes), else ``detector`` itself."""
    check_tile_flags(args)
    if args.tile is None:
        return detector
    from src.inference.tiles import TiledDetector, check_tile
    overlap = 0.2 if args.tile_overlap is None else args.tile_overlap
    check_tile(args.tile, overlap, detector.input_size, image_sizes)
    return TiledDetector(detector, args.tile, overlap)


def backend_of(args) -> str:
    """The backend that runs ``--pretrained-model``: "pytorch", "onnxruntime" or "openvino"."""
    exported = bool(args.pretrained_model) and is_exported(args.pretrained_model)
    backend = args.backend if args.backend != "auto" else "onnxruntime" if exported else "pytorch"
    if backend == "pytorch" and exported:
        raise UserError(f"{args.pretrained_model} is an exported model: run it with --backend onnxruntime or "
                        "openvino (or give the checkpoint it came from)")
    if backend != "pytorch" and not exported:
        raise UserError(f"--backend {backend} runs a model exported with export_onnx.py --with-nms (.onnx); "
                        f"{args.pretrained_model or 'the default checkpoint'} is a PyTorch checkpoint")
    if backend != "pytorch" and (args.amp or args.device not in (None, "cpu")):
        raise UserError(f"--amp and --device are PyTorch's: the {backend} backend runs on the CPU")
    return backend


def add_categories_arg(p: argparse.ArgumentParser):
    """``--annotations``: names for the labels of a checkpoint that carries none."""
    p.add_argument("--annotations", help="a COCO-format annotation file whose categories (in id order) name the "
                                         "labels of a checkpoint that carries none: the original's or NVIDIA's "
                                         "form trained on your own data (a checkpoint with names must match them "
                                         "by name, or it is refused)")


def categories_from_args(args) -> DatasetCategories | None:
    """The categories of ``--annotations`` in id order, or None."""
    if not args.annotations:
        return None
    from src.data.dataset import load_coco
    coco, report = load_coco(args.annotations)
    ids = sorted(coco.cats)
    return DatasetCategories(ids, [coco.cats[i]["name"] for i in ids], args.annotations,
                             unnamed=set(report.unnamed_ids))


def input_path_of(checkpoint: str) -> str:
    """The file on this machine a checkpoint argument reads (a published name: its cache path)."""
    if is_exported(checkpoint):
        return checkpoint
    from src.checkpoints.published import local_path
    return local_path(checkpoint)


def checkpoint_from_args(args) -> str:
    """--pretrained-model (a path, or a published name, fetched when loaded), or the default
    trained_models/<model>.pth, or the one checkpoint found there."""
    if args.pretrained_model and is_exported(args.pretrained_model):  # no torch on this path
        path = args.pretrained_model
        if os.path.isdir(path):
            raise UserError(f"--pretrained-model {path} is a folder, not a model file")
        if not os.path.exists(path):
            raise UserError(f"exported model {path} does not exist")
        return path
    if args.pretrained_model:
        from src.checkpoints.published import PUBLISHED, local_path
        path = local_path(args.pretrained_model)
        if os.path.isdir(path):
            raise UserError(f"--pretrained-model {path} is a folder, not a checkpoint file")
        if args.pretrained_model not in PUBLISHED and not os.path.exists(path):
            raise UserError(f"checkpoint {path} does not exist")
        return args.pretrained_model
    names = [args.model] if args.model else list(MODEL_NAMES)
    for name in names:
        path = os.path.join("trained_models", f"{name}.pth")
        if os.path.exists(path):
            return path
    raise UserError(f"no checkpoint at trained_models/{names[0]}.pth: pass --pretrained-model PATH")


def run_cli(main, args):
    """Run ``main(args)``; a :class:`UserError` becomes one line on stderr and exit status 1.

    OpenCV's own log lines (a missing camera, a broken file) are silenced: our messages say
    what happened, once.
    """
    prog = os.path.basename(sys.argv[0])
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
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


def detector_from_args(args, checkpoint: str, categories: DatasetCategories | None = None):
    """The detector of ``--pretrained-model`` on ``--backend``: a callable from uint8 RGB images
    (H, W, 3) to :class:`~src.inference.detections.Detections` with NumPy arrays, whatever runs it.
    ``.category_names`` and ``.describe`` say what it is."""
    backend = backend_of(args)
    if backend != "pytorch":
        from src.inference.runtime import ExportedDetector
        if categories is not None:
            raise UserError(f"{checkpoint} carries its own categories: --annotations is for a checkpoint without "
                            "category names")
        detector = ExportedDetector(checkpoint, backend, args.cls_threshold, args.nms_threshold, args.threads)
        if detector.floor_raised:
            print(f"note: {checkpoint} was exported with a score threshold of {detector.info.score_threshold:g}: "
                  "nothing below it is detected", file=sys.stderr)
        return detector
    from src.inference.detector import Detector
    detector = Detector.from_checkpoint(checkpoint, args.model, pytorch_device(args),
                                        categories=categories, cls_threshold=args.cls_threshold,
                                        nms_threshold=args.nms_threshold, amp=args.amp)
    return NumpyImages(detector)


class NumpyImages:
    """The PyTorch detector on NumPy images, with NumPy detections (as the exported ones)."""

    def __init__(self, detector):
        self.detector = detector
        self.category_names = detector.category_names
        self.describe = f"{detector.model.spec.name} on PyTorch ({detector.device})"
        self.input_size = detector.model.spec.fig_size
        self.cls_threshold = detector.postprocess.score_threshold
        self.nms_threshold = detector.postprocess.nms_threshold
        self.max_output = detector.postprocess.max_output

    def __call__(self, images_rgb):
        import torch

        from src.inference.detections import Detections
        tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images_rgb]  # (H, W, 3) -> (3, H, W)
        return [Detections(d.boxes.numpy(), d.labels.numpy(), d.scores.numpy(), d.names)
                for d in self.detector(tensors)]
