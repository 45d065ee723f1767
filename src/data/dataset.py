"""COCO-format detection data: the original layout, or any annotation file plus image folder."""
import contextlib
import io
import json
import os
import signal
import sys

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision import tv_tensors

from src.data.categories import DatasetCategories
from src.data.images import read_image
from src.data.coco_check import CocoReport, check_coco
from src.data.targets import normalised, pixel_targets
from src.utils.errors import DatasetError, ImageReadError


def coco_paths(root: str, split: str) -> tuple[str, str]:
    """(annotation file, image folder) of ``split`` ("train" or "val") in the original layout:
    ``root/annotations/instances_{split}2017.json`` and ``root/{split}2017/``."""
    return (os.path.join(root, "annotations", f"instances_{split}2017.json"),
            os.path.join(root, f"{split}2017"))


LAYOUT = ("root/annotations/instances_{train,val}2017.json with images in root/{train,val}2017/, "
          "or any COCO-format JSON and image folder")


def read_annotations(annotation_file: str) -> dict:
    """The decoded JSON of a COCO annotation file; a missing file or bad JSON raise
    :class:`DatasetError` naming the file."""
    if os.path.isdir(annotation_file):
        raise DatasetError(f"annotation file {annotation_file} is a folder, not a JSON file")
    if not os.path.isfile(annotation_file):
        raise DatasetError(f"annotation file {annotation_file} not found (expected {LAYOUT})")
    try:
        with open(annotation_file, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DatasetError(f"annotation file {annotation_file} is not valid JSON ({e})") from None


def read_source(source) -> dict:
    """A :class:`~src.data.formats.Source`'s annotations as a checked (and mended) COCO dict."""
    data = read_annotations(source.annotations) if isinstance(source.annotations, str) else source.annotations
    check_coco(data, source.annotations if isinstance(source.annotations, str) else source.name)
    return data


def load_coco(annotations: str | dict, name: str | None = None) -> tuple[COCO, CocoReport]:
    """pycocotools' COCO index of checked annotations (see :mod:`src.data.coco_check`): a COCO file,
    or a COCO-format dict (a VOC or YOLO set read by :mod:`src.data.formats`; ``name`` names it).

    :return: ``(coco, report)``, the report counting what was mended or will be dropped
    """
    data = read_annotations(annotations) if isinstance(annotations, str) else annotations
    report = check_coco(data, annotations if isinstance(annotations, str) else name or "the dataset")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, report


def read_rgb(path: str, apply_exif: bool = False) -> torch.Tensor:
    """:func:`~src.data.images.read_image` as a uint8 RGB tensor (3, H, W)."""
    return torch.from_numpy(read_image(path, apply_exif)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def dataset_from(source, transforms=None, max_missing: float = 0.05) -> "CocoDetection":
    """The dataset of a :class:`~src.data.formats.Source` (a split of a COCO, VOC or YOLO set)."""
    return CocoDetection(source.image_dir, source.annotations, transforms, max_missing, source.name)


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO-format annotation file.

    Categories get contiguous labels 1..K in order of category id (0 is background);
    ``category_ids`` and ``category_names`` keep the mapping back. Boxes thinner than 1 pixel
    are dropped; crowd regions are not targets but ignore regions. Every image of the file is
    a sample, those without annotations included (they are background-only).

    A sample is ``(image, target)``: the image as the transforms leave it, and a target
    with ``boxes`` (n, 4) ltrb normalised to [0, 1] of the transformed image, ``labels``
    (n,) int64, ``crowd`` (k, 4) normalised ltrb crowd regions, ``image_id`` and
    ``orig_size`` (h, w), the frame of the annotations (predictions are scaled to it). A
    target may also hold ``bad`` (the reason an unreadable file was replaced by a blank
    sample) or ``resized`` (the file's size disagreed with the annotation file, even turned
    by its EXIF orientation, so the boxes were scaled to it).

    The annotation file is checked at once (:mod:`src.data.coco_check`), and so is the presence of
    every image file: images missing from ``image_dir`` are left out with a warning, unless
    they are more than ``max_missing`` of the set (a wrong folder), which is an error.
    ``warnings`` holds the summary lines for the caller to print.
    """

    def __init__(self, image_dir: str, annotation_file: str | dict, transforms=None, max_missing: float = 0.05,
                 name: str | None = None):
        self.image_dir = image_dir
        self.coco, self.report = load_coco(annotation_file, name)
        annotation_file = annotation_file if isinstance(annotation_file, str) else name or "the dataset"
        self.annotation_file = annotation_file
        listed = sorted(self.coco.imgs)
        if not listed:
            raise DatasetError(f"annotation file {annotation_file} lists no images")
        missing = set(missing_files(image_dir, [self.coco.imgs[i]["file_name"] for i in listed]))
        if len(missing) > max_missing * len(listed):
            first = sorted(missing)[0]
            raise DatasetError(f"{len(missing)} of the {len(listed)} images of {annotation_file} are missing from "
                               f"{image_dir} (first: {first}): is the image folder right? (at most "
                               f"{max_missing:.0%} may be missing; --max-bad-images sets it)")
        self.ids = [i for i in listed if self.coco.imgs[i]["file_name"] not in missing]
        self.warnings = [f"{annotation_file}: {line}" for line in [self.report.warning()] if line]
        if missing:
            self.warnings.append(f"{len(missing)} of the {len(listed)} images of {annotation_file} are missing "
                                 f"from {image_dir} and left out (first: {sorted(missing)[0]})")
        self.category_ids = sorted(self.coco.cats)
        self.category_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        self.transforms = transforms

    def drop_empty(self) -> int:
        """Leave out the images without annotations (NVIDIA's and the original's training sets do);
        :return: how many were left out."""
        before = len(self.ids)
        self.ids = [i for i in self.ids if self.coco.imgToAnns.get(i)]
        return before - len(self.ids)

    @property
    def categories(self) -> DatasetCategories:
        """Its categories as matching to a model's needs them: those with a ground-truth box to
        score (crowd and difficult ones are not), those the file left unnamed."""
        scored = {a["category_id"] for a in self.coco.dataset["annotations"] if not a.get("iscrowd")}
        return DatasetCategories(self.category_ids, self.category_names, self.annotation_file, scored,
                                 set(self.report.unnamed_ids))

    @property
    def num_classes(self) -> int:
        return len(self.category_ids) + 1

    def __len__(self):
        return len(self.ids)

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_dir, self.coco.imgs[image_id]["file_name"])

    def annotated_size(self, image_id: int) -> tuple[int, int] | None:
        """(height, width) the annotation file gives for the image, or None."""
        info = self.coco.imgs[image_id]
        return (int(info["height"]), int(info["width"])) if "height" in info and "width" in info else None

    def read_image(self, image_id: int):
        """The image in the frame its boxes were drawn on: the stored pixels (COCO's rule), or the
        pixels turned by their EXIF orientation when the entry says so (``"upright": 1``: a YOLO
        set's, whose labels are on the upright view) or when that is what makes the size agree
        with the annotation file (tools that read phone photos upright write the turned size).

        :return: ``(image (3, H, W) uint8, resized)``: ``resized`` is True when the size still
            disagrees, so the boxes must be scaled from the annotated frame to this one
        """
        path = self.image_path(image_id)
        image = read_rgb(path, apply_exif=bool(self.coco.imgs[image_id].get("upright")))
        expected = self.annotated_size(image_id)
        if expected is None or tuple(image.shape[-2:]) == expected:
            return image, False
        upright = read_rgb(path, apply_exif=True)  # a second decode, for these files only
        if tuple(upright.shape[-2:]) == expected:
            return upright, False
        return image, True

    def annotations(self, image_id: int, height: int, width: int):
        """Boxes of one image in pixels of its decoded (``height``, ``width``) frame: see
        :func:`~src.data.targets.pixel_targets`.

        :return: ``(boxes (n, 4) ltrb, labels (n,), crowd (k, 4) ltrb)``
        """
        return pixel_targets(self.coco.imgToAnns.get(image_id, []), self.label_of, self.annotated_size(image_id),
                             height, width)

    def __getitem__(self, index):
        """:param index: a position, or ``(position, seed)`` as :class:`~src.training.resume.ResumableSampler` gives:
            the augmentation then draws from ``seed`` alone, the same in any worker or process."""
        index, seed = index if isinstance(index, tuple) else (index, None)
        image_id = self.ids[index]
        try:
            image, resized = self.read_image(image_id)
        except ImageReadError as e:
            return self._placeholder(image_id, str(e), seed)
        height, width = image.shape[-2:]
        boxes, labels, crowd = self.annotations(image_id, height, width)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
                  "labels": labels,
                  "crowd": tv_tensors.BoundingBoxes(crowd, format="XYXY", canvas_size=(height, width))}
        image, target = self._transform(image, target, seed)
        out = {**normalised(target, *image.shape[-2:]), "image_id": image_id,
               "orig_size": self.annotated_size(image_id) or (height, width)}
        if resized:
            out["resized"] = True
        return image.as_subclass(torch.Tensor), out

    def _transform(self, image, target, seed):
        if self.transforms is None:
            return image, target
        if seed is None:
            return self.transforms(image, target)
        with torch.random.fork_rng(devices=[]):  # this sample's own draws; the process's stream is untouched
            torch.manual_seed(seed)
            return self.transforms(image, target)

    def _placeholder(self, image_id, reason, seed=None):
        """A bad image file does not stop a long run: it is skipped with a warning, and a blank
        background-only sample takes its place (batches keep their size, so DDP stays in step).
        ``target["bad"]`` holds the reason, for the counts in the logs."""
        print(f"warning: skipping a bad image: {reason}", file=sys.stderr, flush=True)
        size = self.annotated_size(image_id) or (300, 300)
        blank = tv_tensors.Image(torch.full((3, *size), 124, dtype=torch.uint8))
        empty = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=size)
        image, _ = self._transform(blank, {"boxes": empty, "labels": torch.zeros(0, dtype=torch.int64),
                                           "crowd": empty}, seed)
        return image.as_subclass(torch.Tensor), {"boxes": torch.zeros(0, 4),
                                                 "labels": torch.zeros(0, dtype=torch.int64),
                                                 "crowd": torch.zeros(0, 4), "image_id": image_id,
                                                 "orig_size": size, "bad": reason}


def missing_files(folder: str, names: list[str]) -> list[str]:
    """Which of ``names`` (paths relative to ``folder``) are not in it; one listing per
    subfolder, not one stat per file (fast on network file systems)."""
    if folder and not os.path.isdir(folder):  # "": the names are full paths (merged sets)
        raise DatasetError(f"image folder {folder} not found" if not os.path.exists(folder)
                           else f"image folder {folder} is a file, not a folder")
    listings = {}
    missing = []
    for name in names:
        sub, base = os.path.split(name)
        if sub not in listings:
            try:
                listings[sub] = set(os.listdir(os.path.join(folder, sub)))
            except OSError:
                listings[sub] = set()
        if base not in listings[sub]:
            missing.append(name)
    return missing


def worker_init(worker_id):
    """DataLoader workers run one OpenCV thread each, as torch does: the images are small and
    many workers with a thread per core each would fight over the cores.

    They ignore SIGINT, SIGTERM and SIGUSR1: Ctrl-C, `timeout` and a cluster's scancel signal the
    whole process group (srun passes SLURM's time-limit warning to every process of the step), and
    a worker killed by a signal makes the main process raise before it can save. The main process
    decides when to stop and shuts its workers down."""
    cv2.setNumThreads(1)
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def collate(batch):
    """Stack the images, keep the targets as a list (each image has its own box count)."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


def shard(dataset, rank: int, world_size: int):
    """Every ``world_size``-th sample from ``rank``: disjoint shards with no padding, so that
    sharded evaluation sees each image exactly once."""
    if world_size == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(rank, len(dataset), world_size))


def loader_workers(requested: int, batches: int) -> int:
    """The workers worth starting: no more than the cores this process may use (more only
    compete for them, and torch warns) nor than there are batches to load."""
    return max(0, min(requested, len(os.sched_getaffinity(0)), batches))


def eval_loader(dataset, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1, pin_memory=False):
    """An in-order loader over this rank's shard of ``dataset``."""
    part = shard(dataset, rank, world_size)
    num_workers = loader_workers(num_workers, -(-len(part) // batch_size))
    return torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False,
                                       num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                                       persistent_workers=num_workers > 0, worker_init_fn=worker_init)
