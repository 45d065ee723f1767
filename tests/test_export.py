"""ONNX export: onnxruntime on the CPU matches PyTorch, raw and with decoding in the graph."""
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from src.inference.export import ExportableSSD, export_file
from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.postprocess import Postprocessor
from src.models.specs import SSDLITE
from src.models.ssd import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def export(ckpt, out, *flags):
    result = subprocess.run([sys.executable, "export_onnx.py", "--pretrained-model", str(ckpt), "--output",
                             str(out), *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssd", "ssdlite"])
def test_raw_outputs_match_pytorch(name, kit_state_dict, tmp_path):
    ckpt = tmp_path / "published.pth"
    torch.save({"model": kit_state_dict(name)}, ckpt)  # NVIDIA's form
    session = export(ckpt, tmp_path / "m.onnx")
    model = build_model(name, 81).eval()
    from src.checkpoints.schema import load_model_weights
    load_model_weights(model, kit_state_dict(name))
    x = torch.randn(2, 3, 300, 300, generator=torch.Generator().manual_seed(0))  # batch 2: the axis is dynamic
    with torch.no_grad():
        ploc, plabel = model(x)
    got = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(got[0], ploc.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got[1], plabel.numpy(), atol=1e-4, rtol=1e-4)
    dboxes = np.load(tmp_path / "m.dboxes.npy")
    np.testing.assert_array_equal(dboxes, default_boxes(model.spec).numpy())
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["model"] == name and "person" in meta["category_names"]


def hot_outputs(n, num_classes, seed):
    """Head outputs with clear detections, as the kit's decode case makes them."""
    g = torch.Generator().manual_seed(seed)
    b = SSDLITE.num_boxes
    ploc = 0.5 * torch.randn(n, 4, b, generator=g)
    plabel = torch.randn(n, num_classes, b, generator=g)
    for i in range(n):
        hot = torch.randint(0, b, (40,), generator=g)
        cls = torch.randint(1, num_classes, (40,), generator=g)
        plabel[i, cls, hot] += 9.0
    return ploc, plabel


def as_sets(boxes, labels, scores):
    keep = scores > 0
    return sorted(zip(np.round(scores[keep], 4).tolist(), labels[keep].tolist(),
                      [tuple(b) for b in np.round(boxes[keep], 4).tolist()]))


def test_graph_decoding_equals_the_postprocessor():
    coder = BoxCoder(default_boxes(SSDLITE))
    ploc, plabel = hot_outputs(3, 6, seed=1)
    module = ExportableSSD(None, Postprocessor(coder), decode=True)
    boxes, labels, scores = module.detect(ploc, plabel)
    for i, (b, lab, s) in enumerate(Postprocessor(coder)(ploc, plabel)):
        assert as_sets(boxes[i].numpy(), labels[i].numpy(), scores[i].numpy()) == \
            as_sets(b.numpy(), lab.numpy(), s.numpy())


class FixedHeads(torch.nn.Module):
    """A 'model' whose head outputs are given: isolates the decoding part of the graph."""

    def __init__(self, ploc, plabel):
        super().__init__()
        self.register_buffer("ploc", ploc)
        self.register_buffer("plabel", plabel)

    def forward(self, images):
        n = images.shape[0]
        return self.ploc[:n] + 0 * images.mean(), self.plabel[:n]


@pytest.mark.slow
def test_onnxruntime_decoding_gives_the_same_detections(tmp_path):
    coder = BoxCoder(default_boxes(SSDLITE))
    ploc, plabel = hot_outputs(2, 6, seed=2)
    module = ExportableSSD(FixedHeads(ploc, plabel), Postprocessor(coder), decode=True).eval()
    x = torch.zeros(2, 3, 300, 300)
    export_file(module, str(tmp_path / "d.onnx"), decode=True, opset=17)
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    boxes, labels, scores = session.run(None, {"images": x.numpy()})
    expected = Postprocessor(coder)(ploc, plabel)
    for i, (b, lab, s) in enumerate(expected):
        assert as_sets(boxes[i], labels[i], scores[i]) == as_sets(b.numpy(), lab.numpy(), s.numpy())


@pytest.mark.slow
def test_full_export_with_nms_runs_on_a_checkpoint(tmp_path):
    ckpt = tmp_path / "lite.pth"
    torch.save({"model": build_model("ssdlite", 5).state_dict()}, ckpt)
    session = export(ckpt, tmp_path / "nms.onnx", "--with-nms", "--cls-threshold", "0.2")
    boxes, labels, scores = session.run(None, {"images": np.random.rand(3, 3, 300, 300).astype(np.float32)})
    assert boxes.shape == (3, 200, 4) and labels.shape == scores.shape == (3, 200)
    assert (scores[scores > 0] > 0.2).all() and boxes.min() >= 0 and boxes.max() <= 1
