import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, ROOT)

# two threads as on CI's 2 cores; one where the tests run in forks of a process that used torch
# already (mutation testing), since OpenMP's thread pool does not survive a fork
torch.set_num_threads(int(os.environ.get("SSD_TEST_THREADS", "2")))

# CI draws the same Hypothesis examples every run (a failure there is reproducible, never a new
# draw); locally each run explores new ones. No deadline: a busy machine is no failure.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def kit():
    """The conformance kit's expected outputs, per model name."""
    return torch.load(os.path.join(FIXTURES, "seed_conformance.pt"), weights_only=True)


@pytest.fixture(scope="session")
def kit_shapes():
    with open(os.path.join(FIXTURES, "seed_state_dict_shapes.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def kit_dboxes():
    return {name: torch.load(os.path.join(FIXTURES, f"dboxes_{name}.pt"), weights_only=True)
            for name in ("ssd", "ssdlite")}


def recipe_state_dict(shapes: dict) -> dict:
    """The kit's weight recipe: a reference-model state dict made from one seeded generator."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.ones(shape)
        elif key.endswith("running_mean"):
            state[key] = torch.zeros(shape)
        elif len(shape) >= 2:
            state[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith(".weight"):
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


@pytest.fixture(scope="session")
def kit_state_dict(kit_shapes):
    """name -> the reference state dict under the kit's recipe (as a published file holds it)."""
    cache = {}

    def make(name):
        if name not in cache:
            cache[name] = recipe_state_dict(kit_shapes[name])
        return {k: v.clone() for k, v in cache[name].items()}
    return make


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A tiny toy COCO set in the original layout (train 12, val 6 images of 240x320)."""
    from src.data.toy_dataset import write_split
    root = str(tmp_path_factory.mktemp("toy"))
    write_split(root, "train", 12, seed=0, size=(240, 320))
    write_split(root, "val", 6, seed=1, size=(240, 320))
    return root


@pytest.fixture(scope="session")
def ddp_run(toy_root, tmp_path_factory):
    """The save folder of one torchrun run of two gloo processes on the toy set, one epoch,
    evaluated (``DDP_ARGS``): shared by the tests that compare against it (half a minute each)."""
    from test_train import DDP_ARGS, TORCHRUN, run, train_cmd
    save = tmp_path_factory.mktemp("ddp")
    result = run([*TORCHRUN, "--nproc_per_node=2", "--standalone",
                  *train_cmd(toy_root, save, *DDP_ARGS, eval_every=1)[1:]])
    assert result.returncode == 0, result.stderr
    return save


@pytest.fixture(scope="session")
def ours(toy_root, tmp_path_factory):
    """A checkpoint written by train.py (one short epoch), with its TensorBoard folder beside it in tb/."""
    save = tmp_path_factory.mktemp("trained")
    result = subprocess.run([sys.executable, "train.py", "--data-path", toy_root, "--save-folder", str(save),
                             "--log-path", str(save / "tb"), "--model", "ssdlite", "--batch-size", "4", "--epochs",
                             "1", "--num-workers", "0", "--no-pretrained-backbone", "--eval-every", "0"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"},
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return str(save / "ssdlite.pth")


@pytest.fixture()
def edited_toy(toy_root, tmp_path):
    """``edited_toy(change)``: a copy of the toy set whose val annotation dict ``change`` edits in
    place; returns the copy's root."""
    def make(change):
        root = tmp_path / "toy"
        shutil.copytree(toy_root, root)
        ann = root / "annotations" / "instances_val2017.json"
        data = json.loads(ann.read_text())
        change(data)
        ann.write_text(json.dumps(data))
        return root
    return make
