"""What makes a short run on a small set learn: the training recipe's choices, one at a time.

Trains SSDLite (or a row's --model) from scratch on a toy set at a fixed short budget (batch 16, lr 0.01 for that
batch after a 50-iteration warm-up, 8 epochs of 400 images = 200 iterations) for every row and
seed, and prints one table of COCO AP on the toy val split (mean and the two seeds).

    python tools/ablation.py --out ablation/                 # every row, seeds 0 and 1
    python tools/ablation.py --out ablation/ --rows defaults old-defaults --seeds 0 1 2
    python tools/ablation.py --out ablation/ --style distractor --rows defaults no-empty-negatives

Every row is a set of train.py's flags (its "recipe variants" group holds those that exist
for studies), so the study runs the code users run. Each run is a process of its own; results
are appended to <out>/results.jsonl, and a run already there is not run again. The tables and
what they decided: docs/results.md.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BUDGET = ["--model", "ssdlite", "--batch-size", "16", "--lr", "0.02", "--warmup", "50", "--epochs", "8",
          "--multistep", "--eval-every", "8", "--no-pretrained-backbone", "--num-workers", "1"]

SIX_CROPS = ["--crop-ious", "0.1", "0.3", "0.5", "0.7", "0.9", "1"]  # the crop without its unconstrained option
# the defaults before this study: zoom-out 4, six crop options found by the paper's rule, plain
# momentum, images without objects adding nothing to the loss, colour channels shuffled
OLD = ["--zoom-out", "4", "--crop", "paper", "--no-nesterov", "--empty-negatives", "0", *SIX_CROPS,
       "--channel-shuffle", "0.5"]

ROWS = {  # name: train.py flags
    "old-defaults": OLD,
    "defaults": [],
    "zoom-out-4": ["--zoom-out", "4"],
    "crop-paper": ["--crop", "paper"],
    "six-crops": SIX_CROPS,
    "no-nesterov": ["--no-nesterov"],
    "decay-on-all": ["--decay-all"],
    "no-empty-negatives": ["--empty-negatives", "0"],
    "empty-images-left-out": ["--skip-empty-images"],
    "photometric-0.5": ["--photometric", "0.5"],
    "photometric-0": ["--photometric", "0"],
    "detach-first-map": ["--detach-first-map"],
    "warmup-300": ["--warmup", "300"],  # the default before issue 27: longer than this whole run
    "warmup-auto": ["--warmup", "auto"],  # today's default: 5% of the run (10 iterations here)
    "colour-nvidia": ["--colour", "nvidia"],  # NVIDIA's DALI colour distortion, on every image
    "ssdlite320-mnv3": ["--model", "ssdlite320-mnv3"],  # torchvision's SSDLite (the last --model wins)
}


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="data, runs and results.jsonl go here")
    p.add_argument("--rows", nargs="*", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    p.add_argument("--style", choices=["plain", "distractor"], default="plain",
                   help="the toy set (src/data/toy_dataset.py)")
    p.add_argument("--child", nargs=3, metavar=("ROW", "SEED", "DATA"), help=argparse.SUPPRESS)
    return p


# --- one run, in its own process -----------------------------------------------------------

def false_positives(checkpoint, data, min_score=0.3):
    """Detections scoring at least ``min_score`` per distractor-only val image (no object there)."""
    import torch

    from src.data.dataset import CocoDetection, coco_paths, eval_loader
    from src.evaluation.evaluate import evaluate
    from src.inference.detector import Detector
    ann, images = coco_paths(data, "val")
    detector = Detector.from_checkpoint(checkpoint)
    dataset = CocoDetection(images, ann, detector.transform)
    ids = set(dataset.coco.dataset.get("distractor_image_ids", []))
    if not ids:
        return None
    _, results = evaluate(detector.model, eval_loader(dataset, batch_size=8, num_workers=0), detector.postprocess,
                          torch.device("cpu"), category_ids=detector.category_ids)
    return sum(1 for r in results if r["image_id"] in ids and r["score"] >= min_score) / len(ids)


def child(row, seed, data, out):
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    import torch

    import train
    torch.set_num_threads(2)
    save = os.path.join(out, "runs", f"{os.path.basename(data)}-{row}-seed{seed}")
    args = train.get_args_parser().parse_args(
        [*BUDGET, *ROWS[row], "--data-path", data, "--save-folder", save, "--log-path", os.path.join(save, "tb"),
         "--seed", str(seed)])
    train.main(args)
    from src.checkpoints.schema import read_checkpoint
    checkpoint = os.path.join(save, f"{args.model}.pth")
    last = read_checkpoint(checkpoint)["history"][-1]
    result = {"row": row, "seed": seed, "style": os.path.basename(data), "AP": last["AP"], "AP50": last["AP50"],
              "loss": last["loss"], "fp_per_distractor_image": false_positives(checkpoint, data)}
    with open(os.path.join(out, "results.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


# --- the driver -------------------------------------------------------------------------------

def make_data(out, style):
    sys.path.insert(0, ROOT)
    from src.data.toy_dataset import generate
    data = os.path.join(out, f"toy-{style}")
    if not os.path.exists(os.path.join(data, "annotations", "instances_val2017.json")):
        generate(data, num_train=400, num_val=100, seed=0, size=(240, 320), style=style)
    return data


def read_results(out):
    path = os.path.join(out, "results.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(results, rows, style):
    lines = ["| row | AP (mean) | AP per seed | AP50 (mean) | false positives / distractor image |",
             "|---|---|---|---|---|"]
    for row in rows:
        runs = sorted((r for r in results if r["row"] == row and r["style"] == f"toy-{style}"),
                      key=lambda r: r["seed"])
        if not runs:
            continue
        fp = [r["fp_per_distractor_image"] for r in runs if r["fp_per_distractor_image"] is not None]
        per_seed = " / ".join(f"{r['AP']:.3f}" for r in runs)
        fps = " / ".join(f"{v:.2f}" for v in fp) if fp else "-"
        lines.append(f"| {row} | {statistics.mean(r['AP'] for r in runs):.3f} | {per_seed} | "
                     f"{statistics.mean(r['AP50'] for r in runs):.3f} | {fps} |")
    return "\n".join(lines)


def main(args):
    os.makedirs(args.out, exist_ok=True)
    if args.child:
        row, seed, data = args.child
        return child(row, int(seed), data, args.out)
    data = make_data(args.out, args.style)
    done = {(r["row"], r["seed"], r["style"]) for r in read_results(args.out)}
    for seed in args.seeds:
        for row in args.rows:
            if (row, seed, f"toy-{args.style}") in done:
                continue
            print(f"==> {row}, seed {seed}", flush=True)
            subprocess.run([sys.executable, __file__, "--out", args.out, "--child", row, str(seed), data],
                           check=True, stdout=subprocess.DEVNULL)
            print(table(read_results(args.out), [row], args.style).splitlines()[-1], flush=True)
    print(table(read_results(args.out), args.rows, args.style))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
