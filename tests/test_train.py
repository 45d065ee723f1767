"""train.py end to end on a tiny toy set (CPU, SSDLite): learning, DDP, resume, kills, errors."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.data.dataset import CocoDetection, coco_paths, collate
from src.data.transforms import val_transforms
from src.evaluation.coco_eval import coco_evaluate
from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.loss import MultiBoxLoss
from src.models.specs import SSDLITE
from src.models.ssd import build_model
from src.training.loop import Step, train_step
from src.training.optim import param_groups, warmup_multistep

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` leaves this file out

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run"]
DDP_ARGS = ("--batch-size", "2", "--channels-last")  # the ddp_run fixture's (conftest.py); NHWC as test_dataset.py


def train_cmd(toy_root, save, *extra, epochs=1, eval_every=0):
    return [PY, "train.py", "--data-path", toy_root, "--save-folder", str(save), "--log-path", str(save / "tb"),
            "--model", "ssdlite", "--batch-size", "4", "--epochs", str(epochs), "--num-workers", "0",
            "--no-pretrained-backbone", "--warmup", "2", "--eval-every", str(eval_every), "--seed", "3", *extra]


def run_here(cmd, monkeypatch, capfd):
    """``cmd`` (``[python, script, args...]``) run in this process, for refusals that end before any
    training: what a subprocess would give (exit status and stderr), without its start-up."""
    from test_bad_input import run_script
    code = run_script(cmd[1], cmd[2:], monkeypatch)
    return subprocess.CompletedProcess(cmd, code, "", capfd.readouterr().err)


def wait_for(path, text, timeout=600, after=0):
    """Wait until ``text`` appears in the file at ``path`` (past offset ``after``): an event, not
    a time, so a busy machine only makes it later. :return: the offset just past it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            found = open(path, errors="replace").read().find(text, after)
            if found >= 0:
                return found + len(text)
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def run(cmd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600, **kw)


def free_port():
    """A port free now: for a rendezvous two processes must agree on beforehand (single-node runs
    use torchrun's --standalone, which binds its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ckpt(save):
    return torch.load(save / "ssdlite.pth", weights_only=True)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(toy_root):
    ann, images = coco_paths(toy_root, "train")
    ds = CocoDetection(images, ann, val_transforms())
    images, targets = collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    model = build_model("ssdlite", ds.num_classes).train()
    criterion = MultiBoxLoss(BoxCoder(default_boxes(SSDLITE)))
    optimizer = torch.optim.SGD(param_groups(model, 5e-4), lr=0.01, momentum=0.9)
    step = Step(optimizer, warmup_multistep(optimizer, 10, 0, []), torch.device("cpu"))
    losses = []
    for _ in range(8):
        losses.append(train_step(model, criterion, images, targets, step)["total"].item())
        step.lr_scheduler.step()
    assert losses[-1] < 0.7 * losses[0], losses


def test_two_processes_match_one_process_over_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    r1 = run([PY, "tests/ddp_step.py", str(one)])
    assert r1.returncode == 0, r1.stderr
    r2 = run([*TORCHRUN, "--nproc_per_node=2", "--standalone", "tests/ddp_step.py", str(two)])
    assert r2.returncode == 0, r2.stderr
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    for name, g in a["grads"].items():
        torch.testing.assert_close(b["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    for name, w in a["weights"].items():
        torch.testing.assert_close(b["weights"][name], w, atol=1e-6, rtol=1e-5, msg=name)


def test_two_nodes_on_loopback_complete_an_epoch(toy_root, tmp_path):
    cmd = train_cmd(toy_root, tmp_path, "--batch-size", "2")[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(3):  # the two nodes need a port known in advance: another process may take it first
        node = [*TORCHRUN, "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{free_port()}", f"--rdzv-id=toy{attempt}"]
        procs = [subprocess.Popen([*node, *cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        if not any("address already in use" in out.lower() for out in outs):
            break
    assert [p.returncode for p in procs] == [0, 0], outs
    assert ckpt(tmp_path)["epoch"] == 1


def test_resume_is_exact(toy_root, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(train_cmd(toy_root, straight, epochs=2)).returncode == 0
    assert run(train_cmd(toy_root, resumed, epochs=1)).returncode == 0
    second = run(train_cmd(toy_root, resumed, epochs=2))
    assert second.returncode == 0 and "Resuming" in second.stdout
    other_batch = run(train_cmd(toy_root, resumed, "--batch-size", "2", epochs=3))  # would count steps wrongly
    assert other_batch.returncode == 1 and "trained 4 images a step" in other_batch.stderr, other_batch.stderr
    done = run(train_cmd(toy_root, resumed, epochs=2))  # the same command once more: nothing left to do
    assert done.returncode == 0 and "is complete: 2 of 2 epochs done" in done.stdout, done.stdout
    assert "Resuming" not in done.stdout
    a, b = ckpt(straight), ckpt(resumed)
    assert a["epoch"] == b["epoch"] == 2 and a["iteration"] == b["iteration"]
    for x, y in zip(a["history"], b["history"]):
        assert (x["loss"], x["loc"], x["cls"]) == (y["loss"], y["loc"], y["cls"])
    for name, w in a["model"].items():
        assert torch.equal(w, b["model"][name]), name
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_checkpoint_holds_everything_to_rebuild_and_resume(toy_root, tmp_path):
    result = run(train_cmd(toy_root, tmp_path, eval_every=1))
    assert result.returncode == 0, result.stderr
    c = ckpt(tmp_path)
    for key in ["model", "optimizer", "lr_scheduler", "scaler", "epoch", "iteration", "rng", "model_name",
                "num_classes", "category_ids", "category_names", "args"]:
        assert key in c
    assert c["model_name"] == "ssdlite" and c["num_classes"] == 5 and c["category_ids"] == [2, 5, 9, 14]
    assert set(c["rng"][0]) >= {"torch", "numpy", "python", "cuda"}
    assert (tmp_path / "ssdlite_best.pth").exists()
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in result.stdout
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    val = json.loads(open(coco_paths(toy_root, "val")[0]).read())
    with_gt = {c["name"] for c in val["categories"] if any(a["category_id"] == c["id"] for a in val["annotations"])}
    assert {t.split("/")[1] for t in events.Tags()["scalars"] if t.startswith("coco_AP_per_category/")} == with_gt
    assert {t.split("/")[1] for t in events.Tags()["tensors"] if t.startswith("pr_IoU0.5/")} == with_gt


def test_sigkill_mid_epoch_leaves_a_loadable_checkpoint_and_the_command_continues(toy_root, tmp_path):
    cmd = train_cmd(toy_root, tmp_path, epochs=3)  # 3 iterations an epoch
    assert run(train_cmd(toy_root, tmp_path, epochs=1)).returncode == 0
    log = tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        wait_for(log, "epoch 2: loss")  # epoch 2 is summarised, then saved
        wait_for(log, "epoch 3/3:  33%")  # and epoch 3 is under way: kill it mid-epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = ckpt(tmp_path)["epoch"]
    assert done in (2, 3)  # 3 only where the machine finished epoch 3 before the kill landed
    again = run(cmd)
    assert again.returncode == 0, again.stderr
    assert ("Resuming" if done == 2 else "is complete") in again.stdout and ckpt(tmp_path)["epoch"] == 3


def test_torch_distributed_launch_form(toy_root, tmp_path):
    result = run([PY, "-m", "torch.distributed.launch", "--nproc_per_node=1", "--standalone",
                  *train_cmd(toy_root, tmp_path)[1:]])
    assert result.returncode == 0, result.stderr
    assert ckpt(tmp_path)["epoch"] == 1


@pytest.mark.parametrize("case", ["missing-data", "other-model", "other-classes", "unreadable"])
def test_clear_errors(toy_root, tmp_path, case, monkeypatch, capfd):
    save = tmp_path / "save"
    save.mkdir()
    if case == "other-model":
        torch.save({"model": {}, "optimizer": {}, "model_name": "ssd", "category_ids": [2, 5, 9, 14],
                    "num_classes": 5}, save / "ssdlite.pth")
    elif case == "other-classes":
        torch.save({"model": {}, "optimizer": {}, "model_name": "ssdlite", "category_ids": [1, 2],
                    "num_classes": 3}, save / "ssdlite.pth")
    elif case == "unreadable":
        (save / "ssdlite.pth").write_bytes(b"garbage")
    before = (save / "ssdlite.pth").read_bytes() if case != "missing-data" else None
    data = str(tmp_path / "nowhere") if case == "missing-data" else toy_root
    result = run_here(train_cmd(data, save), monkeypatch, capfd)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error:"), result.stderr
    assert "Traceback" not in result.stderr
    if before is not None:
        assert (save / "ssdlite.pth").read_bytes() == before  # never overwritten


def test_non_finite_loss_stops_with_the_iteration_and_saves_nothing(toy_root, tmp_path):
    result = run(train_cmd(toy_root, tmp_path, "--lr", "1e12", "--warmup", "0", epochs=2))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: non-finite loss") and "at iteration" in last
    assert "no checkpoint was saved yet" in last  # none is claimed
    assert not (tmp_path / "ssdlite.pth").exists()


def test_a_failure_names_the_checkpoint_kept_only_when_there_is_one(tmp_path):
    from train import what_is_saved
    path = tmp_path / "ssdlite.pth"
    assert "no checkpoint was saved yet" in what_is_saved(str(path))
    torch.save({"epoch": 3, "model": {}}, path)
    assert f"{path} (after epoch 3) is kept" in what_is_saved(str(path))


def test_the_map_reported_in_ddp_is_the_map_of_the_saved_checkpoint(toy_root, ddp_run, tmp_path):
    """Each rank's BatchNorm statistics end the epoch on its own last batch; the evaluation must
    use rank 0's (those saved), so test_dataset.py on the checkpoint finds the same AP, exactly.
    An untrained 5-class head scores ~0.2 everywhere: many candidates, an AP that moves with any weight."""
    reported = ckpt(ddp_run)["history"][-1]
    detections = tmp_path / "detections.json"
    again = run([*TORCHRUN, "--nproc_per_node=2", "--standalone", "test_dataset.py",
                 "--pretrained-model", str(ddp_run / "ssdlite.pth"), "--data-path", toy_root, "--batch-size", "2",
                 "--num-workers", "0", "--json", str(detections)])
    assert again.returncode == 0, again.stderr
    ann, images = coco_paths(toy_root, "val")
    dataset = CocoDetection(images, ann)
    stats = coco_evaluate(dataset.coco, json.loads(detections.read_text()), verbose=False).stats
    assert 0 < stats["AP50"] and stats == {k: reported[k] for k in stats}
