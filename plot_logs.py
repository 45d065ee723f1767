"""Plot training loss and COCO mAP from a TensorBoard log folder into one PNG (matplotlib).

    python plot_logs.py --log-path runs/ssdlite --output curves.png
"""
import os

import matplotlib
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.cli import ArgumentParser, run_cli
from src.utils.errors import UserError
from src.utils.outputs import OutputGuard

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--log-path", required=True, help="the --log-path of train.py")
    p.add_argument("--output", default="curves.png")
    return p


def read_scalars(log_path: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the folder, ``{tag: [(step, value)]}``; a later run's value wins a step."""
    if os.path.isfile(log_path):
        raise UserError(f"--log-path {log_path} is a file: give the TensorBoard folder (train.py's --log-path)")
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


def check_output(path: str, log_path: str) -> OutputGuard:
    formats = plt.figure().canvas.get_supported_filetypes()
    if os.path.splitext(path)[1].lower().lstrip(".") not in formats:
        raise UserError(f"--output {path}: use one of the extensions {', '.join(sorted(formats))}")
    inputs = [log_path] + [os.path.join(root, f) for root, _, files in os.walk(log_path) for f in files]
    guard = OutputGuard(inputs)
    guard.file(path, "--output")
    guard.claim()
    return guard


def main(args):
    guard = check_output(args.output, args.log_path)
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
    guard.record([args.output])
    print(f"curves written to {args.output}")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
