"""test_dataset.py, test_image.py and test_video.py end to end on the CPU, from our own
checkpoint and from checkpoints in the original's and NVIDIA's forms."""
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch

from src.checkpoints.schema import load_model
from src.data.categories import COCO_CATEGORIES
from src.data.dataset import CocoDetection, coco_paths, eval_loader, read_rgb
from src.data.transforms import val_transforms
from src.evaluation.coco_eval import STAT_NAMES
from src.evaluation.evaluate import evaluate
from src.inference.detector import Detector
from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.postprocess import Postprocessor
from src.models.specs import SSDLITE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def run(*cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([PY, *cmd], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="session")
def published(kit_state_dict, tmp_path_factory):
    """SSD300 checkpoints in the original's and NVIDIA's (DDP-prefixed) forms, made by the kit's recipe."""
    folder = tmp_path_factory.mktemp("published")
    state = kit_state_dict("ssd")
    paths = {"original": str(folder / "SSD.pth"), "nvidia": str(folder / "nvidia_ssdpyt_amp.pt")}
    torch.save({"epoch": 54, "model_state_dict": state, "optimizer": {}, "scheduler": {}}, paths["original"])
    torch.save({"epoch": 65, "model": {"module." + k: v for k, v in state.items()}, "label_map": {}},
               paths["nvidia"])
    return paths


@pytest.fixture()
def clip(toy_root, tmp_path):
    """A 7-frame 320x240 mp4 made from the toy val images, at 12.5 fps."""
    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 12.5, (320, 240))
    folder = coco_paths(toy_root, "val")[1]
    for name in sorted(os.listdir(folder)) + sorted(os.listdir(folder))[:1]:
        writer.write(cv2.imread(os.path.join(folder, name)))
    writer.release()
    return path


def val_image(toy_root, tmp_path, index=0):
    folder = coco_paths(toy_root, "val")[1]
    src = os.path.join(folder, sorted(os.listdir(folder))[index])
    dst = tmp_path / f"photo{index}.jpg"
    dst.write_bytes(open(src, "rb").read())
    return str(dst)


@pytest.mark.slow
def test_image_from_our_checkpoint_default_output_and_json(ours, toy_root, tmp_path):
    photo = val_image(toy_root, tmp_path)
    before = open(photo, "rb").read()
    result = run("test_image.py", "--pretrained-model", ours, "--input", photo, "--json", str(tmp_path / "d.json"),
                 "--cls-threshold", "0.01")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "photo0_prediction.jpg"
    assert cv2.imread(str(out)).shape == (240, 320, 3)
    assert open(photo, "rb").read() == before
    report = json.loads((tmp_path / "d.json").read_text())
    assert report[0]["input"] == photo and len(report[0]["detections"]) > 0
    d = report[0]["detections"][0]
    assert set(d) == {"label", "name", "score", "box"} and d["name"] in {"circle", "square", "triangle", "cross"}
    # the script's detections are the detector's on the same pixels, box for box (in pixels of the photo)
    expected = Detector.from_checkpoint(ours, cls_threshold=0.01)([read_rgb(photo)])[0].to_list()
    assert [x["label"] for x in report[0]["detections"]] == [x["label"] for x in expected]
    for got, want in zip(report[0]["detections"], expected):
        assert got["box"] == pytest.approx(want["box"], abs=0.2) and got["score"] == pytest.approx(want["score"],
                                                                                                  abs=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["original", "nvidia"])
def test_image_folder_from_published_checkpoints(form, published, toy_root, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        os.replace(val_image(toy_root, tmp_path, i), inputs / f"p{i}.jpg")
    result = run("test_image.py", "--pretrained-model", published[form], "--input", str(inputs),
                 "--output", str(tmp_path / "out"), "--cls-threshold", "0.01")
    assert result.returncode == 0, result.stderr
    # the pictures, and the record of what this project wrote there (so a re-run may replace them)
    assert sorted(os.listdir(tmp_path / "out")) == [".ssd-outputs.json", "p0_prediction.jpg", "p1_prediction.jpg"]


@pytest.mark.slow
def test_video_keeps_size_frames_and_fps(ours, clip, tmp_path):
    result = run("test_video.py", "--pretrained-model", ours, "--input", clip, "--output", str(tmp_path / "o.avi"))
    assert result.returncode == 0, result.stderr
    cap = cv2.VideoCapture(str(tmp_path / "o.avi"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 7
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 240)
    assert abs(cap.get(cv2.CAP_PROP_FPS) - 12.5) < 0.01


@pytest.mark.slow
def test_dataset_script_json_and_pictures(ours, toy_root, tmp_path):
    result = run("test_dataset.py", "--pretrained-model", ours, "--data-path", toy_root, "--num-workers", "0",
                 "--json", str(tmp_path / "r.json"), "--output", str(tmp_path / "pics"), "--cls-threshold", "0.01",
                 "--timings")
    assert result.returncode == 0, result.stderr
    timings = next(line for line in result.stdout.splitlines() if line.startswith("time: "))
    for phase in ["start-up", "annotations", "checkpoint", "reading", "forward", "decoding", "COCOeval", "writing"]:
        assert f" {phase} " in timings, timings
    summary = [line for line in result.stdout.splitlines() if line.startswith(" Average")]
    assert len(summary) == 12
    results = json.loads((tmp_path / "r.json").read_text())
    assert results
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}
        assert r["category_id"] in {2, 5, 9, 14} and len(r["bbox"]) == 4 and 0 <= r["score"] <= 1
    # the AP printed and the detections written are those of the same checkpoint evaluated in process
    model, ids, _ = load_model(ours)
    ann, images = coco_paths(toy_root, "val")
    dataset = CocoDetection(images, ann, val_transforms())
    post = Postprocessor.for_spec(model.spec, score_threshold=0.01, num_labels=len(ids))
    model.to(memory_format=torch.channels_last)  # as the script runs it
    evaluation, expected = evaluate(model, eval_loader(dataset, 2, 0), post, torch.device("cpu"), category_ids=ids,
                                    channels_last=True)
    assert f"{evaluation.stats['AP']:.3f}" in summary[0]
    assert len(results) == len(expected)
    for got, want in zip(sorted(results, key=lambda r: (r["image_id"], -r["score"])),
                         sorted(expected, key=lambda r: (r["image_id"], -r["score"]))):
        assert got["category_id"] == want["category_id"] and got["bbox"] == pytest.approx(want["bbox"], abs=0.05)
    assert len([n for n in os.listdir(tmp_path / "pics") if n.endswith(".jpg")]) == 6


@pytest.mark.slow
@pytest.mark.parametrize("coco_names", [False, True])
def test_dataset_script_on_any_coco_json_with_a_published_checkpoint(published, toy_root, tmp_path, coco_names):
    """An 81-way checkpoint without categories on a set: its labels are the set's categories in id
    order (the original's rule), unless the set's categories are COCO's own (ids and names): COCO."""
    ann, images = coco_paths(toy_root, "val")
    if coco_names:  # the toy ids 2, 5, 9, 14 named as in COCO: a part of COCO
        data = json.loads(open(ann).read())
        data["categories"] = [{"id": i, "name": n} for i, n in COCO_CATEGORIES if i in (2, 5, 9, 14)]
        ann = str(tmp_path / "coco_part.json")
        open(ann, "w").write(json.dumps(data))
    result = run("test_dataset.py", "--pretrained-model", published["nvidia"], "--annotations", ann,
                 "--images", images, "--num-workers", "0", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    assert ("ssd, 80 classes" if coco_names else "ssd, 4 classes") in result.stdout


class GroundTruthModel(torch.nn.Module):
    """Outputs that reproduce the ground truth of each image, in loader order."""

    def __init__(self, dataset, coder):
        super().__init__()
        self.spec = SSDLITE
        self.outputs, self.calls = [], 0
        for i in range(len(dataset)):
            target = dataset[i][1]
            boxes, labels = coder.match_one(target["boxes"], target["labels"])
            plabel = torch.full((dataset.num_classes, coder.num_boxes), -20.0)
            plabel[labels, torch.arange(coder.num_boxes)] = 20.0
            self.outputs.append((coder.encode(boxes).T, plabel))

    def forward(self, images):
        batch = self.outputs[self.calls:self.calls + len(images)]
        self.calls += len(images)
        return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def test_map_is_one_when_the_detections_are_the_ground_truth(toy_root):
    ann, images = coco_paths(toy_root, "val")
    dataset = CocoDetection(images, ann, val_transforms())
    coder = BoxCoder(default_boxes(SSDLITE))
    model = GroundTruthModel(dataset, coder)
    evaluation, results = evaluate(model, eval_loader(dataset, batch_size=4, num_workers=0), Postprocessor(coder),
                                   torch.device("cpu"))
    stats = evaluation.stats
    assert list(stats) == STAT_NAMES
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)


@pytest.mark.slow
def test_detector_scales_boxes_to_each_image(ours):
    detector = Detector.from_checkpoint(ours, cls_threshold=0.0)
    small, big = torch.zeros(3, 50, 80, dtype=torch.uint8), torch.zeros(3, 500, 200, dtype=torch.uint8)
    a, b = detector([small, big])
    assert a.boxes[:, 0::2].max() <= 80 and a.boxes[:, 1::2].max() <= 50
    assert b.boxes[:, 0::2].max() <= 200 and b.boxes[:, 1::2].max() <= 500
    assert len(a.names) == len(a.scores)


@pytest.mark.slow
def test_architecture_and_categories_come_from_the_checkpoint(ours, published):
    model, ids, names = load_model(ours)
    assert model.spec.name == "ssdlite" and ids == [2, 5, 9, 14] and names[0] == "circle"
    model, ids, names = load_model(published["original"])
    assert model.spec.name == "ssd" and len(names) == 80 and names[0] == "person" and ids[-1] == 90


def test_faster_coco_eval_gives_the_same_twelve_numbers(toy_root):
    pytest.importorskip("faster_coco_eval")
    from src.evaluation.coco_eval import coco_evaluate
    ann, images = coco_paths(toy_root, "val")
    dataset = CocoDetection(images, ann, val_transforms())
    g = torch.Generator().manual_seed(0)
    results = []
    for image_id in dataset.ids:  # noisy copies of the ground truth plus false positives
        for a in dataset.coco.imgToAnns.get(image_id, []):
            jitter = (torch.randn(4, generator=g) * 4).tolist()
            results.append({"image_id": image_id, "category_id": a["category_id"],
                            "bbox": [v + j for v, j in zip(a["bbox"], jitter)],
                            "score": float(torch.rand(1, generator=g))})
        results.append({"image_id": image_id, "category_id": 2, "bbox": [5.0, 5.0, 30.0, 40.0], "score": 0.3})
    slow = coco_evaluate(dataset.coco, results, verbose=False, backend="pycocotools").stats
    fast = coco_evaluate(dataset.coco, results, verbose=False, backend="faster").stats
    assert 0 < slow["AP"] < 1
    assert fast == pytest.approx(slow, abs=1e-6)


def widen_to_81_classes(state: dict, num_classes: int, boxes_per_location: int) -> dict:
    """The original's form of a model trained on a K-category set: an 81-way class head whose
    labels 1..K are the set's categories in id order and whose other labels never fire."""
    wide = dict(state)
    for key in [k for k in state if k.startswith("conf.") and k.endswith((".3.weight", ".3.bias"))]:
        old = state[key].reshape(num_classes, boxes_per_location, *state[key].shape[1:])  # channel = k * A + a
        new = torch.zeros(81, *old.shape[1:])
        if key.endswith("bias"):
            new.fill_(-50.0)  # labels K+1..80: never trained, never scored
        new[:num_classes] = old
        wide[key] = new.reshape(81 * boxes_per_location, *state[key].shape[1:])
    return wide


@pytest.mark.slow
def test_an_original_checkpoint_trained_on_other_ids_gets_the_dataset_categories(ours, toy_root, tmp_path):
    state = torch.load(ours, weights_only=True)["model"]
    original = tmp_path / "SSD.pth"  # no category metadata, as the original wrote them
    torch.save({"epoch": 1, "model_state_dict": widen_to_81_classes(state, 5, 6), "optimizer": {}, "scheduler": {}},
               original)
    scores = {}
    for name, path in [("ours", ours), ("original", str(original))]:
        out = tmp_path / f"{name}.json"
        result = run("test_dataset.py", "--pretrained-model", path, "--data-path", toy_root, "--num-workers", "0",
                     "--json", str(out))
        assert result.returncode == 0, result.stderr
        scores[name] = json.loads(out.read_text())
    assert {r["category_id"] for r in scores["original"]} <= {2, 5, 9, 14}  # the toy ids, not COCO's 1, 2, 3...
    assert scores["original"] == scores["ours"]  # the same detections, under the same category ids
    photo = val_image(toy_root, tmp_path)
    named = run("test_image.py", "--pretrained-model", str(original), "--input", photo, "--annotations",
                coco_paths(toy_root, "val")[0], "--cls-threshold", "0.01", "--json", str(tmp_path / "named.json"))
    assert named.returncode == 0, named.stderr
    detections = json.loads((tmp_path / "named.json").read_text())[0]["detections"]
    assert detections and {d["name"] for d in detections} <= {"circle", "square", "triangle", "cross"}


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_the_report_folder_has_every_part_and_needs_no_network(ours, toy_root, tmp_path, processes):
    report = tmp_path / "report"
    args = ["test_dataset.py", "--pretrained-model", ours, "--data-path", toy_root, "--num-workers", "0",
            "--cls-threshold", "0.01", "--draw-threshold", "0.0", "--report", str(report), "--gallery", "3"]
    if processes == 1:
        result = run(*args)
    else:  # sharded: the report is the main process's, from every shard's detections
        torchrun = [PY, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
        result = subprocess.run([*torchrun, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in ["per_class.csv", "per_class.json", "pr_curves.png", "pr_curves.json", "confusion.png",
                 "confusion.json", "errors.png", "errors.json", "index.html"]:
        assert (report / name).stat().st_size > 0, name
    assert len([n for n in os.listdir(report / "gallery") if n.endswith(".jpg")]) == 3
    page = (report / "index.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/") >= 6  # three figures and three gallery pictures, embedded
    rows = json.loads((report / "per_class.json").read_text())
    assert [r["name"] for r in rows] == ["circle", "square", "triangle", "cross"]
    assert "category  objects" in result.stdout  # the per-category table is printed too
    matrix = json.loads((report / "confusion.json").read_text())["counts"]
    objects = sum(r["num_gt"] for r in rows)
    assert sum(sum(row) for row in matrix[:-1]) == objects  # every object is in one cell of its row
