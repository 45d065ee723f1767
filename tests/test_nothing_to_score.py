"""A set without a single ground-truth box has nothing to score: no twelve -1 printed as if they
were COCO's numbers, no VOC mAP of 0."""
import json

import pytest
import torch
from test_bad_input import run_script

import train
from src.data.dataset import coco_paths
from src.models.ssd import build_model


@pytest.fixture()
def unannotated(edited_toy):
    """The toy set with every box of its val split taken away (images and categories kept)."""
    return edited_toy(lambda data: data.update(annotations=[]))


@pytest.fixture()
def checkpoint(toy_root, tmp_path):
    ann = json.loads(open(coco_paths(toy_root, "val")[0]).read())
    cats = sorted(ann["categories"], key=lambda c: c["id"])
    path = tmp_path / "lite.pth"
    torch.save({"model": build_model("ssdlite", len(cats) + 1).state_dict(), "category_ids": [c["id"] for c in cats],
                "category_names": [c["name"] for c in cats]}, path)
    return str(path)


def test_evaluating_a_set_without_ground_truth_is_refused(unannotated, checkpoint, monkeypatch, capsys):
    for extra in ([], ["--metric", "voc07"], ["--report", str(unannotated / "report"), "--json", "x.json"]):
        code = run_script("test_dataset.py", ["--pretrained-model", checkpoint, "--data-path", str(unannotated),
                                              "--num-workers", "0", *extra], monkeypatch)
        err = capsys.readouterr().err
        assert code == 1 and "nothing to score" in err and "has no ground-truth box" in err, err
    assert not (unannotated / "report").exists()  # no report of a score, not even its folder


def test_detections_alone_are_written_without_a_score(unannotated, checkpoint, monkeypatch, capsys):
    out = unannotated / "detections.json"
    code = run_script("test_dataset.py", ["--pretrained-model", checkpoint, "--data-path", str(unannotated),
                                          "--num-workers", "0", "--json", str(out), "--cls-threshold", "0.0"],
                      monkeypatch)
    printed = capsys.readouterr().out
    assert code == 0 and "nothing to score" in printed and "Average Precision" not in printed
    assert json.loads(out.read_text())  # an untrained model at threshold 0 finds plenty


def test_training_on_a_val_split_without_ground_truth_does_not_evaluate(unannotated, capsys):
    args = train.get_args_parser().parse_args(["--data-path", str(unannotated), "--batch-size", "2"])
    assert args.eval_every == 1
    train.build_datasets(args, world_size=1)
    assert args.eval_every == 0
    assert "has no ground-truth box: nothing to score" in capsys.readouterr().err
