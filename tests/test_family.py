"""The models beyond SSD300-ResNet50 and SSDLite-MobileNetV2: SSD512-ResNet50, and torchvision's
SSD300-VGG16 and SSDLite320-MobileNetV3, whose published weights must give torchvision's own
detections here (checked without downloads: torchvision's model with random weights, saved as
its weights API stores them, loaded by this project, against torchvision's ``model.eval()``)."""
import math

import numpy as np
import pytest
import torch
from matplotlib import cbook
from torchvision.models.detection import ssd300_vgg16, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_convert

from src.checkpoints.schema import infer_model_name, load_matching_weights, load_model
from src.data.categories import DatasetCategories, torchvision_coco_labels
from src.data.images import read_image
from src.data.transforms import model_transforms
from src.inference.detector import Detector
from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.loss import MultiBoxLoss
from src.models.specs import SSD512, get_spec
from src.models.ssd import build_model
from src.training.loop import Step, train_step
from src.training.optim import param_groups

NEW = ["ssd512", "ssd300-vgg16", "ssdlite320-mnv3"]
SLOW = pytest.mark.slow  # the two large models: seconds a forward pass on the CPU
TORCHVISION = {"ssd300-vgg16": ssd300_vgg16, "ssdlite320-mnv3": ssdlite320_mobilenet_v3_large}


def photo() -> torch.Tensor:
    """A real photograph (matplotlib's sample, 512x600), uint8 RGB (3, H, W)."""
    path = str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return torch.from_numpy(read_image(path)).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def toy_picture() -> torch.Tensor:
    """A wide synthetic picture with flat areas and hard edges (3, 240, 400)."""
    g = torch.Generator().manual_seed(0)
    img = torch.full((3, 240, 400), 90, dtype=torch.uint8)
    img[:, 40:160, 60:200] = torch.tensor([200, 40, 40], dtype=torch.uint8)[:, None, None]
    return (img.int() + torch.randint(-20, 20, img.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def torchvision_model(name: str, spread: float) -> torch.nn.Module:
    """torchvision's COCO model with random weights whose scores are spread out (no ties: random
    heads give every box nearly 1/91 or exactly 1.0), in eval mode."""
    torch.manual_seed(0)
    model = TORCHVISION[name](weights=None, weights_backbone=None)
    with torch.no_grad():
        if name == "ssdlite320-mnv3":  # its N(0, 0.03) initialisation fades to zero features
            for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
                torch.nn.init.kaiming_normal_(conv.weight)
        for block in model.head.classification_head.module_list:
            (block if isinstance(block, torch.nn.Conv2d) else block[-1]).weight.mul_(spread)
    return model.eval()


SPREAD = {"ssd300-vgg16": 0.3, "ssdlite320-mnv3": 0.3}


def assert_same_detections(got, expected, box_tolerance=1e-2, score_tolerance=1e-5):
    """The same detections in the same order, except that detections whose scores are within
    ``score_tolerance`` of each other may come in either order (two sums of the same floats in
    another order differ in the last bits)."""
    labels, scores, boxes = expected["labels"], expected["scores"], expected["boxes"]
    assert len(got.labels) == len(labels)
    torch.testing.assert_close(got.scores, scores, atol=score_tolerance, rtol=0)
    start = 0
    for end in range(1, len(scores) + 1):  # blocks of ties: consecutive scores closer than the tolerance
        if end == len(scores) or scores[end - 1] - scores[end] > score_tolerance:
            ours = sorted(zip(got.labels[start:end].tolist(), got.boxes[start:end].tolist()))
            theirs = sorted(zip(labels[start:end].tolist(), boxes[start:end].tolist()))
            assert [label for label, _ in ours] == [label for label, _ in theirs], (start, end)
            torch.testing.assert_close(torch.tensor([b for _, b in ours]), torch.tensor([b for _, b in theirs]),
                                       atol=box_tolerance, rtol=0)
            start = end


@pytest.fixture(scope="module", params=[pytest.param("ssd300-vgg16", marks=SLOW), "ssdlite320-mnv3"])
def published(request, tmp_path_factory):
    """(name, torchvision's model, the file of its state dict, as torchvision publishes its weights)."""
    name = request.param
    model = torchvision_model(name, SPREAD[name])
    path = tmp_path_factory.mktemp("tv") / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return name, model, str(path)


@pytest.mark.parametrize("name", [pytest.param("ssd512", marks=SLOW), pytest.param("ssd300-vgg16", marks=SLOW),
                                  "ssdlite320-mnv3"])
def test_output_shapes_and_feature_maps(name):
    spec = get_spec(name)
    model = build_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, spec.fig_size, spec.fig_size)
    with torch.no_grad():
        maps = model.feature_maps(x)
        ploc, plabel = model(x)
    assert [m.shape[-1] for m in maps] == list(spec.feature_maps)
    assert [m.shape[1] for m in maps] == list(spec.out_channels)
    assert ploc.shape == (1, 4, spec.num_boxes) and plabel.shape == (1, 5, spec.num_boxes)


def test_ssd512_default_boxes_are_the_papers():
    """24,564 boxes: 4 a cell on 64x64, 6 on 32 to 4, 4 on 2x2 and 1x1; the first level 0.04 of the
    image, s' the geometric mean with the next (0.1)."""
    boxes = default_boxes(SSD512)
    assert SSD512.num_boxes == boxes.shape[0] == 24564
    first = boxes[:4 * 64 * 64].view(4, 64 * 64, 4)  # (box size, cell, cxcywh)
    torch.testing.assert_close(first[0, 0], torch.tensor([0.5 / 64, 0.5 / 64, 0.04, 0.04]))
    torch.testing.assert_close(first[1, 0, 2:], torch.full((2,), math.sqrt(0.04 * 0.1)))
    wide = torch.tensor([1.5 / 64, 0.5 / 64, 0.04 * math.sqrt(2), 0.04 / math.sqrt(2)])  # 2:1, second cell
    torch.testing.assert_close(first[2, 1], wide)
    last = boxes[-4:]  # the 1x1 map: centred, s_k 0.9, s' sqrt(0.9 * 1.06), the 2:1 box's width clamped to 1
    torch.testing.assert_close(last[:, :2], torch.full((4, 2), 0.5))
    torch.testing.assert_close(last[0, 2:], torch.full((2,), 0.9))
    torch.testing.assert_close(last[1, 2:], torch.full((2,), math.sqrt(0.9 * 1.06)))
    torch.testing.assert_close(last[2, 2:], torch.tensor([1.0, 0.9 / math.sqrt(2)]))


@pytest.mark.parametrize("name", [pytest.param("ssd300-vgg16", marks=SLOW), "ssdlite320-mnv3"])
def test_default_boxes_are_torchvisions_in_our_order(name):
    spec = get_spec(name)
    model = TORCHVISION[name](weights=None, weights_backbone=None, num_classes=3).eval()
    size = spec.fig_size
    maps = [torch.zeros(1, 1, f, f) for f in spec.feature_maps]
    theirs = model.anchor_generator(ImageList(torch.zeros(1, 3, size, size), [(size, size)]), maps)[0] / size
    theirs = box_convert(theirs, "xyxy", "cxcywh")  # (B, 4) in torchvision's order: level, cell, box size
    reordered, start = [], 0
    for f, a in zip(spec.feature_maps, spec.boxes_per_location):
        level = theirs[start:start + f * f * a]
        reordered.append(level.view(f * f, a, 4).transpose(0, 1).reshape(-1, 4))  # -> box size, cell
        start += f * f * a
    ours = default_boxes(spec)
    assert ours.shape[0] == spec.num_boxes == start
    torch.testing.assert_close(ours, torch.cat(reordered), atol=1e-6, rtol=0)


def test_torchvision_weights_are_recognised_by_their_keys(published):
    name, _, path = published
    model, ids, names = load_model(path)
    assert infer_model_name(torch.load(path, weights_only=True)) == name == model.spec.name
    assert model.num_classes == 91 and len(ids) == len(names) == 90
    assert (ids[0], names[0]) == (1, "person") and (ids[11], names[11]) == (None, "N/A")  # label 12: no category
    assert (ids[89], names[89]) == (90, "toothbrush")


@pytest.mark.parametrize("image", [photo, toy_picture], ids=["photo", "toy"])
def test_torchvision_weights_give_torchvisions_detections(published, image):
    """Preprocessing (mean, std, resize), default boxes, decoding (clamps, thresholds, candidates,
    NMS, how many) all as torchvision's: the same labels in the same order, the same scores, boxes
    within a hundredth of a pixel."""
    name, tv, path = published
    img = image()
    with torch.no_grad():
        expected = tv([img.float() / 255])[0]
    model, ids, names = load_model(path)
    detector = Detector(model, ids, names, cls_threshold=model.spec.decoding.score_threshold)
    detector.reported[:] = True  # torchvision reports its unused labels too
    got = detector([img])[0]
    assert len(expected["labels"]) == model.spec.decoding.max_output  # a full list: every step of the decoding counts
    # our detector's channels-last convolutions (among others) sum in another order than torchvision's:
    # on an AMD EPYC, scores 2.3e-5 and boxes 0.012 px apart (1e-5 and 0.01 px held on other CPUs)
    assert_same_detections(got, expected, box_tolerance=5e-2, score_tolerance=1e-4)


def test_the_evaluation_transform_is_torchvisions(published):
    """test_dataset.py's input (the dataset's transform) is what torchvision's model feeds its backbone."""
    name, tv, _ = published
    img = photo()
    expected = tv.transform([img.float() / 255])[0].tensors[0]
    got, _ = model_transforms(get_spec(name))(img, {})
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)


def test_unused_coco_labels_are_never_reported(published):
    name, _, path = published
    model, ids, names = load_model(path)
    detector = Detector(model, ids, names, cls_threshold=0.0)
    got = detector([photo()])[0]
    assert len(got.labels) > 0 and all(ids[label - 1] is not None for label in got.labels.tolist())
    assert "N/A" not in got.names


def test_an_exported_torchvision_head_matches_a_dataset_by_name():
    """An exported file's 90 labels (ten of them "N/A", of no category) match a COCO-style set."""
    from src.data.categories import COCO_CATEGORIES, match_by_name
    ids, names, _ = torchvision_coco_labels()
    dataset = DatasetCategories([i for i, _ in COCO_CATEGORIES], [n for _, n in COCO_CATEGORIES], "coco.json")
    matched, _ = match_by_name((ids, names), dataset)
    assert matched == ids and matched[11] is None and matched.count(None) == 10


def test_torchvision_labels_on_a_dataset_are_matched_by_name():
    dataset = DatasetCategories([1, 2], ["dog", "person"], "my.json")
    ids, names, notes = torchvision_coco_labels(dataset)
    assert ids[0] == 2 and ids[17] == 1 and names[17] == "dog"  # COCO's person is label 1, dog label 18
    assert sum(i is not None for i in ids) == 2 and any("not in my.json" in n for n in notes)


def test_the_full_tail_loads_too(tmp_path):
    """SSDLite320 trained from ImageNet's MobileNetV3 has the full tail (torchvision's rule): its
    checkpoint's shapes say so."""
    full = build_model("ssdlite320-mnv3", 4, reduced_tail=False).eval()
    assert full.feature_maps(torch.zeros(1, 3, 320, 320))[1].shape[1] == 960
    torch.save({"model": full.state_dict()}, tmp_path / "full.pth")
    model, _, _ = load_model(str(tmp_path / "full.pth"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), full.state_dict().values()))


def test_fine_tuning_from_published_weights_reinitialises_the_class_heads_only(published):
    name, tv, path = published
    model = build_model(name, 4)
    skipped = load_matching_weights(model, path)
    assert skipped and all(k.startswith("head.classification_head.") for k in skipped)
    state = tv.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items() if k not in skipped)


@SLOW
@pytest.mark.parametrize("name", NEW)
def test_a_few_steps_lower_the_loss(name):
    """Two images with one box each, three steps (five for the small model): the loss falls (every
    model trains end to end; VGG-16 without BatchNorm wants a small step from random weights)."""
    torch.manual_seed(0)
    spec = get_spec(name)
    model = build_model(name, 3).train()
    criterion = MultiBoxLoss(BoxCoder.for_spec(spec))
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=1e-4 if name == "ssd300-vgg16" else 1e-2,
                                momentum=0.9)
    step = Step(optimizer, None, torch.device("cpu"), None, False, False)
    images = torch.randn(2, 3, spec.fig_size, spec.fig_size)
    targets = [{"boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.4, 0.3, 0.9, 0.8]]), "labels": torch.tensor([2])}]
    steps = 5 if name == "ssdlite320-mnv3" else 3
    losses = [train_step(model, criterion, images, targets, step)["total"].item() for _ in range(steps)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("name", [pytest.param("ssd300-vgg16", marks=SLOW), "ssdlite320-mnv3"])
def test_the_spec_carries_torchvisions_settings(name):
    """Every setting torchvision's model holds, as the spec holds it (read from torchvision's builder)."""
    spec, tv = get_spec(name), TORCHVISION[name](weights=None, weights_backbone=None)
    d, pre = spec.decoding, spec.preprocessing
    assert (d.score_threshold, d.nms_threshold, d.max_per_class, d.max_output) == (
        tv.score_thresh, tv.nms_thresh, tv.topk_candidates, tv.detections_per_img)
    assert d.clip_before_nms and d.max_log_size == tv.box_coder.bbox_xform_clip
    assert tv.box_coder.weights == (10.0, 10.0, 5.0, 5.0)  # our variances 0.1 and 0.2
    assert list(pre.mean) == tv.transform.image_mean and list(pre.std) == tv.transform.image_std
    assert tv.transform.fixed_size == (spec.fig_size, spec.fig_size) and not pre.antialias


@pytest.mark.slow
def test_exported_torchvision_weights_detect_as_pytorch(published, tmp_path):
    """export_onnx.py --with-nms on torchvision's weights, run on ONNX Runtime without PyTorch
    (its own preprocessing, the model's metadata): PyTorch's detections."""
    import subprocess
    import sys

    from test_export import ROOT

    from src.inference.runtime import ExportedDetector
    name, _, path = published
    out = tmp_path / "m.onnx"
    result = subprocess.run([sys.executable, "export_onnx.py", "--pretrained-model", path, "--output", str(out),
                             "--with-nms"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    exported = ExportedDetector(str(out), cls_threshold=None)
    assert exported.cls_threshold == get_spec(name).decoding.score_threshold
    model, ids, names = load_model(path)
    img = photo()
    expected = Detector(model, ids, names, cls_threshold=exported.cls_threshold)([img])[0]
    got = exported([img.permute(1, 2, 0).numpy()])[0]
    assert len(expected.labels) > 50 and "N/A" not in got.names
    assert_same_detections(
        type(got)(torch.from_numpy(got.boxes), torch.from_numpy(got.labels), torch.from_numpy(got.scores), got.names),
        {"labels": expected.labels, "scores": expected.scores, "boxes": expected.boxes},
        box_tolerance=0.05, score_tolerance=1e-4)


@pytest.mark.slow
def test_vgg16_from_trained_weights_freezes_its_first_stage_as_torchvision(monkeypatch):
    """From ImageNet's weights (torchvision freezes conv1_1 and conv1_2 then), and from a checkpoint
    (a resumed or fine-tuned run: the same parameters train, so the optimizer's state fits)."""
    import torchvision.models as tvm
    real = tvm.vgg16
    monkeypatch.setattr("torchvision.models.detection.ssd.vgg16", lambda weights=None, **k: real(weights=None, **k))
    frozen = {"backbone.features.0.weight", "backbone.features.0.bias", "backbone.features.2.weight",
              "backbone.features.2.bias"}
    pretrained = build_model("ssd300-vgg16", 3, pretrained_backbone=True)  # the download faked away
    assert {n for n, p in pretrained.named_parameters() if not p.requires_grad} == frozen
    assert {n for n, p in build_model("ssd300-vgg16", 3, from_trained=True).named_parameters()
            if not p.requires_grad} == frozen
    assert all(p.requires_grad for p in build_model("ssd300-vgg16", 3).parameters())  # from scratch


def test_a_resumed_or_fine_tuned_ssdlite320_keeps_the_tail_it_started_with(tmp_path):
    """A run from ImageNet's MobileNetV3 has the full tail: resumed (built without ImageNet's
    weights) or fine-tuned from, it must be built with it again."""
    import train
    full = build_model("ssdlite320-mnv3", 4, reduced_tail=False)
    args = train.get_args_parser().parse_args(["--model", "ssdlite320-mnv3"])
    resumed = train.create_model(args, 4, torch.device("cpu"), full.state_dict())
    assert resumed.state_dict().keys() == full.state_dict().keys()
    assert all(a.shape == b.shape for a, b in zip(resumed.state_dict().values(), full.state_dict().values()))
    torch.save({"model": full.state_dict()}, tmp_path / "full.pth")
    args = train.get_args_parser().parse_args(["--model", "ssdlite320-mnv3", "--finetune-from",
                                                str(tmp_path / "full.pth")])
    tuned = train.create_model(args, 4, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), full.state_dict().values()))
