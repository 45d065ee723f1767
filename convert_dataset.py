"""Write a COCO-format copy of a Pascal VOC or YOLO dataset, for other COCO tools.

    python convert_dataset.py --from voc --data-path VOCdevkit/VOC2007 --to coco --output voc07_coco
    python convert_dataset.py --from yolo --data-path my_set/data.yaml --to coco --output my_set_coco --copy-images

Each split S (default: the format's training and validation splits) becomes
``<output>/annotations/instances_S2017.json`` with its images in ``<output>/S2017/``, linked
(symbolic links to the originals) or, with --copy-images, copied. VOC's difficult objects are
crowd regions there (``"iscrowd": 1``, and ``"difficult": 1``). train.py and test_dataset.py read
VOC and YOLO sets directly: this is for other tools.
"""
import json
import os
import shutil

from src.cli import ArgumentParser, run_cli
from src.data.dataset import read_source
from src.data.formats import DEFAULT_SPLITS, dataset_folders, source
from src.utils.errors import UserError
from src.utils.outputs import OutputGuard


def get_args_parser():
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source_format", choices=["voc", "yolo"], required=True)
    p.add_argument("--to", choices=["coco"], default="coco")
    p.add_argument("--data-path", required=True, help="the VOC root, or the YOLO data.yaml (or its folder)")
    p.add_argument("--splits", nargs="+", default=None, help="default: the format's training and validation splits")
    p.add_argument("--output", required=True, help="the folder of the COCO copy")
    p.add_argument("--copy-images", action="store_true", help="copy the images instead of linking them")
    return p


def main(args):
    splits = args.splits or list(DEFAULT_SPLITS[args.source_format])
    guard = OutputGuard(dataset_folders(args.data_path))
    guard.folder(args.output, "--output")
    sources = [source(args.data_path, split, args.source_format, "--splits") for split in splits]
    data = [read_source(s) for s in sources]  # read and checked before anything is written
    images = {split: [os.path.join(args.output, f"{split}2017", im["file_name"]) for im in d["images"]]
              for split, d in zip(splits, data)}
    guard.files([os.path.join(args.output, "annotations", f"instances_{s}2017.json") for s in splits] +
                [p for paths in images.values() for p in paths], "--output")
    guard.claim()
    for split, src, d in zip(splits, sources, data):
        written = []
        for image, target in zip(d["images"], images[split]):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            original = os.path.abspath(os.path.join(src.image_dir, image["file_name"]))
            if os.path.lexists(target):
                os.remove(target)  # our own earlier copy or link (the checks above said so)
            if args.copy_images:
                shutil.copy(original, target)
            else:
                os.symlink(original, target)
            written.append(target)
        annotations = os.path.join(args.output, "annotations", f"instances_{split}2017.json")
        os.makedirs(os.path.dirname(annotations), exist_ok=True)
        with open(annotations, "w") as f:
            json.dump(d, f)
        guard.record([annotations, *written])
        print(f"{src.name}: {len(d['images'])} images, {len(d['annotations'])} objects, "
              f"{len(d['categories'])} categories -> {annotations}")
    if not data:
        raise UserError("nothing to convert")


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
