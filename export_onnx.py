"""Export a checkpoint (ours, the original's or NVIDIA's) to ONNX, with a dynamic batch axis.

    python export_onnx.py --pretrained-model trained_models/ssd.pth --output ssd.onnx
    python export_onnx.py --pretrained-model SSD.pth --output ssd_nms.onnx --with-nms

Without --with-nms the graph outputs the raw ``ploc`` (N, 4, B) and ``plabel`` (N, C, B), and the
default boxes (B, 4, normalised cxcywh: centre x, centre y, width, height) go to
<output>.dboxes.npy beside it. With --with-nms it outputs ``boxes`` (N, 200, 4, normalised ltrb),
``labels`` and ``scores`` (N, 200); empty slots have score 0. Inputs are (N, 3, 300, 300) RGB,
scaled to [0, 1] and normalised with the ImageNet mean and std. Needs the onnx package
(requirements-dev.txt).
"""
import os
import warnings

import numpy as np
import torch

from src.checkpoints.published import local_path
from src.checkpoints.schema import load_model
from src.cli import ArgumentParser, fraction, run_cli
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from src.inference.export import ExportableSSD
from src.inference.runtime import metadata
from src.models.postprocess import Postprocessor
from src.models.specs import MODEL_NAMES
from src.utils.errors import UserError
from src.utils.outputs import OutputGuard

OPSETS = range(11, 21)  # exported and run with onnxruntime, raw and with NMS, in the tests


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrained-model", "--pretrained_model", required=True)
    p.add_argument("--model", choices=MODEL_NAMES, default=None, help="checked against the checkpoint if given")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--with-nms", action="store_true", help="decode and run NMS inside the graph")
    p.add_argument("--cls-threshold", type=fraction, default=0.05)
    p.add_argument("--nms-threshold", type=fraction, default=0.5)
    p.add_argument("--opset", type=int, choices=OPSETS, default=17, metavar=f"{OPSETS[0]}..{OPSETS[-1]}",
                   help="ONNX opset (the decoding in the graph needs 11 or later; tested up to 20)")
    return p


def dboxes_path(output: str) -> str:
    return os.path.splitext(output)[0] + ".dboxes.npy"


def export(module, path, decode, opset):
    names = ["boxes", "labels", "scores"] if decode else ["ploc", "plabel"]
    dummy = torch.randn(1, 3, 300, 300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, (dummy,), path, dynamo=False, opset_version=opset, input_names=["images"],
                          output_names=names, dynamic_axes={n: {0: "batch"} for n in ["images", *names]})


def add_metadata(path, entries: dict):
    import onnx
    graph = onnx.load(path)
    for key, value in entries.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, path)


def main(args):
    try:
        import onnx  # noqa: F401  (checked before the long export)
    except ImportError:
        raise UserError("export needs the onnx package: pip install -r requirements-dev.txt") from None
    guard = OutputGuard([local_path(args.pretrained_model)])
    guard.files([args.output] + ([] if args.with_nms else [dboxes_path(args.output)]), "--output")
    model, ids, names = load_model(args.pretrained_model, args.model)
    guard.claim()  # checked and loaded: nothing is written before this
    post = Postprocessor.for_spec(model.spec, score_threshold=args.cls_threshold, nms_threshold=args.nms_threshold,
                                  num_labels=len(ids))
    module = ExportableSSD(model, post, decode=args.with_nms).eval()
    export(module, args.output, args.with_nms, args.opset)
    entries = metadata(model.spec.name, model.spec.fig_size, IMAGENET_MEAN, IMAGENET_STD, ids, names,
                       post.score_threshold, post.nms_threshold, post.max_output)
    if not args.with_nms:
        entries["decoded"] = "0"
    add_metadata(args.output, entries)
    guard.record([args.output])
    print(f"{args.output}: {model.spec.name}, {len(names)} classes, "
          f"{'boxes/labels/scores (decoded in the graph)' if args.with_nms else 'ploc/plabel'}")
    if not args.with_nms:
        np.save(dboxes_path(args.output), post.coder.dboxes_cxcywh.numpy())
        guard.record([dboxes_path(args.output)])


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
