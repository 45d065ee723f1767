"""Export a checkpoint (ours, the original's or NVIDIA's) to ONNX, with a dynamic batch axis.

    python export_onnx.py --pretrained-model trained_models/ssd.pth --output ssd.onnx
    python export_onnx.py --pretrained-model SSD.pth --output ssd_nms.onnx --with-nms
    python export_onnx.py --pretrained-model lite.pth --output lite_int8.onnx --with-nms --int8 --data-path /coco

Without --with-nms the graph outputs the raw ``ploc`` (N, 4, B) and ``plabel`` (N, C, B), and the
default boxes (B, 4, normalised cxcywh: centre x, centre y, width, height) go to
<output>.dboxes.npy beside it. With --with-nms it outputs ``boxes`` (N, M, 4, normalised ltrb),
``labels`` and ``scores`` (N, M), M the model's detections per image (200; 300 for ssdlite320-mnv3);
empty slots have score 0. Inputs are (N, 3, S, S) RGB, S the model's input size (300; 512 for
ssd512, 320 for ssdlite320-mnv3), normalised as the model's weights expect (ImageNet's mean and std;
torchvision's models their own). The file's metadata carries the model name, input size, mean and
std, the resize, thresholds and categories: test_image.py, test_video.py and
test_dataset.py run a --with-nms file on ONNX Runtime or OpenVINO without PyTorch. --int8
quantizes the convolutions from images of the training split (the decoding stays float) and
prints the COCO AP of both on the val split. Needs the onnx package (requirements-dev.txt).
"""
import os
import sys
import tempfile

import numpy as np

from src.checkpoints.published import local_path
from src.checkpoints.schema import load_model
from src.cli import ArgumentParser, fraction, positive_int, run_cli
from src.data.categories import match_by_name
from src.data.dataset import dataset_from, read_source
from src.data.formats import DEFAULT_SPLITS, detect_format, source
from src.evaluation.evaluate import evaluate_images
from src.inference.export import ExportableSSD, add_metadata, export_file, model_metadata
from src.inference.quantize import quantize
from src.inference.runtime import ExportedDetector
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
    p.add_argument("--cls-threshold", type=fraction, default=None,
                   help="the graph's score threshold (default: the model's own, 0.05; torchvision's models' own)")
    p.add_argument("--nms-threshold", type=fraction, default=None,
                   help="the graph's NMS IoU (default: the model's own, 0.5; torchvision's models' own)")
    p.add_argument("--opset", type=int, choices=OPSETS, default=17, metavar=f"{OPSETS[0]}..{OPSETS[-1]}",
                   help="ONNX opset (the decoding in the graph needs 11 or later; tested up to 20)")
    int8 = p.add_argument_group("INT8 (with --with-nms)")
    int8.add_argument("--int8", action="store_true", help="post-training static quantization of the convolutions")
    int8.add_argument("--data-path", help="the dataset (any layout test_dataset.py reads) to calibrate on and check")
    int8.add_argument("--calibration-split", default=None, help="default: the training split")
    int8.add_argument("--calibration-images", type=positive_int, default=200, help="images to calibrate on")
    int8.add_argument("--check-split", default=None, help="where fp32's and INT8's AP are compared (default: val)")
    int8.add_argument("--max-drop", type=fraction, default=0.01,
                      help="an AP drop above this is warned about loudly (default one AP point)")
    return p


def dboxes_path(output: str) -> str:
    return os.path.splitext(output)[0] + ".dboxes.npy"


def main(args):
    try:
        import onnx  # noqa: F401  (checked before the long export)
    except ImportError:
        raise UserError("export needs the onnx package: pip install -r requirements-dev.txt") from None
    if args.int8 and not (args.with_nms and args.data_path):
        raise UserError("--int8 quantizes a --with-nms export and calibrates on --data-path: give both")
    splits = int8_splits(args) if args.int8 else None
    guard = OutputGuard([local_path(args.pretrained_model)])
    guard.files([args.output] + ([] if args.with_nms else [dboxes_path(args.output)]), "--output")
    model, ids, names = load_model(args.pretrained_model, args.model)
    guard.claim()  # checked and loaded: nothing is written before this
    post = Postprocessor.for_spec(model.spec, score_threshold=args.cls_threshold, nms_threshold=args.nms_threshold,
                                  num_labels=len(ids))
    module = ExportableSSD(model, post, decode=args.with_nms).eval()
    if args.int8:
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = os.path.join(tmp, "fp32.onnx")
            export_file(module, fp32, True, args.opset, model.spec.fig_size)
            add_metadata(fp32, model_metadata(model.spec, ids, names, post))
            calibrate_and_check(args, fp32, splits)
        guard.record([args.output])
        return
    export_file(module, args.output, args.with_nms, args.opset, model.spec.fig_size)
    entries = model_metadata(model.spec, ids, names, post)
    if not args.with_nms:
        entries["decoded"] = "0"
    add_metadata(args.output, entries)
    guard.record([args.output])
    print(f"{args.output}: {model.spec.name}, {len(names)} classes, "
          f"{'boxes/labels/scores (decoded in the graph)' if args.with_nms else 'ploc/plabel'}")
    if not args.with_nms:
        np.save(dboxes_path(args.output), post.coder.dboxes_cxcywh.numpy())
        guard.record([dboxes_path(args.output)])


def int8_splits(args):
    """The calibration images and the split where the two APs are compared, checked before export."""
    fmt = detect_format(args.data_path)
    calibration = source(args.data_path, args.calibration_split or DEFAULT_SPLITS[fmt][0], fmt,
                         "--calibration-split")
    check = source(args.data_path, args.check_split or DEFAULT_SPLITS[fmt][1], fmt, "--check-split")
    images = [os.path.join(calibration.image_dir, im["file_name"]) for im in read_source(calibration)["images"]]
    rng = np.random.default_rng(0)
    chosen = sorted(rng.choice(images, size=min(args.calibration_images, len(images)), replace=False).tolist())
    return chosen, check


def calibrate_and_check(args, fp32: str, splits):
    """Quantize ``fp32`` to --output, and print both models' AP on the check split."""
    images, check = splits
    print(f"calibrating INT8 on {len(images)} images of {os.path.commonpath([os.path.dirname(p) for p in images])} ...")
    quantize(fp32, args.output, images)
    dataset = dataset_from(check, None)
    fp32_ap = ap_of(fp32, "onnxruntime", dataset)
    print(f"COCO AP on {dataset.annotation_file}: fp32 {fp32_ap:.4f}")
    for backend in ("onnxruntime", "openvino") if has_openvino() else ("onnxruntime",):
        drop = fp32_ap - ap_of(args.output, backend, dataset)
        print(f"  INT8 on {backend}: {fp32_ap - drop:.4f} (drop {drop:.4f})")
        if drop > args.max_drop:
            print(f"WARNING: INT8 on {backend} loses {drop:.4f} AP, more than --max-drop {args.max_drop:g}: "
                  "calibrate on more images (--calibration-images), or deploy the fp32 export there",
                  file=sys.stderr)
    print(f"{args.output}: INT8 written")


def ap_of(path: str, backend: str, dataset) -> float:
    detector = ExportedDetector(path, backend, cls_threshold=0.0)  # the export's own threshold
    ids, _ = match_by_name((detector.category_ids, detector.category_names), dataset.categories)
    evaluation, _ = evaluate_images(detector, dataset, 8, category_ids=ids, verbose=False)
    return evaluation.stats["AP"]


def has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
