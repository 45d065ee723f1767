import os

import pytest
import torch

from src.checkpoints.schema import (
    infer_model_name,
    infer_num_classes,
    load_model_weights,
    model_state_dict,
    read_checkpoint,
    save_atomic,
)
from src.models.ssd import build_model
from src.utils.errors import CheckpointError


class RunsCode:
    """Unpickling this would run ``touch``: a checkpoint carrying it must be refused unread."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="pickled code"):
        read_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"), (b"", "is empty"), (b"not a checkpoint at all", "not a readable checkpoint"),
])
def test_unreadable_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "x.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        read_checkpoint(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "full.pth"
    save_atomic({"model": build_model("ssdlite", 3).state_dict()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(str(path))


def test_architecture_and_classes_are_inferred_and_mismatch_is_one_line(tmp_path):
    lite = build_model("ssdlite", 4).state_dict()
    big = build_model("ssd", 7).state_dict()
    assert infer_model_name(lite) == "ssdlite" and infer_model_name(big) == "ssd"
    assert infer_num_classes(lite, "ssdlite") == 4 and infer_num_classes(big, "ssd") == 7
    with pytest.raises(CheckpointError, match="does not fit ssdlite with 5 classes"):
        load_model_weights(build_model("ssdlite", 5), lite)
    with pytest.raises(CheckpointError, match="missing"):
        load_model_weights(build_model("ssdlite", 4), big)


def test_save_atomic_leaves_no_temporary_and_round_trips(tmp_path):
    path = tmp_path / "sub" / "model.pth"
    state = build_model("ssdlite", 3).state_dict()
    save_atomic({"model": state}, str(path))
    save_atomic({"model": state}, str(path))  # replacing an existing file
    assert os.listdir(path.parent) == ["model.pth"]
    loaded = model_state_dict(read_checkpoint(str(path)))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
