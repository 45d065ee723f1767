"""A shortened demo (tiny toy set, one short epoch) through the same entry point as `make demo`."""
import os
import re
import subprocess
import sys

import cv2
import pytest

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` leaves this file out

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_short_demo_end_to_end_then_reuse(tmp_path):
    cmd = [sys.executable, "demo.py", "--data", str(tmp_path / "toy"), "--out", str(tmp_path / "demo"),
           "--docs", str(tmp_path / "docs"), "--train-images", "8", "--val-images", "3", "--epochs", "1",
           "--batch-size", "4", "--image-size", "120", "160"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    outputs = tmp_path / "demo" / "outputs"
    for name in ["detection.jpg", "clip_prediction.mp4", "detections.json", "curves.png"]:
        assert (outputs / name).stat().st_size > 0, name
    assert cv2.imread(str(tmp_path / "docs" / "demo_detection.jpg")).shape == (120, 160, 3)
    assert (tmp_path / "docs" / "demo_curves.png").exists()
    assert (tmp_path / "docs" / "demo_confusion.png").exists() and (outputs / "report" / "index.html").exists()
    assert "Average Precision  (AP) @[ IoU=0.50      |" in first.stdout
    torch_ap, onnx_ap = map(float, re.search(r"COCO AP on the val split: PyTorch (\S+), ONNX Runtime (\S+)",
                                              first.stdout).groups())
    assert abs(torch_ap - onnx_ap) <= 0.002  # the exported model on ONNX Runtime scores as PyTorch does

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reusing the toy dataset" in second.stdout and "is complete: 1 of 1 epochs done" in second.stdout
