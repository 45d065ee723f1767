"""Test tool: write a COCO-format set in Pascal VOC's and in YOLO's layouts, from first principles
(their published formats), independently of src/data/formats.py, which reads them back."""
import json
import os
import shutil
from xml.sax.saxutils import escape


def _coco(root, split):
    with open(os.path.join(root, "annotations", f"instances_{split}2017.json")) as f:
        return json.load(f)


def to_voc(coco_root, out, splits=(("train", "trainval"), ("val", "test"))):
    """VOC2007's layout: one XML per image (1-based inclusive pixel corners), ImageSets/Main lists.
    Crowd annotations become difficult objects."""
    for folder in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    for coco_split, voc_split in splits:
        data = _coco(coco_root, coco_split)
        names = {c["id"]: c["name"] for c in data["categories"]}
        ids = []
        for image in sorted(data["images"], key=lambda im: im["id"]):
            stem = f"{coco_split}_{os.path.splitext(image['file_name'])[0]}"
            ids.append(stem)
            shutil.copy(os.path.join(coco_root, f"{coco_split}2017", image["file_name"]),
                        os.path.join(out, "JPEGImages", f"{stem}.jpg"))
            objects = ""
            for a in data["annotations"]:
                if a["image_id"] != image["id"]:
                    continue
                x, y, w, h = a["bbox"]
                objects += (f"<object><name>{escape(names[a['category_id']])}</name><difficult>{int(a['iscrowd'])}"
                            f"</difficult><bndbox><xmin>{x + 1:g}</xmin><ymin>{y + 1:g}</ymin><xmax>{x + w:g}</xmax>"
                            f"<ymax>{y + h:g}</ymax></bndbox></object>")
            with open(os.path.join(out, "Annotations", f"{stem}.xml"), "w") as f:
                f.write(f"<annotation><filename>{stem}.jpg</filename><size><width>{image['width']}</width>"
                        f"<height>{image['height']}</height><depth>3</depth></size>{objects}</annotation>")
        with open(os.path.join(out, "ImageSets", "Main", f"{voc_split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")


def to_yolo(coco_root, out, splits=("train", "val"), decimals=6):
    """YOLO's layout: data.yaml, images/<split>/, labels/<split>/<stem>.txt with one
    ``class cx cy w h`` line per object (normalised, ``decimals`` places, 6 as most tools write);
    classes in category-id order."""
    names = None
    for split in splits:
        data = _coco(coco_root, split)
        cats = sorted(c["id"] for c in data["categories"])
        names = [next(c["name"] for c in data["categories"] if c["id"] == i) for i in cats]
        os.makedirs(os.path.join(out, "images", split), exist_ok=True)
        os.makedirs(os.path.join(out, "labels", split), exist_ok=True)
        for image in data["images"]:
            shutil.copy(os.path.join(coco_root, f"{split}2017", image["file_name"]),
                        os.path.join(out, "images", split, image["file_name"]))
            lines = []
            for a in data["annotations"]:
                if a["image_id"] == image["id"] and not a["iscrowd"]:
                    x, y, w, h = a["bbox"]
                    W, H = image["width"], image["height"]
                    values = [(x + w / 2) / W, (y + h / 2) / H, w / W, h / H]
                    lines.append(f"{cats.index(a['category_id'])} " + " ".join(f"{v:.{decimals}f}" for v in values))
            if lines:  # no file: a background image
                with open(os.path.join(out, "labels", split, os.path.splitext(image["file_name"])[0] + ".txt"),
                          "w") as f:
                    f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "data.yaml"), "w") as f:
        f.write("path: .\n" + "".join(f"{s}: images/{s}\n" for s in splits) +
                "names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
