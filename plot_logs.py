"""Plot training loss and COCO mAP from a TensorBoard log folder into one PNG (matplotlib).

    python plot_logs.py --log-path runs/ssdlite --output curves.png
"""
import argparse
import os

import matplotlib
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.cli import run_cli
from src.errors import UserError

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log-path", required=True, help="the --log-path of train.py")
    p.add_argument("--output", default="curves.png")
    return p


def read_scalars(log_path: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the folder, ``{tag: [(step, value)]}``; a later run's value wins a step."""
    if not os.path.isdir(log_path):
        raise UserError(f"log folder {log_path} not found")
    events = EventAccumulator(log_path, size_guidance={"scalars": 0})
    events.Reload()
    series = {}
    for tag in events.Tags()["scalars"]:
        by_step = {e.step: e.value for e in events.Scalars(tag)}
        series[tag] = sorted(by_step.items())
    if not series:
        raise UserError(f"no scalars in {log_path}")
    return series


def main(args):
    series = read_scalars(args.log_path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for tag, name in [("train/loss", "total"), ("train/loss_loc", "loc"), ("train/loss_cls", "cls")]:
        if tag in series:
            steps, values = zip(*series[tag])
            left.plot(steps, values, label=name)
    left.set(xlabel="iteration", ylabel="training loss", title="MultiBox loss")
    left.legend()
    for tag in ["coco/AP50", "coco/AP", "coco/AP75"]:
        if tag in series:
            steps, values = zip(*series[tag])
            right.plot(steps, values, marker="o", label=tag.split("/")[1])
    right.set(xlabel="epoch", ylabel="COCO metric (val)", title="validation mAP", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=90)
    print(f"curves written to {args.output}")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
