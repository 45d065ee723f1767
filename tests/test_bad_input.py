"""Bad input, as users make it, across every script: each case must end with the right exit
status and one line on stderr (no traceback), and leave every file that was there before
byte-identical: the dataset, the photo, the clip, the checkpoints, the logs.

The scripts run in this process (their ``main`` through ``run_cli``, as ``__main__`` does),
which keeps the table fast; ``test_the_table_holds_in_a_real_process`` runs a few cases as
real commands to show that the two agree.
"""
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import cv2
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from src.cli import run_cli
from src.models.ssd import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def training_checkpoint(path):
    """A checkpoint in train.py's form, of an untrained SSDLite on the toy categories (made in
    this process: the table needs no training)."""
    torch.manual_seed(0)
    model = build_model("ssdlite", 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": {}, "scaler": None,
                "epoch": 1, "iteration": 3, "progress": None, "rng": [], "model_name": "ssdlite", "num_classes": 5,
                "category_ids": [2, 5, 9, 14], "category_names": ["circle", "square", "triangle", "cross"],
                "best_map": 0.0, "history": [], "args": {}}, path)


@pytest.fixture(scope="session")
def template(toy_root, tmp_path_factory):
    """What every case starts from: the toy set, a checkpoint, a photo, a clip, a save folder
    holding a training checkpoint, and a TensorBoard folder."""
    root = tmp_path_factory.mktemp("template")
    shutil.copytree(toy_root, root / "toy")
    training_checkpoint(root / "ckpt.pth")
    with SummaryWriter(str(root / "tb")) as writer:
        writer.add_scalar("train/loss", 1.0, 0)
    (root / "save").mkdir()
    shutil.copy(root / "ckpt.pth", root / "save" / "ssdlite.pth")
    val = root / "toy" / "val2017"
    shutil.copy(val / sorted(os.listdir(val))[0], root / "photo.jpg")
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (320, 240))
    for name in sorted(os.listdir(val)):
        writer.write(cv2.imread(str(val / name)))
    writer.release()
    (root / "notes.json").write_text('{"mine": true}')  # files the user owns
    (root / "mine.jpg").write_bytes((root / "photo.jpg").read_bytes()[::-1])
    (root / "a_file").write_text("x")
    return root


@pytest.fixture()
def sandbox(template, tmp_path):
    root = tmp_path / "box"
    shutil.copytree(template, root, symlinks=True)
    return root


def hashes(root) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def load_script(script: str):
    """The top-level script as a module (by path: ``test_dataset`` is also a test module's name)."""
    name = "script_" + script.removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, script))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def run_script(script: str, argv: list[str], monkeypatch) -> int:
    """``python <script> argv`` in this process: the exit status."""
    module = load_script(script)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    try:
        run_cli(module.main, module.get_args_parser().parse_args(argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0


# --- how the cases change the sandbox before running -------------------------------------------

def edit_json(path, change):
    def setup(box):
        file = box / path
        data = json.loads(file.read_text())
        change(data)
        file.write_text(json.dumps(data))
    return setup


VAL = "toy/annotations/instances_val2017.json"
TRAIN = "toy/annotations/instances_train2017.json"


def symlink_to_photo(box):
    os.symlink(box / "photo.jpg", box / "link.jpg")


def hard_link_to_photo(box):
    os.link(box / "photo.jpg", box / "hard.jpg")


def truncate_photo(box):
    (box / "cut.jpg").write_bytes((box / "photo.jpg").read_bytes()[:3000])


def text_file(box):
    (box / "text.txt").write_text("hello, not an image and not a checkpoint")


def truncated_checkpoint(box):
    (box / "cut.pth").write_bytes((box / "ckpt.pth").read_bytes()[:5000])


def second_photo_of_the_same_name(box):
    for sub in ("a", "b"):
        (box / sub).mkdir()
        shutil.copy(box / "photo.jpg", box / sub / "x.jpg")


def stale_best(box):
    (box / "save2").mkdir()
    shutil.copy(box / "ckpt.pth", box / "save2" / "ssdlite_best.pth")


def not_a_dataset(box):
    (box / "stuff").mkdir()
    (box / "stuff" / "todo.txt").write_text("my notes")


def voc_with_a_broken_xml(box):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (box / "voc" / folder).mkdir(parents=True)
    (box / "voc" / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    (box / "voc" / "Annotations" / "a.xml").write_text("<annotation><size>")
    shutil.copy(box / "photo.jpg", box / "voc" / "JPEGImages" / "a.jpg")


def yolo_with_a_short_line(box):
    for split in ("train", "val"):
        (box / "yolo" / "images" / split).mkdir(parents=True)
        (box / "yolo" / "labels" / split).mkdir(parents=True)
        shutil.copy(box / "photo.jpg", box / "yolo" / "images" / split / "a.jpg")
        (box / "yolo" / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.2\n")
    (box / "yolo" / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [thing]\n")


def voc_of_labelimg(box):
    """Annotations/ and JPEGImages/ without ImageSets/, a classes.txt that lacks one class."""
    for folder in ("Annotations", "JPEGImages"):
        (box / "voc" / folder).mkdir(parents=True)
    (box / "voc" / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>320</width><height>240</height></size><object>"
        "<name>Dog</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object>"
        "</annotation>")
    (box / "voc" / "classes.txt").write_text("cat\n")
    shutil.copy(box / "photo.jpg", box / "voc" / "JPEGImages" / "a.jpg")


def yolo_without_val(box):
    yolo_with_a_short_line(box)
    for split in ("train", "val"):
        (box / "yolo" / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (box / "yolo" / "data.yaml").write_text("path: .\ntrain: images/train\ntest: images/val\nnames: [thing]\n")


def no_categories_match(data):
    data["annotations"][0]["category_id"] = 99


def rename_a_scored_category(data):
    next(c for c in data["categories"] if c["id"] == data["annotations"][0]["category_id"])["name"] = "star"


def listed_twice(data):
    data["images"].append({**data["images"][0], "id": 9999})


def all_negative(data):
    for a in data["annotations"]:
        a["bbox"] = [10, 10, -4, -4]


TRAIN_ARGS = ["--data-path", "{box}/toy", "--model", "ssdlite", "--batch-size", "4", "--epochs", "1",
              "--num-workers", "0", "--no-pretrained-backbone", "--eval-every", "0", "--log-path", "{box}/runs"]
IMAGE = ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/photo.jpg"]
DATASET = ["--pretrained-model", "{box}/ckpt.pth", "--data-path", "{box}/toy", "--num-workers", "0"]
VIDEO = ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/clip.mp4"]
EXPORT = ["--pretrained-model", "{box}/ckpt.pth"]

# (id, script, arguments, setup or None, exit status, what the one line must say)
CASES = [
    # outputs that would land on inputs, or on files we did not write
    ("image-json-onto-the-photo", "test_image.py", [*IMAGE, "--json", "{box}/photo.jpg"], None, 1, "is an input"),
    ("image-output-onto-the-photo", "test_image.py", [*IMAGE, "--output", "{box}/photo.jpg"], None, 1, "is an input"),
    ("image-output-symlink-to-input", "test_image.py", [*IMAGE, "--output", "{box}/link.jpg"], symlink_to_photo, 1,
     "is an input"),
    ("image-output-hard-link-to-input", "test_image.py", [*IMAGE, "--output", "{box}/hard.jpg"], hard_link_to_photo,
     1, "is an input"),
    ("image-output-onto-the-photo-through-a-missing-folder", "test_image.py",
     [*IMAGE, "--output", "{box}/nodir/../photo.jpg"], None, 1, "is an input"),
    ("image-json-onto-the-checkpoint", "test_image.py", [*IMAGE, "--json", "{box}/ckpt.pth"], None, 1,
     "is an input"),
    ("image-json-onto-a-user-file", "test_image.py", [*IMAGE, "--json", "{box}/notes.json"], None, 1,
     "not written by this project"),
    ("image-output-onto-a-user-picture", "test_image.py", [*IMAGE, "--output", "{box}/mine.jpg"], None, 1,
     "not written by this project"),
    ("image-json-is-a-folder", "test_image.py", [*IMAGE, "--json", "{box}/toy"], None, 1, "is a folder"),
    ("image-output-under-a-file", "test_image.py", [*IMAGE, "--output", "{box}/a_file/out.jpg"], None, 1,
     "is a file, not a folder"),
    ("image-output-not-an-image-name", "test_image.py", [*IMAGE, "--output", "{box}/out.pth"], None, 1,
     "cannot write a picture"),
    ("image-one-output-for-two-inputs", "test_image.py",
     ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/*/x.jpg", "--output", "{box}/out.jpg"],
     second_photo_of_the_same_name, 1, "names one picture"),
    # inputs that are not what they should be
    ("image-input-missing", "test_image.py", ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/no.jpg"],
     None, 1, "no image found"),
    ("image-input-not-an-image", "test_image.py", ["--pretrained-model", "{box}/ckpt.pth", "--input",
                                                   "{box}/text.txt"], text_file, 1, "not an image"),
    ("image-input-truncated", "test_image.py", ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/cut.jpg"],
     truncate_photo, 1, "truncated"),
    ("checkpoint-is-a-folder", "test_image.py", ["--pretrained-model", "{box}/toy", "--input", "{box}/photo.jpg"],
     None, 1, "is a folder, not a checkpoint"),
    ("checkpoint-is-text", "test_image.py", ["--pretrained-model", "{box}/text.txt", "--input", "{box}/photo.jpg"],
     text_file, 1, "not a checkpoint"),
    ("checkpoint-truncated", "test_image.py", ["--pretrained-model", "{box}/cut.pth", "--input", "{box}/photo.jpg"],
     truncated_checkpoint, 1, "truncated or corrupt"),
    ("checkpoint-missing", "test_image.py", ["--pretrained-model", "{box}/none.pth", "--input", "{box}/photo.jpg"],
     None, 1, "does not exist"),
    ("checkpoint-other-architecture", "test_image.py", [*IMAGE, "--model", "ssd"], None, 1, "not ssd"),
    # flags out of range, refused by argparse (exit status 2)
    ("device-unknown", "test_image.py", [*IMAGE, "--device", "foo"], None, 2, "not a device"),
    ("cls-threshold-above-1", "test_image.py", [*IMAGE, "--cls-threshold", "1.5"], None, 2, r"not in \[0, 1\]"),
    ("batch-size-zero", "test_dataset.py", [*DATASET, "--batch-size", "0"], None, 2, "below 1"),
    ("workers-negative", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--num-workers", "-1"], None, 2,
     "below 0"),
    ("warmup-negative", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--warmup", "-5"], None, 2,
     "below 0"),
    ("epochs-not-a-number", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--epochs", "two"], None, 2,
     "not an integer"),
    ("image-batch-size-zero", "test_image.py", [*IMAGE, "--batch-size", "0"], None, 2, "below 1"),
    ("video-batch-size-zero", "test_video.py", [*VIDEO, "--batch-size", "0"], None, 2, "below 1"),
    ("benchmark-repeats-zero", "benchmark.py", ["--repeats", "0"], None, 2, "below 1"),
    ("nms-threshold-negative", "test_video.py", [*VIDEO, "--nms-threshold", "-0.1"], None, 2, r"not in \[0, 1\]"),
    ("draw-threshold-nan", "test_dataset.py", [*DATASET, "--draw-threshold", "nan"], None, 2, "not a finite"),
    ("lr-negative", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--lr", "-1"], None, 2, "not above 0"),
    ("lr-nan", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--lr", "nan"], None, 2, "not a finite"),
    ("lr-word", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--lr", "fast"], None, 2, "not a number"),
    ("backbone-weights-unknown", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--backbone-weights", "V3"],
     None, 2, "invalid choice"),
    ("backbone-weights-of-another-backbone", "train.py",
     [*TRAIN_ARGS, "--save-folder", "{box}/s", "--backbone-weights", "IMAGENET1K_FEATURES"], None, 2,
     "ssdlite's backbone has IMAGENET1K_V1, IMAGENET1K_V2"),
    ("finetune-from-a-missing-file", "train.py",
     [*TRAIN_ARGS, "--save-folder", "{box}/s", "--finetune-from", "{box}/nowhere.pth"], None, 1,
     "nowhere.pth does not exist"),
    ("finetune-from-another-architecture", "train.py",
     [*TRAIN_ARGS, "--model", "ssdlite320-mnv3", "--save-folder", "{box}/s", "--finetune-from", "{box}/ckpt.pth"],
     None, 1, "holds an ssdlite model, not ssdlite320-mnv3"),
    ("colour-unknown", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--colour", "sepia"], None, 2,
     "invalid choice"),
    ("channel-shuffle-with-nvidia-colour", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--colour",
                                                        "nvidia", "--channel-shuffle", "0.5"], None, 2,
     "--channel-shuffle is a step of --colour paper"),
    ("momentum-negative", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--momentum", "-1"], None, 2,
     r"not in \[0, 1\)"),
    ("weight-decay-negative", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--weight-decay", "-1"], None,
     2, "below 0"),
    ("batch-size-one", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--batch-size", "1"], None, 2,
     "below 2"),
    ("zoom-out-zero", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--zoom-out", "0"], None, 2, "below 1"),
    ("max-bad-images-above-1", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--max-bad-images", "2"],
     None, 2, r"not in \[0, 1\]"),
    ("opset-unsupported", "export_onnx.py", [*EXPORT, "--output", "{box}/m.onnx", "--opset", "7"], None, 2,
     "invalid choice"),
    # test_dataset.py
    ("dataset-json-onto-the-annotations", "test_dataset.py", [*DATASET, "--json", "{box}/" + VAL], None, 1,
     "is an input"),
    ("dataset-output-onto-the-images", "test_dataset.py", [*DATASET, "--output", "{box}/toy/val2017"], None, 1,
     "a folder this command reads"),
    ("dataset-output-is-a-file", "test_dataset.py", [*DATASET, "--output", "{box}/photo.jpg"], None, 1,
     "is a file, not a folder"),
    ("dataset-output-unwritable", "test_dataset.py", [*DATASET, "--output", "/proc/ssd_pictures"], None, 1,
     "cannot write in --output"),
    ("dataset-checkpoint-other-architecture", "test_dataset.py", [*DATASET, "--model", "ssd"], None, 1, "not ssd"),
    ("report-onto-the-images", "test_dataset.py", [*DATASET, "--report", "{box}/toy/val2017"], None, 1,
     "a folder this command reads"),
    ("report-is-a-file", "test_dataset.py", [*DATASET, "--report", "{box}/photo.jpg"], None, 1,
     "is a file, not a folder"),
    ("report-onto-a-user-page", "test_dataset.py", [*DATASET, "--report", "{box}/site"],
     lambda box: (box / "site").mkdir() or (box / "site" / "index.html").write_text("<p>mine</p>"), 1,
     "index.html exists and was not written by this project"),
    ("voc-xml-malformed", "test_dataset.py", [*DATASET[:2], "--data-path", "{box}/voc"], voc_with_a_broken_xml, 1,
     "VOC annotation .*a.xml is not valid XML"),
    ("yolo-line-of-four", "train.py", [*TRAIN_ARGS[2:], "--data-path", "{box}/yolo/data.yaml", "--save-folder",
                                        "{box}/s"], yolo_with_a_short_line, 1, "a.txt line 1: 4 numbers, expected 5"),
    ("dataset-missing", "test_dataset.py", [*DATASET[:2], "--data-path", "{box}/nowhere"], None, 1, "not found"),
    ("annotations-are-a-folder", "test_dataset.py", [*DATASET[:2], "--annotations", "{box}/toy", "--images",
                                                      "{box}/toy/val2017"], None, 1, "is a folder, not a JSON"),
    ("category-not-in-categories", "test_dataset.py", DATASET, edit_json(VAL, no_categories_match), 1,
     r"1 annotations have a 'category_id' that is not in 'categories' \(first: annotation 1, category_id 99\)"),
    ("image-without-file-name", "test_dataset.py", DATASET, edit_json(VAL, lambda d: d["images"][1].pop("file_name")),
     1, "1 images have no 'file_name' \\(first: image id 2\\)"),
    ("duplicate-image-ids", "test_dataset.py", DATASET, edit_json(VAL, lambda d: d["images"][1].update(id=1)), 1,
     "repeat an 'id' used before"),
    ("image-listed-twice", "test_dataset.py", DATASET, edit_json(VAL, listed_twice), 1, "listed before"),
    ("mixed-id-types", "test_dataset.py", DATASET, edit_json(VAL, lambda d: d["images"][2].update(id="3")), 1,
     "not an integer"),
    ("box-with-nan", "test_dataset.py", DATASET,
     edit_json(VAL, lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4])), 1, "bad 'bbox'"),
    ("no-images", "test_dataset.py", DATASET, edit_json(VAL, lambda d: d.update(images=[], annotations=[])), 1,
     "lists no images"),
    ("images-folder-missing", "test_dataset.py", DATASET, lambda box: shutil.rmtree(box / "toy" / "val2017"), 1,
     "image folder .* not found"),
    # test_video.py
    ("video-output-onto-the-input", "test_video.py", [*VIDEO, "--output", "{box}/clip.mp4"], None, 1, "is an input"),
    ("video-input-is-a-photo", "test_video.py", ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/photo.jpg"],
     None, 1, "still image"),
    ("video-input-is-a-folder", "test_video.py", ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/toy"],
     None, 1, "is a folder"),
    ("video-camera-absent", "test_video.py", ["--pretrained-model", "{box}/ckpt.pth", "--input", "7", "--output",
                                              "{box}/cam.mp4"], None, 1, "cannot open camera 7"),
    ("video-input-not-a-video", "test_video.py",
     ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/text.txt", "--output", "{box}/o.mp4"], text_file, 1,
     "cannot open .* as a video"),
    ("video-checkpoint-truncated", "test_video.py",
     ["--pretrained-model", "{box}/cut.pth", "--input", "{box}/clip.mp4"], truncated_checkpoint, 1,
     "truncated or corrupt"),
    ("video-output-not-a-video-name", "test_video.py", [*VIDEO, "--output", "{box}/out.txt"], None, 1, ".mp4 or .avi"),
    ("track-on-a-photo", "test_video.py", ["--pretrained-model", "{box}/ckpt.pth", "--input", "{box}/photo.jpg",
                                           "--track"], None, 1, "--track follows objects .* still image"),
    ("tracks-without-track", "test_video.py", [*VIDEO, "--tracks", "{box}/t.csv"], None, 1, "add --track"),
    ("tracks-not-a-table-name", "test_video.py", [*VIDEO, "--track", "--tracks", "{box}/t.txt"], None, 1,
     r"\.csv or \.json"),
    ("tracks-onto-a-user-file", "test_video.py", [*VIDEO, "--track", "--tracks", "{box}/notes.json"], None, 1,
     "not written by this project"),
    ("tracks-onto-the-clip", "test_video.py", [*VIDEO, "--output", "{box}/o.mp4", "--track", "--tracks",
                                               "{box}/clip.json"],
     lambda box: os.link(box / "clip.mp4", box / "clip.json"), 1, "is an input"),
    ("tile-larger-than-the-frames", "test_video.py", [*VIDEO, "--tile", "640"], None, 1,
     r"--tile 640 is larger than the image \(320x240\)"),
    ("tile-overlap-of-one", "test_video.py", [*VIDEO, "--tile", "300", "--tile-overlap", "1"], None, 2,
     r"not in \[0, 1\)"),
    ("tile-under-the-input-size", "test_image.py", [*IMAGE, "--tile", "200"], None, 1,
     r"under the model's input size \(300 px\)"),
    ("tile-larger-than-the-photo", "test_image.py", [*IMAGE, "--tile", "400"], None, 1, "larger than the image"),
    ("tile-overlap-without-tile", "test_image.py", [*IMAGE, "--tile-overlap", "0.5"], None, 1, "needs --tile"),
    ("tile-larger-than-every-image", "test_dataset.py", [*DATASET, "--tile", "1000"], None, 1,
     "larger than every image"),
    ("tile-overlap-negative", "test_dataset.py", [*DATASET, "--tile", "320", "--tile-overlap", "-0.1"], None, 2,
     r"not in \[0, 1\)"),
    # export_onnx.py
    ("export-onto-the-checkpoint", "export_onnx.py", [*EXPORT, "--output", "{box}/ckpt.pth"], None, 1, "is an input"),
    ("export-side-file-onto-a-user-file", "export_onnx.py", [*EXPORT, "--output", "{box}/notes.onnx"],
     lambda box: (box / "notes.dboxes.npy").write_bytes(b"mine"), 1, "not written by this project"),
    ("export-output-is-a-folder", "export_onnx.py", [*EXPORT, "--output", "{box}/toy"], None, 1, "is a folder"),
    # plot_logs.py
    ("plot-onto-a-log-file", "plot_logs.py", ["--log-path", "{box}/tb", "--output", "{box}/tb/curves.png"],
     lambda box: os.link(next((box / "tb").iterdir()), box / "tb" / "curves.png"), 1, "is an input"),
    ("plot-log-path-is-a-file", "plot_logs.py", ["--log-path", "{box}/photo.jpg", "--output", "{box}/c.png"], None, 1,
     "is a file"),
    ("plot-unknown-format", "plot_logs.py", ["--log-path", "{box}/tb", "--output", "{box}/c.docx"], None, 1,
     "use one of the extensions"),
    # train.py
    ("save-folder-is-a-file", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/photo.jpg"], None, 1,
     "is a file, not a folder"),
    ("save-folder-is-the-images", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/toy/train2017"], None, 1,
     "a folder this command reads"),
    ("save-folder-under-a-file", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/a_file/sub"], None, 1,
     "a_file is a file, not a folder"),
    ("save-folder-unwritable", "train.py", [*TRAIN_ARGS, "--save-folder", "/proc/ssd_save"], None, 1,
     "cannot write in --save-folder"),
    ("log-path-is-a-file", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s", "--log-path", "{box}/photo.jpg"],
     None, 1, "is a file, not a folder"),
    ("finetune-from-the-checkpoint-it-would-write", "train.py",
     [*TRAIN_ARGS, "--save-folder", "{box}/save", "--finetune-from", "{box}/save/ssdlite.pth"], None, 1,
     "is where this run saves"),
    ("best-checkpoint-of-another-run", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/save2"], stale_best, 1,
     "left from an earlier run"),
    ("train-category-not-in-categories", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s"],
     edit_json(TRAIN, no_categories_match), 1, "'category_id' that is not in 'categories'"),
    ("train-images-folder-missing", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s"],
     lambda box: shutil.rmtree(box / "toy" / "train2017"), 1, "image folder .* not found"),
    ("train-boxes-all-negative", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s"],
     edit_json(TRAIN, all_negative), 1, "no annotation .* is a usable box"),
    ("train-images-mostly-missing", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s"],
     lambda box: [p.unlink() for p in sorted((box / "toy" / "train2017").iterdir())[:3]], 1,
     "3 of the 12 images .* are missing"),
    # categories matched by name: other names on the same ids are refused
    ("dataset-category-of-another-name", "test_dataset.py", DATASET, edit_json(VAL, rename_a_scored_category), 1,
     "has categories the model was not trained on: 'star'"),
    ("image-annotations-of-other-names", "test_image.py", [*IMAGE, "--annotations", "{box}/" + VAL],
     edit_json(VAL, rename_a_scored_category), 1, "not trained on: 'star'"),
    ("video-annotations-of-other-names", "test_video.py", [*VIDEO, "--annotations", "{box}/" + VAL],
     edit_json(VAL, rename_a_scored_category), 1, "not trained on: 'star'"),
    ("train-val-of-other-names", "train.py", [*TRAIN_ARGS, "--save-folder", "{box}/s"],
     edit_json(VAL, rename_a_scored_category), 1, "instances_val2017.json has categories the model was not"),
    # exported models
    ("image-onnx-not-a-model", "test_image.py", ["--pretrained-model", "{box}/m.onnx", "--input", "{box}/photo.jpg"],
     lambda box: (box / "m.onnx").write_text("not a model"), 1, "is not a model ONNX Runtime can load"),
    ("video-onnx-missing", "test_video.py", ["--pretrained-model", "{box}/none.onnx", "--input", "{box}/clip.mp4"],
     None, 1, "exported model .*none.onnx does not exist"),
    ("dataset-onnx-on-openvino-not-a-model", "test_dataset.py",
     ["--pretrained-model", "{box}/m.onnx", "--backend", "openvino", "--data-path", "{box}/toy"],
     lambda box: (box / "m.onnx").write_text("not a model"), 1, "is not a model OpenVINO can load"),
    # the forms datasets come in
    ("voc-class-missing-from-classes-txt", "test_dataset.py", [*DATASET[:2], "--data-path", "{box}/voc"],
     voc_of_labelimg, 1, r"a\.xml has an object of class 'Dog', which .*classes\.txt does not list"),
    ("voc-without-split-lists-train", "train.py", [*TRAIN_ARGS[2:], "--data-path", "{box}/voc", "--save-folder",
                                                   "{box}/s"], voc_of_labelimg, 1,
     "no ImageSets/Main/ lists .* choose it with --train-split all"),
    ("yolo-split-missing", "train.py", [*TRAIN_ARGS[2:], "--data-path", "{box}/yolo/data.yaml", "--save-folder",
                                        "{box}/s"], yolo_without_val, 1,
     r"has no split 'val' \(its splits are train, test\): choose one with --val-split"),
    ("coco-split-missing", "test_dataset.py", [*DATASET, "--split", "valid"], None, 1,
     r"has no split 'valid' \(its splits are train, val\): choose one with --split"),
    # app.py: refused at start, in one line (what the page refuses: test_app.py)
    ("app-folder-without-checkpoints", "app.py", ["--checkpoints", "{box}/toy", "--port", "0"], None, 1,
     r"no checkpoint in .*toy: it holds no \.pth, \.pt, \.onnx file"),
    ("app-folder-missing", "app.py", ["--checkpoints", "{box}/nothing", "--port", "0"], None, 1,
     "--checkpoints .*nothing does not exist"),
    ("app-checkpoints-is-a-file", "app.py", ["--checkpoints", "{box}/photo.jpg", "--port", "0"], None, 1,
     "photo.jpg is not a folder"),
    ("app-first-model-truncated", "app.py", ["--pretrained-model", "{box}/cut.pth", "--port", "0"],
     truncated_checkpoint, 1, "truncated or corrupt"),
    ("app-first-model-missing", "app.py", ["--pretrained-model", "{box}/none.pth", "--port", "0"], None, 1,
     "checkpoint .*none.pth does not exist"),
    ("app-not-a-port", "app.py", ["--checkpoints", "{box}/save", "--port", "70000"], None, 2,
     "'70000' is not a port"),
    # demo.py and benchmark.py
    ("demo-out-is-a-file", "demo.py", ["--out", "{box}/photo.jpg", "--data", "{box}/toy"], None, 1, "is a file"),
    ("demo-data-is-not-a-dataset", "demo.py", ["--out", "{box}/d", "--data", "{box}/stuff"], not_a_dataset, 1,
     "not empty"),
    ("benchmark-json-onto-a-user-file", "benchmark.py", ["--json", "{box}/notes.json"], None, 1,
     "not written by this project"),
    ("benchmark-data-not-coco", "benchmark.py", ["--data", "{box}/tb", "--json", "{box}/b.json"], None, 1,
     "COCO layout"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_and_loses_nothing(case, sandbox, monkeypatch, capfd):
    _, script, argv, setup, status, message = case
    if setup is not None:
        setup(sandbox)
    argv = [a.replace("{box}", str(sandbox)) for a in argv]
    before = hashes(sandbox)
    code = run_script(script, argv, monkeypatch)
    err = capfd.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), err
    assert re.search(message, lines[0]), lines[0]
    after = hashes(sandbox)
    assert {k: after.get(k) for k in before} == before  # every file that was there is intact


def test_there_are_at_least_forty_cases_across_every_script():
    assert len(CASES) >= 40
    assert {c[1] for c in CASES} == {"train.py", "test_dataset.py", "test_image.py", "test_video.py", "app.py",
                                     "export_onnx.py", "plot_logs.py", "demo.py", "benchmark.py"}


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["image-json-onto-the-photo", "lr-nan", "train-images-folder-missing"])
def test_the_table_holds_in_a_real_process(case_id, sandbox):
    _, script, argv, setup, status, message = next(c for c in CASES if c[0] == case_id)
    if setup is not None:
        setup(sandbox)
    before = hashes(sandbox)
    result = subprocess.run([sys.executable, script, *[a.replace("{box}", str(sandbox)) for a in argv]], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == status
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    after = hashes(sandbox)
    assert {k: after.get(k) for k in before} == before


def test_a_save_folder_in_use_is_refused(sandbox, monkeypatch, capfd):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from src.utils.outputs import FolderLock; FolderLock(sys.argv[1]).acquire();"
        " print('held', flush=True);"
        " sys.stdin.read()"), str(sandbox / "save")], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # waits for the event, not for a time
        before = hashes(sandbox / "save")
        argv = [a.replace("{box}", str(sandbox)) for a in [*TRAIN_ARGS, "--save-folder", "{box}/save"]]
        assert run_script("train.py", argv, monkeypatch) == 1
        err = capfd.readouterr().err.strip()
        assert re.fullmatch(rf"train\.py: error: .* is in use by another training run \(pid {holder.pid} .*", err), err
        assert hashes(sandbox / "save") == before
    finally:
        holder.kill()
        holder.wait(timeout=60)


def test_glob_run_twice_does_not_take_its_own_pictures_for_inputs(sandbox, monkeypatch, capfd):
    second_photo_of_the_same_name(sandbox)
    argv = ["--pretrained-model", str(sandbox / "ckpt.pth"), "--input", str(sandbox / "*" / "x.jpg"), "--output",
            str(sandbox / "out")]
    assert run_script("test_image.py", argv, monkeypatch) == 0
    assert run_script("test_image.py", [*argv[:3], str(sandbox / "*" / "*.jpg"), *argv[4:]], monkeypatch) == 0
    out = capfd.readouterr().out
    assert "2 picture(s) written" in out  # the two x.jpg, not the pictures of the first run
    assert sorted(str(p.relative_to(sandbox / "out")) for p in (sandbox / "out").rglob("*.jpg")) == [
        "a/x_prediction.jpg", "b/x_prediction.jpg"]  # same names, distinct outputs


def test_a_re_run_replaces_its_own_outputs_but_not_an_edited_one(sandbox, monkeypatch, capfd):
    argv = ["--pretrained-model", str(sandbox / "ckpt.pth"), "--input", str(sandbox / "photo.jpg"), "--json",
            str(sandbox / "d.json")]
    assert run_script("test_image.py", argv, monkeypatch) == 0
    assert run_script("test_image.py", argv, monkeypatch) == 0  # its own outputs: replaced
    (sandbox / "d.json").write_text("[] ")  # the user edits it: now it is theirs
    capfd.readouterr()
    assert run_script("test_image.py", argv, monkeypatch) == 1
    assert "not written by this project" in capfd.readouterr().err
    assert (sandbox / "d.json").read_text() == "[] "


def test_a_folder_with_one_bad_image_warns_and_goes_on(sandbox, monkeypatch, capfd):
    folder = sandbox / "photos"
    folder.mkdir()
    shutil.copy(sandbox / "photo.jpg", folder / "good.jpg")
    (folder / "cut.jpg").write_bytes((sandbox / "photo.jpg").read_bytes()[:3000])
    code = run_script("test_image.py", ["--pretrained-model", str(sandbox / "ckpt.pth"), "--input", str(folder)],
                      monkeypatch)
    captured = capfd.readouterr()
    assert code == 0, captured.err
    assert "cut.jpg is truncated" in captured.err and "1 picture(s) written; 1 unreadable input(s) skipped" in \
        captured.out
    assert (folder / "good_prediction.jpg").exists() and not (folder / "cut_prediction.jpg").exists()


def test_tolerable_annotation_problems_are_mended_and_warned_once(sandbox, monkeypatch, capfd):
    def drop(data):
        for a in data["annotations"]:
            del a["area"], a["iscrowd"]
    edit_json(VAL, drop)(sandbox)
    code = run_script("test_dataset.py", [a.replace("{box}", str(sandbox)) for a in DATASET], monkeypatch)
    captured = capfd.readouterr()
    assert code == 0, captured.err
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "without 'area' (set to the box area)" in warnings[0], captured.err
    assert "without 'iscrowd' (set to 0)" in warnings[0]
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in captured.out


def new_files(before: dict, root) -> list[str]:
    """Files and folders under ``root`` that were not there ``before`` (a hashes() dict)."""
    out = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if rel not in before and not any(k.startswith(rel + os.sep) for k in before):
                out.append(rel)
    return out


def test_a_run_refused_after_making_its_folders_leaves_none(sandbox, monkeypatch, capfd):
    before = hashes(sandbox)
    argv = [a.replace("{box}", str(sandbox)) for a in TRAIN_ARGS] + ["--save-folder", f"{sandbox}/new/save"]
    edit_json(TRAIN, all_negative)(sandbox)  # refused once the folders are made and locked
    assert run_script("train.py", argv, monkeypatch) == 1
    assert "no annotation" in capfd.readouterr().err
    assert new_files(before, sandbox) == []  # no save folder, no lock, no empty runs/


def test_an_offline_first_run_leaves_no_folder_or_lock(sandbox, monkeypatch, capfd):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(sandbox / "torch_home"))
    before = hashes(sandbox)
    argv = [a.replace("{box}", str(sandbox)) for a in TRAIN_ARGS if a != "--no-pretrained-backbone"]
    assert run_script("train.py", [*argv, "--save-folder", f"{sandbox}/save_new"], monkeypatch) == 1
    err = capfd.readouterr().err
    assert "could not get the ImageNet weights" in err and "--no-pretrained-backbone" in err
    assert new_files(before, sandbox) == []
    assert run_script("test_image.py", ["--pretrained-model", "nvidia", "--input", f"{sandbox}/photo.jpg"],
                      monkeypatch) == 1
    assert "could not download" in capfd.readouterr().err
    assert new_files(before, sandbox) == []  # no empty torch_home/hub/checkpoints either


def test_pictures_of_images_named_with_parent_steps_stay_in_the_output_folder(sandbox, monkeypatch, capfd):
    """A COCO file_name '../other/x.jpg' is a real image outside the image folder: its picture goes
    to <output>/__up__/other/x.jpg, not onto the image (nor anywhere outside --output)."""
    val = sandbox / "toy" / "val2017"
    first = sorted(os.listdir(val))[0]
    (sandbox / "toy" / "other").mkdir()
    shutil.move(val / first, sandbox / "toy" / "other" / first)

    def point_outside(data):
        next(im for im in data["images"] if im["file_name"] == first)["file_name"] = f"../other/{first}"
    edit_json(VAL, point_outside)(sandbox)
    before = hashes(sandbox)
    out = sandbox / "toy" / "preds"  # a new folder inside the dataset, as the sweep had it
    argv = [a.replace("{box}", str(sandbox)) for a in DATASET] + ["--output", str(out)]
    assert run_script("test_dataset.py", argv, monkeypatch) == 0, capfd.readouterr().err
    after = hashes(sandbox)
    assert {k: after.get(k) for k in before} == before  # the image outside is untouched
    assert (out / "__up__" / "other" / first).is_file()
    assert all(k.startswith(os.path.join("toy", "preds")) for k in set(after) - set(before))
