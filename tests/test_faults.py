"""Faults and bad input in long runs: every case checks the exit status, a one-line message
(no traceback), and that nothing written before was lost."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess

import pytest
import torch
from test_train import PY, ROOT, TORCHRUN, ckpt, run, run_here, train_cmd, wait_for

from src.checkpoints.schema import read_checkpoint, save_atomic
from src.models.ssd import build_model
from src.utils.errors import CheckpointError

pytestmark = pytest.mark.slow  # subprocesses: `make test-fast` leaves this file out


def one_error_line(result, prog="train.py"):
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture()
def toy_copy(toy_root, tmp_path):
    dst = tmp_path / "toy"
    shutil.copytree(toy_root, dst)
    return dst


@pytest.fixture(scope="module")
def straight_run(toy_root, tmp_path_factory):
    """``straight_run(workers)``: the save folder of two uninterrupted epochs with that many loader
    workers (run once per setting, shared by the signal tests)."""
    done = {}

    def get(workers):
        if workers not in done:
            folder = tmp_path_factory.mktemp(f"straight{workers}")
            cmd = train_cmd(toy_root, folder, "--batch-size", "2", "--num-workers", workers, epochs=2)
            assert run(cmd).returncode == 0
            done[workers] = folder
        return done[workers]
    return get


# each signal, each loader setting and each way of sending it (to the process or its group) once
@pytest.mark.parametrize("sig, workers, group", [(signal.SIGTERM, "0", False), (signal.SIGINT, "2", True),
                                                 (signal.SIGTERM, "2", True)])
def test_signal_mid_epoch_saves_and_resume_is_exact(toy_root, tmp_path, straight_run, sig, workers, group):
    """Exact with loader workers too: each sample's augmentation is seeded from (seed, epoch, index).
    ``group``: the signal goes to the loader workers as well, as Ctrl-C in a terminal, `timeout`
    and a cluster's scancel send it."""
    straight, stopped = straight_run(workers), tmp_path / "stopped"
    log = tmp_path / "stderr.txt"
    cmd = train_cmd(toy_root, stopped, "--batch-size", "2", "--num-workers", workers, epochs=2)
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=group)
        wait_for(log, "epoch 1/2:  33%")  # two of six iterations done
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, open(log).read()
    c = ckpt(stopped)
    # the signal lands after the event it followed, at a moment the machine's speed decides: mid-epoch
    # (the usual case here), or, on a machine fast enough to finish the epoch first, at its end
    if c["progress"]:
        assert "Stopped at iteration" in out and "Run the same command to continue" in out
        assert c["epoch"] == 0 and 2 <= c["progress"][0]["batches"] < 6
        resumed = "iterations into epoch 1"
    else:
        assert "Stopped after epoch 1; run the same command to continue" in out and c["epoch"] == 1
        resumed = "1 epochs done"
    again = run(cmd)
    assert again.returncode == 0 and resumed in again.stdout, again.stderr
    a, b = ckpt(straight), ckpt(stopped)
    assert a["iteration"] == b["iteration"] == 12
    for name, w in a["model"].items():
        assert torch.equal(w, b["model"][name]), name
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-6)


def test_sigkill_at_many_moments_leaves_a_loadable_checkpoint(toy_root, tmp_path):
    """Each round starts the same command (it resumes) and kills it at a moment named by an
    event in its output, never after a fixed time: a busy machine only makes the rounds longer."""
    cmd = train_cmd(toy_root, tmp_path, epochs=1000)  # 3 iterations an epoch: a checkpoint at each epoch's end
    path = tmp_path / "ssdlite.pth"
    moments = [
        ["epoch 1/1000:  33%"],  # mid-epoch, before any checkpoint exists
        [": loss "],  # the epoch summary is printed just before the checkpoint is written: kill while saving
        [": loss ", "/1000:  67%"],  # after a save, two thirds into the next epoch
        [": loss "],  # while saving again
        ["Resuming", "/1000:  33%"],  # early in a resumed epoch
    ]
    for events in moments:
        log = tmp_path / "log.txt"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            offset = 0
            for text in events:
                offset = wait_for(log, text, after=offset)
            proc.kill()
            proc.wait()
        if path.exists():
            assert "model" in read_checkpoint(str(path))
    assert ckpt(tmp_path)["epoch"] >= 1  # the third round waited for a saved epoch


def test_bad_images_are_skipped_counted_and_named(toy_copy, tmp_path):
    images = toy_copy / "train2017"
    names = sorted(os.listdir(images))
    (images / names[0]).write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (images / names[2]).write_text("not an image at all")
    ann = toy_copy / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    data["images"].append({"id": 99, "file_name": "gone.jpg", "height": 240, "width": 320})
    ann.write_text(json.dumps(data))
    result = run(train_cmd(str(toy_copy), tmp_path / "save", "--max-bad-images", "0.3"))
    assert result.returncode == 0, result.stderr
    for name in [names[0], names[2], "gone.jpg"]:
        assert name in result.stderr
    assert "1 of the 13 images" in result.stderr and "missing" in result.stderr  # left out at start
    assert "truncated" in result.stderr  # named for what it is
    assert "2 bad images skipped" in result.stdout
    assert ckpt(tmp_path / "save")["history"][0]["bad_images"] == 2


def test_more_unreadable_images_than_the_share_stop_the_run(toy_copy, tmp_path):
    images = toy_copy / "train2017"
    for name in sorted(os.listdir(images))[:4]:  # 4 of 12: over a share of 0.2
        (images / name).write_bytes((images / name).read_bytes()[:3000])
    result = run(train_cmd(str(toy_copy), tmp_path / "save", "--max-bad-images", "0.2"))
    assert result.returncode == 1
    assert re.search(r"4 of the 12 images read this epoch could not be decoded", one_error_line(result))
    assert not (tmp_path / "save" / "ssdlite.pth").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "has no split 'train' \\(its splits are val\\): choose one with --train-split"),
    ("not-json", "is not valid JSON"),
    ("box-of-3", "expected \\[x, y, width, height\\], four numbers"),
    ("box-of-strings", "expected \\[x, y, width, height\\], four numbers"),
])
def test_bad_annotations_are_refused_at_start(toy_copy, tmp_path, case, message, monkeypatch, capfd):
    ann = toy_copy / "annotations" / "instances_train2017.json"
    if case == "missing":
        ann.unlink()
    elif case == "not-json":
        ann.write_text("{ this is not json")
    else:
        data = json.loads(ann.read_text())
        data["annotations"][0]["bbox"] = [1, 2, 3] if case == "box-of-3" else ["1", "2", "3", "4"]
        ann.write_text(json.dumps(data))
    result = run_here(train_cmd(str(toy_copy), tmp_path / "save"), monkeypatch, capfd)
    assert result.returncode == 1
    assert re.search(message, one_error_line(result)), result.stderr
    assert not (tmp_path / "save" / "ssdlite.pth").exists()


def _write_bad_checkpoint(path, case, kit_state_dict=None):
    good = {"model": build_model("ssdlite", 5).state_dict(), "optimizer": {}, "model_name": "ssdlite",
            "category_ids": [2, 5, 9, 14], "num_classes": 5}
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[:4096])
    elif case == "not-a-checkpoint":
        path.write_text("definitely not a checkpoint")
    elif case == "other-architecture":
        torch.save({**good, "model_name": "ssd"}, path)
    elif case == "other-class-count":
        torch.save({**good, "category_ids": [1, 2, 3], "num_classes": 4}, path)


@pytest.mark.parametrize("case", ["empty", "truncated", "not-a-checkpoint", "other-architecture",
                                  "other-class-count"])
def test_bad_checkpoints_are_refused_and_kept(toy_root, tmp_path, case, monkeypatch, capfd):
    save = tmp_path / "save"
    save.mkdir()
    path = save / "ssdlite.pth"
    _write_bad_checkpoint(path, case)
    before = path.read_bytes()
    result = run_here(train_cmd(toy_root, save), monkeypatch, capfd)
    assert result.returncode == 1
    assert str(path) in one_error_line(result)
    assert path.read_bytes() == before


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("script", ["train.py", "test_image.py"])
def test_checkpoint_with_pickled_code_is_refused_in_every_script(toy_root, tmp_path, script):
    marker = tmp_path / "code_ran"
    save = tmp_path / "save"
    save.mkdir()
    torch.save({"model": {}, "optimizer": {}, "model_name": "ssdlite", "evil": RunsCode(marker)},
               save / "ssdlite.pth")
    if script == "train.py":
        result = run(train_cmd(toy_root, save))
    else:
        image = os.path.join(toy_root, "val2017", sorted(os.listdir(os.path.join(toy_root, "val2017")))[0])
        result = run([PY, "test_image.py", "--pretrained-model", str(save / "ssdlite.pth"), "--input", image,
                      "--output", str(tmp_path / "o.jpg")])
    assert result.returncode == 1
    assert "pickled code" in one_error_line(result, script)
    assert not marker.exists()


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ssdlite.pth"
    save_atomic({"model": {"w": torch.ones(3)}}, str(path))
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        save_atomic({"model": {"w": torch.zeros(3)}}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ssdlite.pth"]  # no temporary left behind


def test_a_dead_rank_ends_the_run_in_bounded_time(toy_root, tmp_path):
    log = tmp_path / "log.txt"
    cmd = [*TORCHRUN, "--nproc_per_node=2", "--standalone",
           *train_cmd(toy_root, tmp_path, "--batch-size", "2", "--dist-timeout", "30", epochs=1000)[1:]]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(log, "epoch 2/1000")
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2
        os.kill(int(workers[-1]), signal.SIGKILL)
        proc.wait(timeout=600)  # a hang would raise here; --dist-timeout bounds it, whatever the machine's speed
    assert proc.returncode != 0
    assert "model" in read_checkpoint(str(tmp_path / "ssdlite.pth"))
