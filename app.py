"""Serve a web page of the detector: upload photos, a short video or a webcam photo, see the boxes.

    python app.py --pretrained-model trained_models/ssd.pth     # then open http://127.0.0.1:8000/
    python app.py --checkpoints trained_models/ --port 8080      # choose among the folder's models
    python app.py --checkpoints /models --host 0.0.0.0           # reachable from other machines

The page may load the checkpoints (ours, the original's, NVIDIA's) and exported models (.onnx) of
one folder: those of --checkpoints, else the folder of --pretrained-model. --device and --amp apply
to the checkpoints, --backend (onnxruntime or openvino) to the exported models.
"""
import argparse
import copy
import errno
import os
import sys
import warnings

from PIL import Image

from src.cli import (
    ArgumentParser,
    add_categories_arg,
    add_detector_args,
    categories_from_args,
    checkpoint_from_args,
    detector_from_args,
    fraction,
    positive_float,
    positive_int,
    run_cli,
)
from src.inference.runtime import is_exported
from src.models.specs import MODEL_NAMES
from src.utils.errors import UserError
from src.web.catalogue import Catalogue
from src.web.server import PageServer, PageSettings
from src.web.worker import ModelWorker


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_args(p, cls_threshold=None)
    add_categories_arg(p)
    p.add_argument("--checkpoints", metavar="FOLDER",
                   help="the folder whose models the page may choose (default: the folder of --pretrained-model, "
                        "else trained_models)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on (default 8000; 0: any free one)")
    p.add_argument("--threshold", type=fraction, default=0.3,
                   help="the score threshold the page starts at, as test_image.py's (default 0.3); below the "
                        "model's own floor (--cls-threshold) there is nothing to show")
    p.add_argument("--max-upload-mb", type=positive_float, default=50.0, help="largest upload (default 50 MB)")
    p.add_argument("--max-megapixels", type=positive_float, default=100.0,
                   help="largest photo or video frame (default 100 megapixels)")
    p.add_argument("--max-video-frames", type=positive_int, default=150,
                   help="frames of a video detected, evenly spread over it (default 150)")
    p.add_argument("--queue", type=positive_int, default=8,
                   help="requests waiting for the model at most; more are asked to try again (default 8)")
    return p


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return int(text)


def catalogue_of(args) -> tuple[Catalogue, list[str]]:
    """The models the page may choose, and the ones to try to start with, in order: the one
    given, else ``<model>.pth`` as train.py names it, the other checkpoints, the exported models."""
    given = checkpoint_from_args(args) if args.pretrained_model else None  # a missing file: one line
    if args.checkpoints:
        folder = args.checkpoints
    elif given:
        folder = os.path.dirname(given) or "." if os.path.isfile(given) else None  # None: a published name
    else:
        folder = "trained_models"
    catalogue = Catalogue(folder, extra=given)
    if given:
        return catalogue, [os.path.basename(given)]
    names = catalogue.names()
    preferred = [f"{m}.pth" for m in ([args.model] if args.model else MODEL_NAMES) if f"{m}.pth" in names]
    checkpoints = [n for n in names if not is_exported(n)]
    return catalogue, list(dict.fromkeys([*preferred, *checkpoints, *names]))


def first_that_loads(worker, candidates: list[str]) -> tuple[str, str]:
    """The first of ``candidates`` that loads, and its description; the others before it are
    named on stderr. None loading is the first one's error."""
    for i, name in enumerate(candidates):
        print(f"loading {name}", flush=True)
        try:
            return name, worker.run(name, lambda detector: detector.describe)
        except UserError as e:
            if i == len(candidates) - 1:
                raise UserError(str(e) if i == 0 else f"none of the {i + 1} models of the folder loads ({e})") from None
            print(f"note: skipped {name}: {e}", file=sys.stderr, flush=True)


def loader(args, catalogue):
    """``load(name)``: the detector of the model ``name`` of the catalogue, as the scripts load one."""
    categories = categories_from_args(args)

    def load(name):
        one = copy.copy(args)
        one.pretrained_model = path = catalogue.path_of(name)
        if is_exported(path):  # --device and --amp are the checkpoints', --backend the exported models'
            one.device, one.amp = None, False
        else:
            one.backend = "auto"
        try:
            return detector_from_args(one, path, None if is_exported(path) else categories)
        except UserError as e:  # the page names the model by its name: no path of the server's
            raise type(e)(str(e).replace(path, name)) from None
    return load


def listen(args, catalogue, worker, default) -> PageServer:
    settings = PageSettings(args.threshold, args.max_upload_mb, args.max_megapixels, args.max_video_frames)
    try:
        return PageServer((args.host, args.port), catalogue, worker, settings, default)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {args.port} on {args.host} is in use: stop what serves there, or choose another "
                            "with --port") from None
        raise UserError(f"cannot listen on {args.host} port {args.port}: {e.strerror or e}") from None


def main(args):
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the page checks sizes itself
    catalogue, candidates = catalogue_of(args)
    worker = ModelWorker(loader(args, catalogue), args.queue)
    server = listen(args, catalogue, worker, candidates[0])
    try:
        default, describe = first_that_loads(worker, candidates)
        server.default_model = default
        host, port = server.server_address[:2]
        where = f" in {catalogue.folder}" if catalogue.folder else ""
        print(f"{len(catalogue.names())} model(s){where}; {default}: {describe}")
        if not server.loopback:
            print(f"note: listening on {host}: other machines on the network can open this page", file=sys.stderr)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
        print(f"serving at http://{shown}:{port}/ (Ctrl+C stops)", flush=True)
        server.serve_forever()
    finally:
        server.server_close()
        worker.close()


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
