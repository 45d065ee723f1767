"""One detector for every inference script: load a checkpoint, preprocess, forward, decode,
and scale the boxes to the pixels of each input image."""
from dataclasses import dataclass

import numpy as np
import torch

from .box_coder import BoxCoder
from .checkpoint import infer_model_name, infer_num_classes, load_model_weights, model_state_dict, read_checkpoint
from .coco_names import COCO_CATEGORIES
from .default_boxes import default_boxes
from .engine import autocast
from .errors import CheckpointError
from .model import build_model
from .postprocess import Postprocessor
from .transforms import val_transforms
from .weights import resolve_checkpoint


@dataclass
class Detections:
    """Detections of one image: ``boxes`` (k, 4) ltrb in pixels of that image, ``labels`` (k,)
    in 1..K, ``scores`` (k,), by descending score; ``names`` the label names."""
    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    names: list

    def to_list(self) -> list[dict]:
        return [{"label": int(label), "name": name, "score": round(float(score), 4),
                 "box": [round(v, 1) for v in box]}
                for box, label, score, name in zip(self.boxes.tolist(), self.labels, self.scores, self.names)]


def categories_of(ckpt: dict, num_classes: int, fallback=None) -> tuple[list[int], list[str]]:
    """Category ids and names of a checkpoint's labels 1..K (K <= num_classes - 1).

    Ours carry them. For the original's and NVIDIA's, which do not: ``fallback``, the
    ``(ids, names)`` of the dataset it is used on, when given, in id order (the original's own
    rule: labels 1..K are a set's categories sorted by id, the rest of its 81-way head unused;
    for COCO that is COCO's ids), except that an 81-way head on a set whose categories are all
    COCO's (same ids and names: COCO or a part of it) reads as COCO; otherwise COCO's 80 when
    the head has 81 outputs, else generic names.
    """
    coco = [i for i, _ in COCO_CATEGORIES], [n for _, n in COCO_CATEGORIES]
    if "category_names" in ckpt and "category_ids" in ckpt:
        return list(ckpt["category_ids"]), list(ckpt["category_names"])
    is_coco_head = num_classes == len(COCO_CATEGORIES) + 1
    if fallback is not None and not (is_coco_head and set(zip(*fallback)) <= set(COCO_CATEGORIES)):
        return list(fallback[0]), list(fallback[1])
    if is_coco_head:
        return coco
    return list(range(1, num_classes)), [f"class_{i}" for i in range(1, num_classes)]


def load_checkpoint_model(path: str, model_name: str | None = None, map_location="cpu", categories=None):
    """Build the model a checkpoint of any of the three forms holds, with its weights.

    :param path: a checkpoint file, or the name of published weights ("nvidia", "original"),
        fetched into the torch hub cache the first time
    :param categories: ``(ids, names)`` for a checkpoint that carries none (see :func:`categories_of`)
    The architecture comes from the keys and the class count from the class head;
    ``model_name``, when given, must agree.
    :return: ``(model in eval mode, category_ids, category_names)``; there may be fewer
        categories than the head has labels (decode with ``num_labels=len(category_ids)``)
    """
    path = resolve_checkpoint(path)
    ckpt = read_checkpoint(path, map_location)
    state = model_state_dict(ckpt, path)
    found = infer_model_name(state)
    if found is None:
        raise CheckpointError(f"{path} holds no SSD-ResNet50 or SSDLite-MobileNetV2 weights")
    if model_name is not None and model_name != found:
        raise CheckpointError(f"{path} holds an {found} model, not {model_name}: drop --model or use --model {found}")
    num_classes = infer_num_classes(state, found)
    model = build_model(found, num_classes)
    load_model_weights(model, state, path)
    ids, names = categories_of(ckpt, num_classes, categories)
    if len(names) > num_classes - 1 or ("category_names" in ckpt and len(names) != num_classes - 1):
        raise CheckpointError(f"{path} has a {num_classes - 1}-class head, and {len(names)} categories to "
                              "put on it")
    return model.eval(), ids, names


def bgr_to_tensor(frame: np.ndarray) -> torch.Tensor:
    """An OpenCV BGR uint8 (H, W, 3) frame as an RGB uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1)


class Detector:
    """Images in, detections in pixels out.

    :param model: an :class:`~src.model.SSD` in eval mode
    :param category_names: name of each label 1..K
    :param cls_threshold: minimum score of a detection
    """

    def __init__(self, model, category_ids, category_names, device="cpu", cls_threshold=0.3,
                 nms_threshold=0.5, max_output=200, amp=False):
        self.device = torch.device(device)
        # NHWC: faster convolutions on the CPU (oneDNN) and with AMP on a GPU
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.category_ids = category_ids
        self.category_names = category_names
        self.transform = val_transforms(model.spec.fig_size)
        coder = BoxCoder(default_boxes(model.spec).to(self.device))
        self.postprocess = Postprocessor(coder, cls_threshold, nms_threshold, max_output=max_output,
                                         num_labels=len(category_names))
        self.amp = amp

    @classmethod
    def from_checkpoint(cls, path, model_name=None, device="cpu", categories=None, **kwargs) -> "Detector":
        """:param categories: ``(ids, names)`` for a checkpoint that carries none"""
        model, ids, names = load_checkpoint_model(path, model_name, map_location="cpu", categories=categories)
        return cls(model, ids, names, device, **kwargs)

    def preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 RGB images (3, H_i, W_i) of any sizes -> (N, 3, 300, 300), exactly as in evaluation."""
        return torch.stack([self.transform(img.to(self.device, non_blocking=True)) for img in images])

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[Detections]:
        """Detect objects in uint8 RGB images (3, H, W), each at its own size."""
        if not images:
            return []
        with autocast(self.device, self.amp):
            ploc, plabel = self.model(self.preprocess(images).contiguous(memory_format=torch.channels_last))
        out = []
        for img, (boxes, labels, scores) in zip(images, self.postprocess(ploc, plabel, out_device="cpu")):
            h, w = img.shape[-2:]
            pixels = boxes * torch.tensor([w, h, w, h], dtype=torch.float32)
            out.append(Detections(pixels, labels, scores, [self.category_names[i - 1] for i in labels.tolist()]))
        return out
