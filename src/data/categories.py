"""Category mapping: the 80 COCO 2017 detection categories (ids with gaps, 1..90, and names, in id
order), and what a checkpoint's labels 1..K mean.

Checkpoints of the original repository and NVIDIA's carry no category list; their 81-way
heads (background + 80) use this order.
"""

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


def label_categories(stored, num_classes: int, fallback=None) -> tuple[list[int], list[str]]:
    """Category ids and names of a checkpoint's labels 1..K (K <= num_classes - 1).

    ``stored``: the ``(ids, names)`` a checkpoint of ours carries (used as they are), or None. For the original's and NVIDIA's, which do not: ``fallback``, the
    ``(ids, names)`` of the dataset it is used on, when given, in id order (the original's own
    rule: labels 1..K are a set's categories sorted by id, the rest of its 81-way head unused;
    for COCO that is COCO's ids), except that an 81-way head on a set whose categories are all
    COCO's (same ids and names: COCO or a part of it) reads as COCO; otherwise COCO's 80 when
    the head has 81 outputs, else generic names.
    """
    coco = [i for i, _ in COCO_CATEGORIES], [n for _, n in COCO_CATEGORIES]
    if stored is not None:
        return list(stored[0]), list(stored[1])
    is_coco_head = num_classes == len(COCO_CATEGORIES) + 1
    if fallback is not None and not (is_coco_head and set(zip(*fallback)) <= set(COCO_CATEGORIES)):
        return list(fallback[0]), list(fallback[1])
    if is_coco_head:
        return coco
    return list(range(1, num_classes)), [f"class_{i}" for i in range(1, num_classes)]
