"""Datasets in the layouts people have: COCO, Pascal VOC and YOLO, all read into one COCO-format
dict, so that training, evaluation and the report see one kind of data.

- COCO: ``root/annotations/instances_{split}2017.json`` and ``root/{split}2017/``;
- VOC: ``root/Annotations/<id>.xml``, ``root/JPEGImages/``, ``root/ImageSets/Main/{split}.txt``
  (split ``all``: every XML, the one split of a set without lists, as labelImg leaves it);
  ``difficult`` objects become crowd (ignore) regions, also marked ``"difficult": 1``; the
  categories are those of ``classes.txt`` when there is one, else VOC's 20 in their standard
  order, unless the files name others (then all their names, sorted); class names are matched
  ignoring case, spaces, '_' and '-'; VOC's 1-based inclusive pixel corners become continuous
  coordinates (``xmin - 1``, ``xmax``), so IoUs are the devkit's;
- YOLO: ``data.yaml`` (or any ``*.yaml``) with ``names`` and, per split, an image folder, a
  ``.txt`` list of images or a list of either (Roboflow's ``../train/images`` read as
  Ultralytics does); labels in ``labels/`` beside ``images/``, one ``class cx cy w h`` line per
  object, normalised to the image; an image without a label file is background. Category ids
  are the class indices.

A bad file is refused as an annotation file is (:class:`DatasetError`, one line naming the
file, and the line in it).
"""
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from PIL import Image, ImageOps

from src.data.categories import name_key
from src.utils.errors import DatasetError
from src.utils.outputs import holds_our_outputs

FORMATS = ("coco", "voc", "yolo")
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
DEFAULT_SPLITS = {"coco": ("train", "val"), "voc": ("trainval", "test"), "yolo": ("train", "val")}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Source:
    """One split of a dataset: where its images are, and its annotations (a COCO dict, or the
    path of a COCO file). ``name`` names it in messages."""
    image_dir: str
    annotations: str | dict
    name: str


def detect_format(root: str) -> str:
    """Which layout ``root`` holds: "coco", "voc" or "yolo"."""
    if os.path.isfile(root) and root.endswith((".yaml", ".yml")):
        return "yolo"
    if os.path.isfile(root) and root.endswith(".json"):
        raise DatasetError(f"{root} is an annotation file, not a dataset folder: give the folder that holds "
                           "annotations/, or (test_dataset.py) --annotations FILE --images FOLDER")
    if os.path.isdir(os.path.join(root, "annotations")):
        return "coco"
    if all(os.path.isdir(os.path.join(root, d)) for d in ("Annotations", "JPEGImages")):
        return "voc"
    if os.path.isfile(os.path.join(root, "data.yaml")):
        return "yolo"
    raise DatasetError(f"{root} is not a dataset in a layout this project reads: COCO (annotations/, train2017/), "
                       "VOC (Annotations/, JPEGImages/, ImageSets/Main/) or YOLO (data.yaml, images/, labels/)")


def source(root: str, split: str, fmt: str = "auto", flag: str = "--split") -> Source:
    """The ``split`` of the dataset at ``root`` in layout ``fmt`` ("auto": detected); ``flag``
    is the option that chooses the split, named when there is no such split."""
    if not os.path.exists(root):
        raise DatasetError(f"dataset {root} not found (set --data-path)")
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "coco":
        annotations = os.path.join(root, "annotations", f"instances_{split}2017.json")
        if os.path.isdir(os.path.dirname(annotations)) and not os.path.exists(annotations):
            _no_split(root, split, coco_splits(root), flag)
        return Source(os.path.join(root, f"{split}2017"), annotations, root)
    if fmt == "voc":
        return voc_source(root, split, flag)
    return yolo_source(root, split, flag)


def splits_of(root: str, fmt: str = "auto") -> list[str]:
    """The splits the dataset at ``root`` has."""
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "coco":
        return coco_splits(root)
    if fmt == "voc":
        return voc_splits(root)
    return yolo_splits(_yolo_config_path(root))


def _no_split(where: str, split: str, splits: list[str], flag: str):
    have = f"its splits are {', '.join(splits)}" if splits else "it has no split"
    raise DatasetError(f"{where} has no split '{split}' ({have}): choose one with {flag}")


def coco_splits(root: str) -> list[str]:
    """The ``<split>`` of every ``annotations/instances_<split>2017.json``."""
    folder = os.path.join(root, "annotations")
    found = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(f[len("instances_"):-len("2017.json")] for f in found
                  if f.startswith("instances_") and f.endswith("2017.json"))


def dataset_folders(root: str) -> list[str]:
    """``root`` and the folders two levels below it (image and label folders): the places an
    output must not go."""
    base = os.path.dirname(os.path.abspath(root)) if os.path.isfile(root) else root
    folders = [root, base]
    for parent in [base] + [os.path.join(base, d) for d in _subfolders(base)]:
        folders += [os.path.join(parent, d) for d in _subfolders(parent)]
    return folders


def _subfolders(folder):
    """Its folders, less those that hold this project's outputs (a save folder made there)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    paths = [os.path.join(folder, d) for d in names]
    return [d for d, path in zip(names, paths) if os.path.isdir(path) and not holds_our_outputs(path)]


def merge(sources: list[Source], read) -> Source:
    """Several splits as one (VOC2007 trainval + VOC2012 trainval): image and annotation ids
    renumbered, file names made absolute, categories the same in all (else an error).

    :param read: Source -> its checked COCO dict (so that COCO files are read and checked too)
    """
    if len(sources) == 1:
        return sources[0]
    merged = {"images": [], "annotations": [], "categories": None}
    for src in sources:
        data = read(src)
        cats = [(c["id"], c["name"]) for c in data["categories"]]
        if merged["categories"] is None:
            merged["categories"] = data["categories"]
        elif cats != [(c["id"], c["name"]) for c in merged["categories"]]:
            raise DatasetError(f"{src.name} has other categories than {sources[0].name}: they cannot train together")
        new_id = {}
        for im in data["images"]:
            new_id[im["id"]] = len(merged["images"]) + 1
            merged["images"].append({**im, "id": new_id[im["id"]],
                                     "file_name": os.path.abspath(os.path.join(src.image_dir, im["file_name"]))})
        for a in data["annotations"]:
            merged["annotations"].append({**a, "id": len(merged["annotations"]) + 1, "image_id": new_id[a["image_id"]]})
    return Source("", merged, " + ".join(s.name for s in sources))


# --- Pascal VOC ----------------------------------------------------------------------------------

def voc_source(root: str, split: str, flag: str = "--split") -> Source:
    """A VOC split: the images listed in ``ImageSets/Main/<split>.txt``; ``all`` (when no such
    list exists) is every XML of ``Annotations/``, the only split of a set without lists
    (labelImg writes none)."""
    names = _voc_split_names(root, split, flag)
    parsed = [_read_voc_xml(os.path.join(root, "Annotations", f"{n}.xml")) for n in names]
    folder = os.path.join(root, "JPEGImages")
    stored = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    by_stem = {}
    for f in stored:
        if f.lower().endswith(IMAGE_EXTENSIONS):
            by_stem.setdefault(os.path.splitext(f)[0], f)
    stored = (set(stored), by_stem)
    classes, index = voc_classes(root, {obj[0] for _, _, objects in parsed for obj in objects})
    data = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    for image_id, (name, (file_name, (width, height), objects)) in enumerate(zip(names, parsed), start=1):
        data["images"].append({"id": image_id, "file_name": _voc_image_name(name, file_name, stored), "width": width,
                               "height": height,
                               "annotation_source": os.path.join(root, "Annotations", f"{name}.xml")})
        for cls, (x0, y0, x1, y1), difficult in objects:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id,
                                        "category_id": index(cls, name) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                        "area": (x1 - x0) * (y1 - y0), "iscrowd": int(difficult),
                                        "difficult": int(difficult)})
    return Source(os.path.join(root, "JPEGImages"), data, f"{root} ({split})")


def _voc_image_name(stem: str, file_name: str | None, stored: tuple[set, dict]) -> str:
    """The image of ``<stem>.xml`` in JPEGImages/: its ``<filename>`` when that file is there, else
    the file named as the XML (the devkit's rule: tools rename images without editing the XML).

    :param stored: the names in JPEGImages/, and the first image file of each stem"""
    names, by_stem = stored
    if file_name and file_name in names:
        return file_name
    return by_stem.get(stem) or file_name or f"{stem}.jpg"


def _voc_split_names(root: str, split: str, flag: str) -> list[str]:
    listing = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if os.path.isfile(listing):
        with open(listing) as f:
            return [line.split()[0] for line in f if line.strip()]
    if split == "all":
        return _voc_xml_names(root)
    if not os.path.isdir(os.path.dirname(listing)):
        raise DatasetError(f"{root} has no ImageSets/Main/ lists of its splits: its one split is 'all' (every XML "
                           f"of Annotations/): choose it with {flag} all, or write ImageSets/Main/<split>.txt")
    _no_split(root, split, voc_splits(root), flag)


def _voc_xml_names(root: str) -> list[str]:
    return sorted(f[:-4] for f in os.listdir(os.path.join(root, "Annotations")) if f.endswith(".xml"))


def voc_splits(root: str) -> list[str]:
    """The split lists of ``ImageSets/Main/`` (not the per-class ``<class>_<split>.txt``), and
    ``all``."""
    folder = os.path.join(root, "ImageSets", "Main")
    names = {f[:-4] for f in os.listdir(folder) if f.endswith(".txt")} if os.path.isdir(folder) else set()
    per_class = {n for n in names if "_" in n and n.rsplit("_", 1)[1] in names}
    return sorted(names - per_class) + ([] if "all" in names else ["all"])


def voc_classes(root: str, found: set):
    """The categories of a VOC set, the same for all its splits, and how an object's class name
    finds its index among them (case, spaces, '_' and '-' ignored; a class not among them is
    refused naming the file): a ``classes.txt`` in ``root`` (labelImg writes one), else VOC's
    20 when ``found`` are among them, else every name of every file in Annotations/, sorted."""
    listing = os.path.join(root, "classes.txt")
    if os.path.isfile(listing):
        with open(listing) as f:
            classes = [line.strip() for line in f if line.strip()]
    elif {name_key(c) for c in found} <= {name_key(c) for c in VOC_CLASSES}:
        classes, listing = list(VOC_CLASSES), None
    else:
        names = {}
        for file in _voc_xml_names(root):
            for obj in _read_voc_xml(os.path.join(root, "Annotations", f"{file}.xml"))[2]:
                names.setdefault(name_key(obj[0]), obj[0])
        classes, listing = sorted(names.values()), None
    positions = {name_key(c): i for i, c in enumerate(classes)}

    def index(cls: str, image: str) -> int:
        if name_key(cls) not in positions:
            raise DatasetError(f"VOC annotation {os.path.join(root, 'Annotations', image + '.xml')} has an object of "
                               f"class '{cls}', which {listing} does not list: add it there")
        return positions[name_key(cls)]
    return classes, index


def _read_voc_xml(path: str):
    """(file name, (width, height), [(class, (x0, y0, x1, y1) continuous pixels, difficult)])."""
    if not os.path.isfile(path):
        raise DatasetError(f"VOC annotation {path} not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"VOC annotation {path} is not valid XML ({e})") from None
    try:
        size = root.find("size")
        width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
        objects = []
        for obj in root.iter("object"):
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.findtext("name").strip(), (xmin - 1, ymin - 1, xmax, ymax),
                            obj.findtext("difficult", "0").strip() == "1"))
    except (AttributeError, TypeError, ValueError) as e:
        raise DatasetError(f"VOC annotation {path} lacks a size, an object name or a number of its box ({e})") \
            from None
    return root.findtext("filename"), (width, height), objects


# --- YOLO ----------------------------------------------------------------------------------------

def yolo_source(root: str, split: str, flag: str = "--split") -> Source:
    config = _yolo_config_path(root)
    names, folder, images = _read_yolo_yaml(config, split, flag)
    data = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in enumerate(names)]}
    for image_id, rel in enumerate(images, start=1):
        view = _upright_view(os.path.join(folder, rel))
        width, height = view.get("width", 0), view.get("height", 0)
        labels = _label_path(os.path.join(folder, rel))
        data["images"].append({"id": image_id, "file_name": rel, **view, "annotation_source": labels})
        for cls, (cx, cy, w, h) in _read_yolo_labels(labels, len(names), config):
            box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id, "category_id": cls,
                                        "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    return Source(folder, data, f"{config} ({split})")


def _yolo_config_path(root: str) -> str:
    return root if os.path.isfile(root) else os.path.join(root, "data.yaml")


YOLO_KEYS = ("path", "names", "nc", "download", "roboflow")  # not splits


def yolo_splits(config_path: str) -> list[str]:
    config = _load_yaml(config_path)
    return [str(k) for k in config if k not in YOLO_KEYS] if isinstance(config, dict) else []


def _load_yaml(path: str):
    import yaml
    if not os.path.isfile(path):
        raise DatasetError(f"YOLO dataset file {path} not found")
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DatasetError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None


def _read_yolo_yaml(path: str, split: str, flag: str):
    """(class names, the images' common folder, the images relative to it) of ``split``.

    A split is a folder of images, a ``.txt`` list of image paths, or a list of either; paths
    are relative to ``path:`` (itself relative to the file), and one starting with ``../`` that
    does not exist is also tried without it (Roboflow's exports, as Ultralytics reads them)."""
    config = _load_yaml(path)
    names = config.get("names") if isinstance(config, dict) else None
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path} has no 'names' list of classes")
    if config.get(split) is None:
        _no_split(path, split, yolo_splits(path), flag)
    base = os.path.join(os.path.dirname(os.path.abspath(path)), str(config.get("path") or ""))
    entries = config[split] if isinstance(config[split], list) else [config[split]]
    files = []
    for entry in entries:
        files += _yolo_images(_yolo_path(base, str(entry)), f"'{split}' of {path}")
    files = sorted(set(files))
    if not files:
        raise DatasetError(f"'{split}' of {path} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    folder = os.path.commonpath([os.path.dirname(f) for f in files])
    return [str(n) for n in names], folder, [os.path.relpath(f, folder) for f in files]


def _yolo_path(base: str, entry: str) -> str:
    path = os.path.normpath(os.path.join(base, entry))
    if not os.path.exists(path) and entry.startswith("../"):
        path = os.path.normpath(os.path.join(base, entry[3:]))
    return path


def _yolo_images(path: str, where: str) -> list[str]:
    """The absolute paths of the images of a folder (walked) or a ``.txt`` list (one per line,
    relative to the list's folder)."""
    if os.path.isdir(path):
        return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                if f.lower().endswith(IMAGE_EXTENSIONS)]
    if os.path.isfile(path) and path.endswith(".txt"):
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
        return [os.path.normpath(os.path.join(os.path.dirname(path), line)) for line in lines]
    raise DatasetError(f"{where}: {path} is not an image folder or a .txt list of images"
                       + ("" if os.path.exists(path) else " (not found)"))


def _label_path(image_path: str) -> str:
    """YOLO's rule: the last ``images`` folder of the path becomes ``labels``, the extension .txt."""
    head, sep, tail = image_path.rpartition(f"{os.sep}images{os.sep}")
    return os.path.splitext(f"{head}{os.sep}labels{os.sep}{tail}" if sep else image_path)[0] + ".txt"


def _upright_view(path: str) -> dict:
    """The image entry's size as its EXIF orientation shows it (YOLO labels are on that view),
    and ``"upright": 1`` when that differs from the stored pixels, so that the reader turns them;
    nothing for a file PIL cannot open (the reader skips it as a bad image, with a warning)."""
    try:
        with Image.open(path) as image:
            if image.getexif().get(0x0112, 1) == 1:
                return {"width": image.size[0], "height": image.size[1]}
            width, height = ImageOps.exif_transpose(image).size
            return {"width": width, "height": height, "upright": 1}
    except OSError:
        return {}


def _read_yolo_labels(path: str, num_classes: int, config: str):
    if not os.path.isfile(path):
        return []  # background image
    labels = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"labels file {path} line {number}"
            if len(fields) != 5:
                raise DatasetError(f"{where}: {len(fields)} numbers, expected 5 (class cx cy w h)")
            try:
                cls, values = int(fields[0]), [float(v) for v in fields[1:]]
            except ValueError:
                raise DatasetError(f"{where}: {line.strip()!r} is not a class index and four numbers") from None
            if not 0 <= cls < num_classes:
                raise DatasetError(f"{where}: class {cls}, but {config} names {num_classes} classes (0 to "
                                   f"{num_classes - 1})")
            if not all(0 <= v <= 1 for v in values):
                raise DatasetError(f"{where}: coordinates {values} outside [0, 1] (YOLO boxes are normalised)")
            labels.append((cls, values))
    return labels
