"""The GPU path, run for real: AMP float16 with its scaler, channels-last, torch.compile, NCCL,
CUDA evaluation and inference against the CPU's, a GPU checkpoint on the CPU, the out-of-memory
message. Skipped without a GPU (CI has none); `bash tools/gpu_check.sh` runs them on one.

``SSD_TEST_DEVICE=cpu pytest -m cuda`` runs them on the CPU instead, to check the tests
themselves where there is no GPU (the AMP then is bfloat16, and the out-of-memory test skips).
"""
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch
from test_train import ROOT, TORCHRUN, train_cmd

from src.checkpoints.schema import load_model
from src.data.dataset import coco_paths
from src.data.toy_dataset import write_split

DEVICE = os.environ.get("SSD_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.slow,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA GPU here")]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, **kw)


def gpu_train_cmd(toy_root, save, model="ssdlite", *extra, epochs=1):
    cmd = train_cmd(toy_root, save, "--model", model, "--device", DEVICE, "--batch-size", "4", *extra, epochs=epochs)
    return [sys.executable, *cmd[1:]]


@pytest.mark.parametrize("model", ["ssdlite", "ssd"])
def test_amp_training_resumes_with_its_scaler(toy_root, tmp_path, model):
    """Two epochs straight, and one then a resume, with --amp --channels-last: the scaler's state
    goes through the checkpoint, and the weights agree (cuDNN picks its algorithms per run, so
    bit-identity is not promised on a GPU; a close match is)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ["--amp", "--channels-last"]
    assert run(gpu_train_cmd(toy_root, straight, model, *flags, epochs=2)).returncode == 0
    assert run(gpu_train_cmd(toy_root, resumed, model, *flags, epochs=1)).returncode == 0
    first = torch.load(resumed / f"{model}.pth", weights_only=True)
    again = run(gpu_train_cmd(toy_root, resumed, model, *flags, epochs=2))
    assert again.returncode == 0 and "Resuming" in again.stdout, again.stderr
    a = torch.load(straight / f"{model}.pth", weights_only=True)
    b = torch.load(resumed / f"{model}.pth", weights_only=True)
    if DEVICE == "cuda":
        assert first["scaler"] is not None and first["scaler"]["scale"] > 0  # float16: a GradScaler ran
        assert a["scaler"]["scale"] == b["scaler"]["scale"]
    for name, w in a["model"].items():
        if w.is_floating_point():
            torch.testing.assert_close(b["model"][name], w, atol=2e-3, rtol=2e-2, msg=name)


def test_compiled_training_runs_an_epoch(toy_root, tmp_path):
    result = run(gpu_train_cmd(toy_root, tmp_path, "ssdlite", "--compile", "--amp"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(tmp_path / "ssdlite.pth", weights_only=True)["epoch"] == 1


def test_one_process_torchrun_epoch_over_nccl(toy_root, tmp_path):
    cmd = [*TORCHRUN, "--nproc_per_node=1", "--standalone", *gpu_train_cmd(toy_root, tmp_path)[1:],
           "--eval-every", "1"]  # one process, yet a process group: the collectives run over NCCL
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "ssdlite.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and "AP" in ckpt["history"][-1]  # the gathered evaluation ran


@pytest.fixture(scope="module")
def gpu_checkpoint(toy_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("gpu")
    result = run(gpu_train_cmd(toy_root, save, "ssdlite", epochs=2))
    assert result.returncode == 0, result.stderr[-3000:]
    return str(save / "ssdlite.pth")


def test_a_gpu_checkpoint_loads_on_the_cpu(gpu_checkpoint):
    model, ids, names = load_model(gpu_checkpoint)  # map_location cpu
    assert next(model.parameters()).device.type == "cpu" and ids == [2, 5, 9, 14]


def _detections(results):
    return sorted((r["image_id"], r["category_id"], round(r["score"], 3), *[round(v) for v in r["bbox"]])
                  for r in results if r["score"] > 0.1)


def test_evaluation_on_the_gpu_finds_what_the_cpu_finds(gpu_checkpoint, toy_root, tmp_path):
    found = {}
    for device in ["cpu", DEVICE]:
        out = tmp_path / f"{device}.json"
        result = run([sys.executable, "test_dataset.py", "--pretrained-model", gpu_checkpoint, "--data-path",
                      toy_root, "--device", device, "--num-workers", "0", "--cls-threshold", "0.01", "--json",
                      str(out)])
        assert result.returncode == 0, result.stderr[-3000:]
        found[device] = json.loads(out.read_text())
    cpu, gpu = found["cpu"], found[DEVICE]
    assert abs(len(cpu) - len(gpu)) <= max(2, len(cpu) // 50)  # a few scores may cross the threshold
    cpu_by_key = {(r["image_id"], r["category_id"], tuple(round(v) for v in r["bbox"])): r["score"] for r in cpu}
    matched = [abs(cpu_by_key[k] - r["score"]) for r in gpu
               if (k := (r["image_id"], r["category_id"], tuple(round(v) for v in r["bbox"]))) in cpu_by_key]
    assert len(matched) >= 0.9 * len(gpu) and max(matched, default=0) < 2e-3  # same boxes to a pixel, scores to 2e-3


def test_image_and_video_scripts_run_on_the_gpu(gpu_checkpoint, toy_root, tmp_path):
    photo = os.path.join(coco_paths(toy_root, "val")[1], sorted(os.listdir(coco_paths(toy_root, "val")[1]))[0])
    reports = {}
    for device in ["cpu", DEVICE]:
        out = tmp_path / f"{device}.json"
        result = run([sys.executable, "test_image.py", "--pretrained-model", gpu_checkpoint, "--input", photo,
                      "--output", str(tmp_path / f"{device}.jpg"), "--device", device, "--cls-threshold", "0.2",
                      "--json", str(out)])
        assert result.returncode == 0, result.stderr[-3000:]
        reports[device] = json.loads(out.read_text())[0]["detections"]
    assert [d["label"] for d in reports["cpu"]] == [d["label"] for d in reports[DEVICE]]
    for a, b in zip(reports["cpu"], reports[DEVICE]):
        assert abs(a["score"] - b["score"]) < 2e-3 and max(abs(x - y) for x, y in zip(a["box"], b["box"])) < 1.0
    clip = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"mp4v"), 5, (320, 240))
    for _ in range(3):
        writer.write(cv2.imread(photo))
    writer.release()
    result = run([sys.executable, "test_video.py", "--pretrained-model", gpu_checkpoint, "--input", clip,
                  "--output", str(tmp_path / "out.mp4"), "--device", DEVICE, "--amp"])
    assert result.returncode == 0 and "3 frames written" in result.stdout, result.stderr[-3000:]


@pytest.mark.skipif(DEVICE != "cuda", reason="out of memory is a GPU's")
def test_out_of_gpu_memory_is_one_clear_line(tmp_path):
    data = tmp_path / "many"  # enough tiny images for one huge batch of SSD300 in float32
    write_split(str(data), "train", 1024, seed=0, size=(64, 64))
    write_split(str(data), "val", 4, seed=1, size=(64, 64))
    result = run([sys.executable, "train.py", "--data-path", str(data), "--save-folder", str(tmp_path / "s"),
                  "--log-path", str(tmp_path / "tb"), "--model", "ssd", "--batch-size", "1024", "--epochs", "1",
                  "--num-workers", "4", "--no-pretrained-backbone", "--device", "cuda"])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "train.py: error: out of GPU memory at --batch-size 1024: lower --batch-size or add --amp" in result.stderr
