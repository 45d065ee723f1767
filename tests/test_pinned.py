"""The numbers and rules that define SSD as implemented here, each pinned to an independent source
(the paper, NVIDIA's SSD300 v1.1 recipe, torchvision's COCO table) or to a value worked by hand.
A change to any of them must fail here, not pass silently."""
import importlib.util
import math
import os

import numpy as np
import pytest
import torch
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, _meta

import train
from src.data.categories import COCO_CATEGORIES, DatasetCategories
from src.data.dataset import CocoDetection
from src.inference.detector import Detector
from src.models.box_coder import BoxCoder
from src.models.loss import MultiBoxLoss
from src.models.postprocess import Postprocessor
from src.models.specs import SSDLITE, get_spec
from src.models.ssd import build_model, imagenet_weights
from src.training.optim import scaled_lr, warmup_multistep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script(name):
    """A top-level script as a module (tests/ has a test_dataset.py of its own)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_coco_category_table_is_cocos():
    """torchvision's table lists the 91 ids of COCO's paper (0 background, 'N/A' where 2017 has none)."""
    expected = [(i, name) for i, name in enumerate(_meta._COCO_CATEGORIES) if name not in ("__background__", "N/A")]
    assert COCO_CATEGORIES == expected
    assert len(COCO_CATEGORIES) == 80 and COCO_CATEGORIES[0] == (1, "person") and COCO_CATEGORIES[-1] == (90,
                                                                                                        "toothbrush")


def test_training_recipe_defaults_are_nvidias():
    """NVIDIA's SSD300 v1.1 (its README and main.py): 65 epochs, lr 2.6e-3 per 32 images, 300 warm-up
    iterations, drops after epochs 43 and 54, momentum 0.9, weight decay 5e-4, batch 32, the ResNet-50
    from IMAGENET1K_V2 (its release of October 2022)."""
    args = train.get_args_parser().parse_args([])
    coco_iters = 117266 // 32  # COCO 2017 train images with annotations, batch 32
    assert (args.epochs, train.lr_per_32(args, 32), train.warmup_iterations(args, coco_iters, 32), args.multistep,
            args.momentum, args.weight_decay, args.batch_size) == (65, 2.6e-3, 300, [43, 54], 0.9, 5e-4, 32)
    assert args.nms_threshold is None and args.zoom_out == 1.0 and args.crop == "nvidia"
    assert imagenet_weights("ssd", args.backbone_weights) == ResNet50_Weights.IMAGENET1K_V2
    assert imagenet_weights("ssdlite", args.backbone_weights) == MobileNet_V2_Weights.IMAGENET1K_V1
    v1 = train.get_args_parser().parse_args(["--backbone-weights", "IMAGENET1K_V1"])
    assert imagenet_weights("ssd", v1.backbone_weights) == ResNet50_Weights.IMAGENET1K_V1


@pytest.mark.parametrize("gpus, per_gpu, lr, warmup", [
    (1, 32, 2.6e-3, 300), (8, 32, 2.6e-3, 300), (8, 64, 2.6e-3, 300),  # examples/SSD300_FP16_{1,8}GPU.sh
    (8, 128, 2.7e-3, 1200), (4, 256, 2.7e-3, 1200),  # examples/SSD300_A100_FP16_{8,4}GPU.sh
    (16, 128, 2.7e-3, 741),  # beyond NVIDIA's largest: its 1024 setting, in a run of 3705 iterations
    (12, 64, 2.65e-3, 750),  # 768, half-way between its two: half-way between their settings
])
def test_lr_and_warm_up_follow_nvidias_scripts_for_the_global_batch(gpus, per_gpu, lr, warmup):
    args = train.get_args_parser().parse_args([])
    coco_iters = 117266 // (gpus * per_gpu)
    assert train.lr_per_32(args, gpus * per_gpu) == pytest.approx(lr)
    assert train.warmup_iterations(args, coco_iters, gpus * per_gpu) == warmup
    given = train.get_args_parser().parse_args(["--lr", "0.01", "--warmup", "40"])
    assert train.lr_per_32(given, gpus * per_gpu) == 0.01 and train.warmup_iterations(given, 5, gpus * per_gpu) == 40


def test_warm_up_fits_a_short_run_on_a_small_set():
    """A run of fewer than 6000 iterations warms up for that share of NVIDIA's 300 (5% of it): 200
    images at batch 8 for 65 epochs is 1625 iterations, 81 of them warming up (not 300, twelve
    epochs); --warmup N is N."""
    args = train.get_args_parser().parse_args([])
    assert train.warmup_iterations(args, 25, 8) == 81
    assert train.warmup_iterations(args, 1, 8) == 3 and train.warmup_iterations(args, 92, 8) == 299
    assert train.warmup_iterations(args, 92, 1024) == 1196  # the same share of NVIDIA's 1200 at 1024
    args = train.get_args_parser().parse_args(["--epochs", "1"])
    assert train.warmup_iterations(args, 10, 8) == 1  # never 0 by the rule: the first step is not at full rate
    assert train.warmup_iterations(train.get_args_parser().parse_args(["--warmup", "500"]), 25, 8) == 500


def test_learning_rate_scales_with_the_global_batch():
    assert scaled_lr(2.6e-3, 32, 1) == pytest.approx(2.6e-3)
    assert scaled_lr(2.6e-3, 32, 8) == pytest.approx(2.08e-2)  # 8 GPUs x 32: 8x
    assert scaled_lr(2.6e-3, 8, 1) == pytest.approx(6.5e-4)


def test_schedule_values_at_chosen_iterations():
    """100 iterations an epoch, 300 of linear warm-up, x0.1 after 43 and after 54 whole epochs."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_multistep(optimizer, iters_per_epoch=100, warmup_iters=300, milestones=[54, 43])
    factor = schedule.lr_lambdas[0]
    expected = {0: 1 / 300, 149: 150 / 300, 298: 299 / 300, 299: 1.0, 4299: 1.0, 4300: 0.1, 5399: 0.1,
                5400: 0.01, 6499: 0.01}
    for iteration, value in expected.items():
        assert factor(iteration) == pytest.approx(value), iteration
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1 / 300)  # the first step runs at the first factor
    no_warmup = warmup_multistep(optimizer, 100, 0, [1]).lr_lambdas[0]
    assert (no_warmup(0), no_warmup(99), no_warmup(100)) == (1.0, 1.0, pytest.approx(0.1))


def test_matching_threshold_is_the_papers_half():
    """A default box is positive above IoU 0.5 with a ground truth, whatever the coder is built from."""
    dboxes = torch.tensor([[0.5, 0.5, 0.4, 0.4],  # the ground truth itself: its forced best match
                           [0.54, 0.5, 0.4, 0.4],  # IoU 0.818
                           [0.6, 0.5, 0.4, 0.4],  # IoU 0.6
                           [0.633, 0.5, 0.4, 0.4],  # IoU 0.503
                           [0.637, 0.5, 0.4, 0.4],  # IoU 0.4935
                           [0.9, 0.9, 0.1, 0.1]])  # no overlap
    coder = BoxCoder(dboxes)
    assert coder.iou_threshold == 0.5 and BoxCoder.for_spec(SSDLITE).iou_threshold == 0.5
    _, labels = coder.match_one(torch.tensor([[0.3, 0.3, 0.7, 0.7]]), torch.tensor([2]))
    assert labels.tolist() == [2, 2, 2, 2, 0, 0]


def test_the_later_ground_truth_wins_a_shared_best_default_box():
    coder = BoxCoder(torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.9, 0.9, 0.05, 0.05]]))
    boxes = torch.tensor([[0.38, 0.38, 0.6, 0.6], [0.42, 0.42, 0.62, 0.62]])  # both best at default box 0
    matched, labels = coder.match_one(boxes, torch.tensor([1, 3]))
    assert labels.tolist() == [3, 0]
    torch.testing.assert_close(matched[0], torch.tensor([0.52, 0.52, 0.2, 0.2]))  # the second box, cxcywh


def test_loss_of_a_batch_with_an_empty_image_worked_by_hand():
    """Two images, 4 default boxes, 2 classes. Image 0: one positive (box 0), loc error 0.5 on one
    coordinate, the 3 negatives all kept (3 per positive). Image 1: no object, so no loss at all
    (the paper's), or its ``empty_negatives`` hardest negatives normalised as 1 positive."""
    dboxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.7, 0.2, 0.2, 0.2], [0.2, 0.7, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    coder = BoxCoder(dboxes)
    gt = dboxes[None].repeat(2, 1, 1)
    labels = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]])
    ploc = torch.zeros(2, 4, 4)
    ploc[0, 0, 0] = 0.5
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 2.0, 1.0, -1.0]])  # (classes, boxes)
    plabel = torch.stack([logits, logits])
    ce = [math.log(2), math.log(1 + math.e ** 2), math.log(1 + math.e), math.log(1 + math.e ** -1)]
    out = MultiBoxLoss(coder)(ploc, plabel, gt, labels)
    torch.testing.assert_close(out["loc"], torch.tensor(0.125 / 2))  # the mean over both images
    torch.testing.assert_close(out["cls"], torch.tensor(sum(ce) / 2))
    torch.testing.assert_close(out["total"], out["loc"] + out["cls"])
    with_empty = MultiBoxLoss(coder, empty_negatives=3)(ploc, plabel, gt, labels)
    hardest = sorted(ce, reverse=True)[:3]  # boxes 1, 2, 0 of the empty image, normalised by 3 / 3 = 1
    torch.testing.assert_close(with_empty["cls"], torch.tensor((sum(ce) + sum(hardest)) / 2))
    assert MultiBoxLoss(coder).neg_pos_ratio == 3 and MultiBoxLoss(coder).empty_negatives == 0


def test_decoding_defaults():
    """COCO evaluation's: scores above 0.05, NMS at IoU 0.5, 200 candidates per class, 200 detections
    an image, boxes clamped after NMS; test_dataset.py uses the model's own unless told; the pictures
    of the inference scripts keep scores of 0.3 and more, NMS the model's own."""
    for spec in (SSDLITE, get_spec("ssd"), get_spec("ssd512")):
        post = Postprocessor.for_spec(spec)
        assert (post.score_threshold, post.nms_threshold, post.max_per_class, post.max_output) == (0.05, 0.5, 200, 200)
        assert not post.clip_before_nms and post.coder.max_log_size is None
    assert Postprocessor(BoxCoder.for_spec(SSDLITE)).score_threshold == 0.05
    assert script("test_dataset").get_args_parser().parse_args([]).cls_threshold is None
    assert Postprocessor.for_spec(SSDLITE, score_threshold=None, nms_threshold=0.6).nms_threshold == 0.6
    for name in ("test_image", "test_video"):
        args = script(name).get_args_parser().parse_args(["--input", "x"])
        assert args.cls_threshold == 0.3
        assert args.nms_threshold is None  # the model's own (an exported file's) unless asked


class FixedDecoding:
    """Decodes any output to one detection at normalised ltrb (0.1, 0.2, 0.5, 0.6), label 2."""

    def __call__(self, ploc, plabel, out_device=None):
        return [(torch.tensor([[0.1, 0.2, 0.5, 0.6]]), torch.tensor([2]), torch.tensor([0.9]))] * len(ploc)


def test_the_detector_gives_boxes_in_the_pixels_of_each_image():
    detector = Detector(build_model("ssdlite", 3), [7, 9], ["cat", "dog"])
    detector.postprocess = FixedDecoding()
    wide, tall = torch.zeros(3, 50, 80, dtype=torch.uint8), torch.zeros(3, 500, 200, dtype=torch.uint8)
    a, b = detector([wide, tall])
    torch.testing.assert_close(a.boxes, torch.tensor([[8.0, 10.0, 40.0, 30.0]]))  # x by 80, y by 50
    torch.testing.assert_close(b.boxes, torch.tensor([[20.0, 100.0, 100.0, 300.0]]))  # x by 200, y by 500
    assert a.names == ["dog"] and a.labels.tolist() == [2]


def test_annotations_are_rescaled_per_axis_to_the_decoded_image(tmp_path):
    """An image annotated at 200 x 100 (w x h) and decoded at 100 x 100: x halves, y stays."""
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 200}],
            "categories": [{"id": 5, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [40, 10, 100, 30], "iscrowd": 0,
                             "area": 3000}]}
    (tmp_path / "a.jpg").write_bytes(b"")  # present; annotations() reads no pixels
    dataset = CocoDetection(str(tmp_path), coco)
    boxes, labels, crowd = dataset.annotations(1, height=100, width=100)
    torch.testing.assert_close(boxes, torch.tensor([[20.0, 10.0, 70.0, 40.0]]))
    assert labels.tolist() == [1] and len(crowd) == 0
    same, _, _ = dataset.annotations(1, height=100, width=200)  # the annotated frame: untouched
    torch.testing.assert_close(same, torch.tensor([[40.0, 10.0, 140.0, 40.0]]))


def test_detections_convert_from_coco_results_and_to_json():
    from src.inference.detections import Detections
    results = [{"image_id": 1, "category_id": 9, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.912345},
               {"image_id": 1, "category_id": 7, "bbox": [0.04, 1.26, 2.0, 3.0], "score": 0.5}]
    dets = Detections.from_coco_results(results, category_ids=[7, 9], category_names=["cat", "dog"])
    np.testing.assert_allclose(dets.boxes, [[10.0, 20.0, 40.0, 60.0], [0.04, 1.26, 2.04, 4.26]], rtol=1e-6)
    assert dets.labels.tolist() == [2, 1] and dets.names == ["dog", "cat"]
    np.testing.assert_allclose(dets.scores, [0.912345, 0.5], rtol=1e-6)
    assert dets.to_list() == [
        {"label": 2, "name": "dog", "score": 0.9123, "box": [10.0, 20.0, 40.0, 60.0]},
        {"label": 1, "name": "cat", "score": 0.5, "box": [0.0, 1.3, 2.0, 4.3]},
    ]
    empty = Detections.from_coco_results([], [7, 9], ["cat", "dog"])
    assert empty.boxes.shape == (0, 4) and empty.to_list() == []


def test_a_video_frame_becomes_an_rgb_tensor():
    import numpy as np

    from src.inference.detector import bgr_to_tensor
    frame = np.zeros((2, 3, 3), np.uint8)
    frame[..., 0] = 10  # OpenCV's blue
    frame[..., 2] = 30  # red
    tensor = bgr_to_tensor(frame)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.uint8
    assert tensor[0].unique().tolist() == [30] and tensor[2].unique().tolist() == [10]


def test_weight_decay_goes_on_every_weight_matrix_and_not_on_vectors():
    from src.training.optim import param_groups
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Conv2d(1, 2, 3))
    decay, no_decay = param_groups(model, 5e-4)
    assert [tuple(p.shape) for p in decay["params"]] == [(4, 3), (2, 1, 3, 3)]
    assert [tuple(p.shape) for p in no_decay["params"]] == [(4,), (4,), (4,), (2,)]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (5e-4, 0.0)


def test_the_detectors_defaults_and_its_checkpoint_categories(tmp_path):
    model = build_model("ssdlite", 5)  # a head of 4 categories, of which the checkpoint names 2
    detector = Detector(model, [7, 9], ["cat", "dog"])
    post = detector.postprocess
    assert (post.score_threshold, post.nms_threshold, post.max_output, post.num_labels) == (0.3, 0.5, 200, 2)
    tuned = Detector(model, [7, 9], ["cat", "dog"], nms_threshold=0.45, max_output=50).postprocess
    assert (tuned.nms_threshold, tuned.max_output) == (0.45, 50)
    assert detector.amp is False and detector.category_ids == [7, 9] and detector.device == torch.device("cpu")
    path = tmp_path / "lite.pth"  # ours: categories in the file
    torch.save({"model": model.state_dict(), "category_ids": [7, 9, 11, 12],
                "category_names": ["cat", "dog", "cow", "owl"]}, path)
    ours = Detector.from_checkpoint(str(path), cls_threshold=0.4)
    assert (ours.category_ids, ours.category_names, ours.postprocess.score_threshold) == (
        [7, 9, 11, 12], ["cat", "dog", "cow", "owl"], 0.4)
    assert ours.device == torch.device("cpu") and next(ours.model.parameters()).device.type == "cpu"
    foreign = tmp_path / "nvidia_form.pth"  # no categories: the caller's
    torch.save({"model": {"module." + k: v for k, v in model.state_dict().items()}}, foreign)
    named = Detector.from_checkpoint(str(foreign), categories=DatasetCategories([3, 4], ["a", "b"]))
    assert (named.category_ids, named.category_names, named.postprocess.num_labels) == ([3, 4], ["a", "b"], 2)


def test_an_empty_image_with_one_hard_negative_weighs_as_a_third_of_a_positive():
    """``empty_negatives=1``: the hardest negative of an object-free image, normalised by 1 / 3."""
    dboxes = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    coder = BoxCoder(dboxes)
    plabel = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]])  # background 0, class 1: 1 and -1
    out = MultiBoxLoss(coder, empty_negatives=1)(torch.zeros(1, 4, 2), plabel, dboxes[None], torch.zeros(1, 2,
                                                                                                      dtype=torch.long))
    hardest = math.log(1 + math.e)  # box 0's cross-entropy against background
    torch.testing.assert_close(out["cls"], torch.tensor(3 * hardest))


def test_what_a_checkpoints_labels_mean():
    from src.data.categories import label_categories

    def labels(stored, num_classes, dataset=None):
        ids, names, _ = label_categories(stored, num_classes, dataset and DatasetCategories(*dataset, "x.json"))
        return ids, names
    coco_ids, coco_names = [i for i, _ in COCO_CATEGORIES], [n for _, n in COCO_CATEGORIES]
    assert labels(([4, 9], ["a", "b"]), 3) == ([4, 9], ["a", "b"])  # ours: as stored
    assert labels(([4, 9], ["a", "b"]), 3, dataset=([1, 2], ["b", "a"])) == ([2, 1], ["a", "b"])  # by name
    assert labels(None, 81) == (coco_ids, coco_names)  # a foreign 81-way head: COCO's
    part = labels(None, 81, dataset=([1, 3], ["person", "car"]))  # COCO's part: the rest left out
    assert part == ([1, None, 3] + [None] * 77, coco_names)
    assert labels(None, 81, dataset=([1, 3], ["cat", "car"])) == ([1, 3], ["cat", "car"])  # other names
    assert labels(None, 4, dataset=([5, 6], ["x", "y"])) == ([5, 6], ["x", "y"])
    assert labels(None, 4) == ([1, 2, 3], ["class_1", "class_2", "class_3"])
    # what reading labels without names assumes is said
    data = DatasetCategories([5, 6], ["x", "y"], "x.json")
    assert "read as the categories of x.json" in label_categories(None, 3, data)[2][0]
    assert "labels 1-2 are read as them" in label_categories(None, 4, data)[2][0]


def test_pixel_targets_from_coco_annotations():
    from src.data.targets import normalised, pixel_targets
    anns = [{"bbox": [10, 20, 30, 40], "category_id": 7, "iscrowd": 0},
            {"bbox": [90, 90, 50, 50], "category_id": 9, "iscrowd": 0},  # clipped at the image's edge
            {"bbox": [5, 5, 0.5, 10], "category_id": 7, "iscrowd": 0},  # under a pixel wide: dropped
            {"bbox": [0, 0, 20, 20], "category_id": 9, "iscrowd": 1}]  # a crowd: an ignore region
    anns += [{"bbox": [-5, -6, 10, 12], "category_id": 7, "iscrowd": 0},  # clipped at the top left
             {"bbox": [50, 50, 1, 1], "category_id": 9, "iscrowd": 0}]  # exactly a pixel: kept
    boxes, labels, crowd = pixel_targets(anns, {7: 1, 9: 2}, None, height=100, width=120)
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 20.0, 40.0, 60.0], [90.0, 90.0, 120.0, 100.0],
                                                    [0.0, 0.0, 5.0, 6.0], [50.0, 50.0, 51.0, 51.0]]))
    assert labels.tolist() == [1, 2, 1, 2] and labels.dtype == torch.int64
    torch.testing.assert_close(crowd, torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    out = normalised({"boxes": boxes, "labels": labels, "crowd": crowd}, height=100, width=120)
    torch.testing.assert_close(out["boxes"], boxes / torch.tensor([120.0, 100.0, 120.0, 100.0]))
    torch.testing.assert_close(out["crowd"], torch.tensor([[0.0, 0.0, 20 / 120, 0.2]]))
    no_crowd = normalised({"boxes": boxes, "labels": labels}, height=100, width=120)
    assert no_crowd["crowd"].shape == (0, 4) and no_crowd["labels"] is labels
    empty = pixel_targets([], {}, (10, 10), 10, 10)
    assert [tuple(x.shape) for x in empty] == [(0, 4), (0,), (0, 4)]
