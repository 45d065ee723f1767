"""An exported model runs in the inference scripts on ONNX Runtime and OpenVINO, without PyTorch,
with the detections PyTorch gives: labels equal, boxes within half a pixel, scores within 0.002."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_bad_input import run_script, training_checkpoint

from src.data.dataset import coco_paths
from src.data.images import read_image
from src.inference.detector import Detector
from src.inference.runtime import ExportedDetector, preprocess
from src.utils.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ["onnxruntime", "openvino"]


def export(checkpoint, out, *flags):
    result = subprocess.run([sys.executable, "export_onnx.py", "--pretrained-model", str(checkpoint), "--output",
                             str(out), *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return out


def export_in_process(checkpoint, out, decode=True):
    """export_onnx.py's work without its process start: the model, its graph, the metadata."""
    from src.checkpoints.schema import load_model
    from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from src.inference.export import ExportableSSD, add_metadata, export_file
    from src.inference.runtime import metadata
    from src.models.postprocess import Postprocessor
    model, ids, names = load_model(str(checkpoint))
    post = Postprocessor.for_spec(model.spec, num_labels=len(ids))
    export_file(ExportableSSD(model, post, decode=decode).eval(), str(out), decode, 17)
    entries = metadata("ssdlite", 300, IMAGENET_MEAN, IMAGENET_STD, ids, names, post.score_threshold,
                       post.nms_threshold, post.max_output)
    add_metadata(str(out), {**entries, "decoded": "1" if decode else "0"})
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An SSDLite checkpoint of ours (random weights, the toy categories) and its export with NMS
    (export_onnx.py itself is run by the slow tests below and by test_export.py)."""
    root = tmp_path_factory.mktemp("exported")
    training_checkpoint(root / "lite.pth")
    export_in_process(root / "lite.pth", root / "lite.onnx")
    return root


@pytest.fixture(scope="module")
def trained(ours, tmp_path_factory):
    """train.py's checkpoint of one toy epoch (scores spread, unlike random weights' many ties)
    and its export with NMS."""
    root = tmp_path_factory.mktemp("trained")
    return ours, export(ours, root / "lite.onnx", "--with-nms")


def photos(toy_root, count=3):
    folder = coco_paths(toy_root, "val")[1]
    return [read_image(os.path.join(folder, f)) for f in sorted(os.listdir(folder))[:count]]


def test_preprocessing_is_the_evaluation_transform(toy_root, exported):
    import torch

    from src.data.transforms import val_transforms
    info = ExportedDetector(str(exported / "lite.onnx")).info
    images = photos(toy_root, 2)
    ours = preprocess(images, info)
    theirs = torch.stack([val_transforms()(torch.from_numpy(im).permute(2, 0, 1)) for im in images]).numpy()
    assert ours.shape == theirs.shape == (2, 3, 300, 300)
    assert np.abs(ours - theirs).max() < 1.5 / 255 / 0.224  # at most one grey level apart, after normalising


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_exported_detections_equal_pytorchs(toy_root, trained, backend):
    """The ten best of each image: the same scores (within 0.002), the best one the same label and
    box (within half a pixel). Below those, a barely trained model's scores tie by the dozen, and
    which of two tied boxes NMS keeps is arbitrary; the AP check of the demo covers the rest."""
    import torch
    checkpoint, onnx_file = trained
    torch_detector = Detector.from_checkpoint(checkpoint, cls_threshold=0.1)
    detector = ExportedDetector(str(onnx_file), backend, cls_threshold=0.1)
    assert detector.category_names == torch_detector.category_names and detector.model_name == "ssdlite"
    images = photos(toy_root)
    expected = torch_detector([torch.from_numpy(im).permute(2, 0, 1) for im in images])
    for want, got in zip(expected, detector(images)):
        assert len(got.scores) >= 10
        np.testing.assert_allclose(got.scores[:10], want.scores[:10].numpy(), atol=0.002)
        assert got.labels[0] == want.labels[0] and np.abs(got.boxes[0] - want.boxes[0].numpy()).max() < 0.5


@pytest.mark.slow
def test_the_scripts_run_an_exported_model_without_importing_torch(toy_root, trained, tmp_path):
    photo = os.path.join(coco_paths(toy_root, "val")[1], "000001.jpg")
    runs = {}
    for backend, model in [("pytorch", trained[0]), ("onnxruntime", trained[1]), ("openvino", trained[1])]:
        out = tmp_path / f"{backend}.json"
        result = subprocess.run([sys.executable, "-X", "importtime", "test_image.py", "--pretrained-model",
                                 str(model), "--backend", backend, "--device", "cpu", "--input", photo, "--output",
                                 str(tmp_path / f"{backend}.jpg"), "--json", str(out), "--cls-threshold", "0.25"],
                                cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import")}
        assert ("torch" in imported) == (backend == "pytorch"), backend
        assert "torchvision" not in imported or backend == "pytorch"
        runs[backend] = json.loads(out.read_text())[0]["detections"]
    assert len(runs["pytorch"]) >= 3
    for backend in BACKENDS:  # the best three: as the test above, through the script's JSON
        best, want = runs[backend][:3], runs["pytorch"][:3]
        assert [d["name"] for d in best] == [d["name"] for d in want]
        assert all(abs(a["score"] - b["score"]) < 0.002 for a, b in zip(best, want))
        assert max(abs(u - v) for u, v in zip(best[0]["box"], want[0]["box"])) <= 0.5


def test_a_raw_export_is_refused_with_the_fix(exported, tmp_path):
    export_in_process(exported / "lite.pth", tmp_path / "raw.onnx", decode=False)
    with pytest.raises(CheckpointError, match="export it again with export_onnx.py --with-nms"):
        ExportedDetector(str(tmp_path / "raw.onnx"))


@pytest.mark.parametrize("argv, message", [
    (["--backend", "pytorch"], "is an exported model: run it with --backend onnxruntime"),
    (["--nms-threshold", "0.6"], "was exported with NMS at IoU 0.5: export it again with --nms-threshold 0.6"),
    (["--annotations", "{toy}/annotations/instances_val2017.json"], "carries its own categories"),
    (["--amp"], "--amp and --device are PyTorch's"),
    (["--device", "cuda"], "--amp and --device are PyTorch's"),  # whether or not there is a GPU
])
def test_wrong_flags_for_an_exported_model_are_one_line(argv, message, exported, toy_root, tmp_path, monkeypatch,
                                                         capsys):
    photo = os.path.join(coco_paths(toy_root, "val")[1], "000001.jpg")
    argv = [a.replace("{toy}", toy_root) for a in argv]
    code = run_script("test_image.py", ["--pretrained-model", str(exported / "lite.onnx"), "--input", photo,
                                        "--output", str(tmp_path / "o.jpg"), *argv], monkeypatch)
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.jpg").exists()


def test_a_checkpoint_given_to_an_exported_backend_is_refused(exported, toy_root, tmp_path, monkeypatch, capsys):
    photo = os.path.join(coco_paths(toy_root, "val")[1], "000001.jpg")
    code = run_script("test_image.py", ["--pretrained-model", str(exported / "lite.pth"), "--backend", "openvino",
                                        "--input", photo, "--output", str(tmp_path / "o.jpg")], monkeypatch)
    assert code == 1 and "runs a model exported with export_onnx.py --with-nms" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_quantizes_the_convolutions_and_keeps_the_decoding_float(exported, toy_root, tmp_path):
    import onnx
    out = tmp_path / "int8.onnx"
    result = subprocess.run([sys.executable, "export_onnx.py", "--pretrained-model", str(exported / "lite.pth"),
                             "--output", str(out), "--with-nms", "--int8", "--data-path", toy_root,
                             "--calibration-images", "4"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "calibrating INT8 on 4 images of " in result.stdout and "train2017" in result.stdout
    assert "INT8 on openvino" in result.stdout
    graph = onnx.load(str(out))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["precision"] == "int8" and meta["model"] == "ssdlite"
    ops = [n.op_type for n in graph.graph.node]
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    produced_by = {o: n.op_type for n in graph.graph.node for o in n.output}
    assert all(produced_by.get(c.input[1]) == "DequantizeLinear" for c in convs)  # every conv weight is INT8
    nms = next(n for n in graph.graph.node if n.op_type == "NonMaxSuppression")
    assert produced_by[nms.input[0]] != "DequantizeLinear" and ops.count("QuantizeLinear") > 10
    assert out.stat().st_size < (exported / "lite.onnx").stat().st_size / 2
    photo = read_image(os.path.join(coco_paths(toy_root, "val")[1], "000001.jpg"))
    for backend in BACKENDS:
        detector = ExportedDetector(str(out), backend, cls_threshold=0.0)
        assert detector.info.precision == "int8" and len(detector([photo])[0].scores) > 0


@pytest.mark.parametrize("argv", [["--int8", "--data-path", "{toy}"], ["--with-nms", "--int8"]])
def test_int8_needs_an_export_with_nms_and_data(argv, exported, toy_root, tmp_path, monkeypatch, capsys):
    argv = [a.replace("{toy}", toy_root) for a in argv]
    code = run_script("export_onnx.py", ["--pretrained-model", str(exported / "lite.pth"), "--output",
                                         str(tmp_path / "q.onnx"), *argv], monkeypatch)
    assert code == 1 and "--int8 quantizes a --with-nms export and calibrates on --data-path" in \
        capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()


def test_an_exported_file_where_a_checkpoint_is_expected_asks_for_the_pth(exported, toy_root, tmp_path, monkeypatch,
                                                                          capsys):
    code = run_script("train.py", ["--data-path", toy_root, "--model", "ssdlite", "--batch-size", "4",
                                   "--save-folder", str(tmp_path / "s"), "--no-pretrained-backbone",
                                   "--finetune-from", str(exported / "lite.onnx")], monkeypatch)
    assert code == 1 and "is an exported ONNX model, not a checkpoint: give the .pth" in capsys.readouterr().err


def test_threads_set_pytorchs_threads_too(exported, monkeypatch):
    import torch

    from src.cli import detector_from_args
    from test_image import get_args_parser
    before = torch.get_num_threads()
    args = get_args_parser().parse_args(["--pretrained-model", str(exported / "lite.pth"), "--input", "x",
                                         "--threads", "1"])
    try:
        detector_from_args(args, str(exported / "lite.pth"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
