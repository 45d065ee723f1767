"""The whole job on the built-in toy dataset: generate it, train SSDLite, evaluate, detect on an
image and a video, plot the curves. `make demo` runs this; a second run reuses what is there.

    python demo.py                       # the full demo (about 12 minutes on a 2-core CPU)
    python demo.py --epochs 1 --train-images 16 --val-images 4 --out /tmp/d --docs /tmp/d/docs
"""
import json
import os
import shutil
import subprocess
import sys
import time

import cv2

from src.cli import ArgumentParser, positive_float, positive_int, run_cli, training_batch_size
from src.data.dataset import coco_paths, load_coco
from src.data.toy_dataset import generate
from src.evaluation.coco_eval import coco_evaluate
from src.models.specs import MODEL_NAMES
from src.utils.errors import UserError
from src.utils.outputs import OutputGuard

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = ("demo_detection.jpg", "demo_curves.png", "demo_confusion.png", "demo_pr_curves.png")  # --docs copies


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/toy", help="toy dataset folder (generated if absent)")
    p.add_argument("--out", default="demo", help="checkpoints, logs and outputs go here")
    p.add_argument("--docs", default=None,
                   help="also copy the picture and the curves here (how the README's pictures are made)")
    p.add_argument("--train-images", type=positive_int, default=640)
    p.add_argument("--val-images", type=positive_int, default=100)
    p.add_argument("--image-size", type=positive_int, nargs=2, default=[240, 320], metavar=("H", "W"))
    p.add_argument("--model", choices=MODEL_NAMES, default="ssdlite",
                   help="the model trained from scratch (the others are 3-17x slower on a CPU: README's model table)")
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--batch-size", type=training_batch_size, default=8)
    p.add_argument("--lr", type=positive_float, default=0.1, help="for 32 images a step, as in train.py")
    p.add_argument("--seed", type=int, default=0)
    return p


def step(title, *cmd):
    print(f"\n==> {title}\n    {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    if subprocess.run([sys.executable, *cmd], cwd=HERE).returncode != 0:
        raise UserError(f"the step '{title}' failed (its message is above)")
    print(f"    ({time.perf_counter() - start:.0f} s)")


def ap_of(data: str, detections: str) -> float:
    """COCO AP of a detections file on the toy val split."""
    with open(detections) as f:
        results = json.load(f)
    return coco_evaluate(load_coco(coco_paths(data, "val")[0])[0], results, verbose=False).stats["AP"]


def make_clip(image_dir, path, frames=30, fps=5.0):
    """A short mp4 of the first val images, one per frame."""
    names = sorted(os.listdir(image_dir))[:frames]
    first = cv2.imread(os.path.join(image_dir, names[0]))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (first.shape[1], first.shape[0]))
    for name in names:
        writer.write(cv2.imread(os.path.join(image_dir, name)))
    writer.release()


def busiest_image(root):
    """The val image with the most objects (the first such by id): the most telling picture."""
    ann, images = coco_paths(root, "val")
    coco, _ = load_coco(ann)
    best = max(sorted(coco.imgs), key=lambda i: len(coco.imgToAnns.get(i, [])))
    return os.path.join(images, coco.imgs[best]["file_name"])


def main(args):
    out = os.path.abspath(args.out)
    outputs = os.path.join(out, "outputs")
    guard = OutputGuard([args.data])
    guard.folder(outputs, "--out")
    clip = guard.file(os.path.join(out, "clip.mp4"), "the demo clip")
    copies = [os.path.join(args.docs, n) for n in DOCS] if args.docs else []
    guard.files(copies, "--docs")
    guard.claim()
    if not os.path.exists(coco_paths(args.data, "val")[0]):
        print(f"==> generating the toy dataset in {args.data}")
        generate(args.data, args.train_images, args.val_images, seed=args.seed, size=tuple(args.image_size))
    else:
        print(f"==> reusing the toy dataset in {args.data}")
    ckpt = os.path.join(out, "trained_models", f"{args.model}.pth")
    step(f"training {args.model} from scratch (resumes if stopped; COCO mAP after each epoch)",
         "train.py", "--data-path", args.data, "--model", args.model, "--save-folder", os.path.dirname(ckpt),
         "--log-path", os.path.join(out, "runs", args.model), "--epochs", str(args.epochs),
         "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup", "50",
         "--multistep", str(max(1, args.epochs * 4 // 5)), "--num-workers", "1", "--seed", str(args.seed),
         "--no-pretrained-backbone", "--zoom-out", "1", "--amp", "--channels-last")
    val_images = coco_paths(args.data, "val")[1]
    report = os.path.join(outputs, "report")
    step("COCO mAP on the toy val split, and the evaluation report", "test_dataset.py", "--pretrained-model", ckpt,
         "--data-path", args.data, "--num-workers", "1", "--json", os.path.join(outputs, "detections.json"),
         "--report", report)
    onnx_file, onnx_json = os.path.join(outputs, f"{args.model}.onnx"), os.path.join(outputs, "detections_onnx.json")
    step("exporting it for deployment (ONNX, the decoding in the graph)", "export_onnx.py", "--pretrained-model",
         ckpt, "--output", onnx_file, "--with-nms")
    step("the exported model's COCO mAP on ONNX Runtime, without PyTorch", "test_dataset.py", "--pretrained-model",
         onnx_file, "--data-path", args.data, "--num-workers", "1", "--json", onnx_json)
    print(f"    COCO AP on the val split: PyTorch {ap_of(args.data, os.path.join(outputs, 'detections.json')):.4f}, "
          f"ONNX Runtime {ap_of(args.data, onnx_json):.4f}")
    picture = os.path.join(outputs, "detection.jpg")
    step("detecting on a val image", "test_image.py", "--pretrained-model", ckpt, "--input",
         busiest_image(args.data), "--output", picture)
    make_clip(val_images, clip)
    guard.record([clip])
    video = os.path.join(outputs, "clip_prediction.mp4")
    step("detecting on a short clip", "test_video.py", "--pretrained-model", ckpt, "--input", clip, "--output", video)
    curves = os.path.join(outputs, "curves.png")
    step("plotting the training curves", "plot_logs.py", "--log-path", os.path.join(out, "runs", args.model),
         "--output", curves)
    sources = [picture, curves, os.path.join(report, "confusion.png"), os.path.join(report, "pr_curves.png")]
    for source, copy in zip(sources, copies):
        shutil.copy(source, copy)
    guard.record(copies)
    print(f"\nDone. Checkpoint: {ckpt}\n      Outputs: {outputs} (detection.jpg, clip_prediction.mp4, "
          f"detections.json, curves.png, {args.model}.onnx)\n      Evaluation report: "
          f"{os.path.join(report, 'index.html')}"
          f"\n      TensorBoard: tensorboard --logdir {os.path.join(out, 'runs')}"
          f"\n      The web page: python app.py --pretrained-model {ckpt}")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
