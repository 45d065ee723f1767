import os

import pytest
import torch

from src.checkpoints.schema import (
    TrainingCheckpoint,
    infer_model_name,
    infer_num_classes,
    load_model_weights,
    model_state_dict,
    read_checkpoint,
    save_atomic,
)
from src.models.ssd import build_model
from src.training.loop import EpochTotals
from src.training.resume import resume_point
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


def training_checkpoint(**changes) -> TrainingCheckpoint:
    model = build_model("ssdlite", 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    fields = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), lr_scheduler=schedule.state_dict(),
                  scaler=None, epoch=2, iteration=10, model_name="ssdlite", num_classes=3, category_ids=[4, 9],
                  category_names=["cat", "dog"], best_map=0.25, history=[{"epoch": 1, "loss": 3.0}],
                  progress=[{"sums": [1.0, 0.5, 0.5], "batches": 4, "bad_images": 0, "resized": 1,
                             "complete": False, "images_per_s": 7.0}], rng=[{}], args={"lr": 0.1})
    return TrainingCheckpoint(**{**fields, **changes})


CATS = ([4, 9], ["cat", "dog"])


def test_training_checkpoint_round_trips_every_key(tmp_path):
    path = str(tmp_path / "ssdlite.pth")
    saved = training_checkpoint()
    saved.save(path)
    read = TrainingCheckpoint.read(path, "ssdlite", CATS, "data")
    assert sorted(read_checkpoint(path)) == sorted(vars(saved))  # what is on disk is the schema, no more
    assert (read.epoch, read.iteration, read.best_map, read.history, read.args) == (2, 10, 0.25, saved.history,
                                                                                    {"lr": 0.1})
    for k, v in saved.model.items():
        assert torch.equal(read.model[k], v)
    point = resume_point(read, rank=0, world_size=1)  # the mid-epoch totals come back typed
    assert point.epoch == 2 and point.progress == EpochTotals([1.0, 0.5, 0.5], 4, 0, 1, False, 7.0)


def test_training_checkpoint_is_checked_when_read(tmp_path):
    path = str(tmp_path / "ssdlite.pth")
    training_checkpoint().save(path)
    with pytest.raises(CheckpointError, match="is a ssdlite checkpoint, not ssd"):
        TrainingCheckpoint.read(path, "ssd", CATS, "data")
    with pytest.raises(CheckpointError, match="other categories"):
        TrainingCheckpoint.read(path, "ssdlite", ([4, 10], ["cat", "dog"]), "data")
    with pytest.raises(CheckpointError, match="other categories"):  # same ids, other names
        TrainingCheckpoint.read(path, "ssdlite", ([4, 9], ["dog", "cat"]), "data")
    ckpt = read_checkpoint(path)
    del ckpt["lr_scheduler"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="lacks lr_scheduler"):
        TrainingCheckpoint.read(path, "ssdlite", CATS, "data")
    for key in ("progress", "rng", "history", "best_map", "args"):  # optional: an older file of ours still reads
        ckpt.pop(key)
    ckpt["lr_scheduler"] = training_checkpoint().lr_scheduler
    torch.save(ckpt, path)
    assert TrainingCheckpoint.read(path, "ssdlite", CATS, "data").progress is None


def test_non_finite_weights_are_not_saved_over_a_checkpoint(tmp_path):
    path = tmp_path / "ssdlite.pth"
    path.write_bytes(b"previous")
    bad = training_checkpoint()
    bad.model["conf.0.3.weight"][0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        bad.save(str(path))
    assert path.read_bytes() == b"previous"


def test_a_run_resumes_only_with_the_global_batch_it_was_trained_with(tmp_path):
    path = str(tmp_path / "ssdlite.pth")
    training_checkpoint(global_batch=32).save(path)
    assert TrainingCheckpoint.read(path, "ssdlite", CATS, "data", global_batch=32).global_batch == 32
    with pytest.raises(CheckpointError, match="trained 32 images a step .* this run takes 16"):
        TrainingCheckpoint.read(path, "ssdlite", CATS, "data", global_batch=16)
    training_checkpoint().save(path)  # a file written before the global batch was recorded: not checked
    assert TrainingCheckpoint.read(path, "ssdlite", CATS, "data", global_batch=16).global_batch is None
