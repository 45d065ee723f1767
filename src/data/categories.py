"""Category mapping: the 80 COCO 2017 detection categories (ids with gaps, 1..90, and names, in id
order), and what a checkpoint's labels 1..K mean.

Checkpoints of the original repository and NVIDIA's carry no category list; their 81-way
heads (background + 80) use this order.
"""
import re
from dataclasses import dataclass

from src.utils.errors import DatasetError

COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
]


@dataclass
class DatasetCategories:
    """A dataset's categories, as matching needs them.

    :param ids, names: the categories (names filled in by id where the file gave none)
    :param where: the dataset, as messages name it
    :param scored: the ids with ground truth (default: all): each must be one of the model's
        categories, or its AP would be that of a category the model cannot predict
    :param unnamed: the ids whose names the file did not give: matched by id alone
    """
    ids: list
    names: list
    where: str = "the dataset"
    scored: set | None = None
    unnamed: set = frozenset()


def label_categories(stored, num_classes: int, dataset: DatasetCategories | None = None):
    """What a checkpoint's labels 1..K mean (K <= num_classes - 1), and on a dataset, which of its
    categories each one is.

    :param stored: the ``(ids, names)`` a checkpoint of ours carries, or None (the original's and
        NVIDIA's carry none)
    :param dataset: the categories of the dataset the model is used on, or None
    :return: ``(ids, names, notes)``: the names of labels 1..K; their ids, which on a dataset are
        the dataset's (None for a category it lacks); one-line notes worth printing

    A checkpoint without names takes the dataset's categories in id order (the original's own
    rule: labels 1..K are a set's categories sorted by id, the rest of an 81-way head unused),
    except that an 81-way head on a set whose categories are all COCO's (same ids and names)
    reads as COCO; without a dataset, COCO's 80 for an 81-way head, else generic names.
    Named categories are matched to the dataset's by name (:func:`match_by_name`).
    """
    is_coco_head = num_classes == len(COCO_CATEGORIES) + 1
    if stored is None:
        if dataset is not None and not (is_coco_head and set(zip(dataset.ids, dataset.names)) <= set(COCO_CATEGORIES)):
            return list(dataset.ids), list(dataset.names), [_unnamed_note(num_classes - 1, dataset)]
        stored = ([i for i, _ in COCO_CATEGORIES], [n for _, n in COCO_CATEGORIES]) if is_coco_head else \
            (list(range(1, num_classes)), [f"class_{i}" for i in range(1, num_classes)])
    if dataset is None:
        return list(stored[0]), list(stored[1]), []
    ids, notes = match_by_name(stored, dataset)
    return ids, list(stored[1]), notes


def _unnamed_note(labels: int, dataset: DatasetCategories) -> str:
    """What reading an unnamed checkpoint's labels as a dataset's categories assumes."""
    count = len(dataset.ids)
    if labels == count:
        return (f"warning: the checkpoint names no categories: its {labels} labels are read as the categories of "
                f"{dataset.where} in id order, which is right only if it was trained on them")
    return (f"warning: the checkpoint names no categories and its head has {labels} labels for the {count} "
            f"categories of {dataset.where}: labels 1-{count} are read as them in id order and the rest are unused, "
            "which is right only if it was trained on them")


def name_key(name) -> str:
    """How category names are compared: case, spaces, '_' and '-' ignored ("Traffic_light" is
    "traffic light", "diningtable" is "dining table")."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def match_by_name(model: tuple[list, list], dataset: DatasetCategories):
    """The dataset's id of each of the model's labels 1..K, the categories matched by name (those
    the file leaves unnamed, by id, with a warning).

    :param model: ``(ids, names)`` of the model's labels 1..K; a label whose id is None is of no
        category and stays None
    :return: ``(ids, notes)``: ``ids[k]`` the dataset id of label k + 1, or None where the dataset
        has no such category (those detections are left out); ``notes`` one-line remarks worth
        printing (ids that differ, model categories the dataset lacks, matches by id alone)
    :raises DatasetError: when a scored category of the dataset is not one of the model's, or
        none of the model's is one of the dataset's
    """
    if (list(model[0]), list(model[1])) == (list(dataset.ids), list(dataset.names)):
        return list(model[0]), []  # the same categories: nothing to match, even with names that repeat
    if None in model[0]:  # labels of no category (torchvision's unused COCO ids): matched to none
        kept = [k for k, i in enumerate(model[0]) if i is not None]
        ids, notes = match_by_name(([model[0][k] for k in kept], [model[1][k] for k in kept]), dataset)
        out = [None] * len(model[0])
        for k, i in zip(kept, ids):
            out[k] = i
        return out, notes
    for names, where in ((dataset.names, dataset.where), (model[1], "the model")):
        repeated = sorted({str(n) for n in names if list(map(str, names)).count(str(n)) > 1})
        if repeated:
            raise DatasetError(f"{where} names two categories '{repeated[0]}': categories are matched by name, so "
                               "each name must be one category's; rename one")
    named = [(i, n) for i, n in zip(dataset.ids, dataset.names) if i not in dataset.unnamed]
    key = name_key
    if len({key(n) for _, n in named}) != len(named) or len({key(n) for n in model[1]}) != len(model[1]):
        key = str  # names alike only when normalised: compared as they are
    by_key = {key(n): i for i, n in named}
    keys = [key(n) for n in model[1]]
    ids = [by_key.get(k, i if i in dataset.unnamed else None) for k, i in zip(keys, model[0])]
    scored = set(dataset.ids if dataset.scored is None else dataset.scored)
    unknown = [n for i, n in zip(dataset.ids, dataset.names) if i in scored and i not in ids]
    if unknown:
        raise DatasetError(f"{dataset.where} has categories the model was not trained on: {_listed(unknown)} (the "
                           f"model knows {_listed(model[1])}; names are compared ignoring case, spaces, '_' and '-')")
    if all(i is None for i in ids):
        raise DatasetError(f"none of the model's categories ({_listed(model[1])}) is one of {dataset.where}'s "
                           f"({_listed(dataset.names)}): is this checkpoint trained on this dataset?")
    return ids, _match_notes(model, ids, dataset)


def _match_notes(model, ids, dataset) -> list[str]:
    notes = []
    by_id = [n for n, i, j in zip(model[1], model[0], ids) if j is not None and j in dataset.unnamed]
    if by_id:
        notes.append(f"warning: {dataset.where} names {len(by_id)} of its categories by id alone: matched to the "
                     f"model's of the same id ({_listed(by_id)}), which is right only if they are numbered alike")
    absent = [n for n, i in zip(model[1], ids) if i is None]
    if absent:
        notes.append(f"note: {len(absent)} of the model's {len(ids)} categories are not in {dataset.where} "
                     f"({_listed(absent)}): their detections are left out")
    moved = [(n, i, j) for n, i, j in zip(model[1], model[0], ids) if j is not None and i != j]
    if moved:
        n, i, j = moved[0]
        notes.append(f"note: categories matched by name: {dataset.where} numbers {len(moved)} of them otherwise than "
                     f"the model (e.g. '{n}' is {j} there, {i} in the model)")
    return notes


def _listed(names, most=6) -> str:
    shown = ", ".join(f"'{n}'" for n in list(names)[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def torchvision_coco_labels(dataset: DatasetCategories | None = None):
    """What the labels 1..90 of torchvision's 91-way COCO heads mean: label i is COCO's category
    id i, so the ten ids COCO 2017 does not use (12, 26, 29, 30, 45, 66, 68, 69, 71, 83) are labels
    of no category ("N/A" in torchvision; never reported here).

    :param dataset: as :func:`label_categories`'s, the 80 categories matched to it by name
    :return: ``(ids, names, notes)`` of labels 1..90, ``ids`` None for the unused ones and those
        the dataset lacks
    """
    coco_ids, coco_names = [i for i, _ in COCO_CATEGORIES], [n for _, n in COCO_CATEGORIES]
    ids, _, notes = label_categories((coco_ids, coco_names), len(COCO_CATEGORIES) + 1, dataset)
    dataset_id, name = dict(zip(coco_ids, ids)), dict(COCO_CATEGORIES)
    labels = range(1, max(coco_ids) + 1)
    return [dataset_id.get(i) for i in labels], [name.get(i, "N/A") for i in labels], notes
