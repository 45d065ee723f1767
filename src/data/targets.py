"""From COCO annotations to the targets the SSD loss is trained on: boxes in the pixels of the
decoded image, then normalised to [0, 1] of the transformed one."""
import torch

from src.data.coco_check import MIN_BOX_SIDE


def pixel_targets(anns: list[dict], label_of: dict, frame: tuple[int, int] | None, height: int, width: int):
    """One image's annotations as boxes in pixels of its decoded (``height``, ``width``) frame.

    COCO's xywh becomes ltrb; coordinates are scaled per axis from the annotated ``frame`` (h, w)
    when the two differ, clipped to the image; boxes thinner than ``MIN_BOX_SIDE`` pixels are
    dropped. Crowd regions are not targets but ignore regions (see :mod:`src.models.matching`).

    :param anns: COCO annotations (``bbox`` xywh pixels, ``category_id``, ``iscrowd``)
    :param label_of: category id -> label 1..K
    :return: ``(boxes (n, 4) ltrb, labels (n,) int64, crowd (k, 4) ltrb)``
    """
    boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # COCO xywh -> ltrb
    if frame is not None and frame != (height, width):
        boxes *= torch.tensor([width / frame[1], height / frame[0]] * 2)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    crowd = torch.tensor([bool(a["iscrowd"]) for a in anns], dtype=torch.bool)
    labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64)
    big = ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX_SIDE).all(1)
    return boxes[~crowd & big], labels[~crowd & big], boxes[crowd & big]


def normalised(target: dict, height: int, width: int) -> dict:
    """``boxes`` and ``crowd`` (pixel ltrb on the transformed (``height``, ``width``) image) as
    fractions of it, with ``labels``; a transform may have left the crowd regions out."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    crowd = target.get("crowd", torch.zeros(0, 4))
    return {"boxes": target["boxes"].as_subclass(torch.Tensor) / scale, "labels": target["labels"],
            "crowd": crowd.as_subclass(torch.Tensor) / scale}
