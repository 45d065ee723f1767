"""Categories are matched by name, not by id: a dataset that numbers the same categories otherwise
gives the same answer; one whose names are other than the model's is refused; a checkpoint without
names says what reading it assumes."""
import json
import shutil

import pytest
import torch
from test_bad_input import run_script

import train
from src.data.categories import DatasetCategories, match_by_name, name_key
from src.data.dataset import coco_paths
from src.models.ssd import build_model
from src.utils.errors import DatasetError

MODEL = ([2, 5, 9, 14], ["circle", "square", "triangle", "cross"])


def cats(ids, names, **kwargs):
    return DatasetCategories(ids, names, "x.json", **kwargs)


def test_names_are_compared_without_case_spaces_or_separators():
    assert name_key("Traffic_light") == name_key("traffic light") == name_key(" TRAFFIC-Light ")
    assert name_key("diningtable") == name_key("dining table")
    assert name_key("cat") != name_key("cats")


def test_the_same_names_numbered_otherwise_are_matched_and_said():
    ids, notes = match_by_name(MODEL, cats([1, 2, 3, 4], ["Cross", "triangle", "SQUARE", "circle"]))
    assert ids == [4, 3, 2, 1]
    assert len(notes) == 1 and "matched by name" in notes[0] and "'circle' is 4 there, 2 in the model" in notes[0]
    assert match_by_name(MODEL, cats(*MODEL)) == ([2, 5, 9, 14], [])  # the same: nothing to say


def test_model_categories_the_dataset_lacks_are_left_out_and_said():
    ids, notes = match_by_name(MODEL, cats([7], ["square"]))
    assert ids == [None, 7, None, None]
    assert len(notes) == 2 and "3 of the model's 4 categories are not in x.json" in notes[0]


def test_a_dataset_category_the_model_does_not_know_is_refused_unless_it_has_nothing_to_score():
    data = ([2, 5, 9, 14], ["circle", "square", "triangle", "star"])  # ids overlap, one name differs
    with pytest.raises(DatasetError, match="x.json has categories the model was not trained on: 'star'"):
        match_by_name(MODEL, cats(*data))
    ids, _ = match_by_name(MODEL, cats(*data, scored={2, 5}))  # 'star' has no ground truth: not scored
    assert ids == [2, 5, 9, None]
    with pytest.raises(DatasetError, match="none of the model's categories"):
        match_by_name(MODEL, cats([1], ["dog"], scored=set()))


def test_categories_the_file_leaves_unnamed_are_matched_by_id_with_a_warning():
    ids, notes = match_by_name(MODEL, cats([2, 5, 9], ["category 2", "square", "category 9"], unnamed={2, 9}))
    assert ids == [2, 5, 9, None]
    assert "names 2 of its categories by id alone" in notes[0] and "'circle', 'triangle'" in notes[0]
    with pytest.raises(DatasetError, match="not trained on: 'category 3'"):  # an id the model does not have
        match_by_name(MODEL, cats([3, 5], ["category 3", "square"], unnamed={3}))


def test_names_alike_only_when_normalised_are_compared_as_written():
    ids, _ = match_by_name((["a", "b"], ["Car", "car"]), cats([1, 2], ["car", "Car"]))
    assert ids == [2, 1]


@pytest.fixture()
def renumbered(edited_toy):
    """The toy set whose val split numbers its categories otherwise: the same names and ids, the ids
    swapped in pairs (what id matching would silently get wrong)."""
    new = {2: 5, 5: 2, 9: 14, 14: 9}

    def swap(data):
        for c in data["categories"]:
            c["id"] = new[c["id"]]
        for a in data["annotations"]:
            a["category_id"] = new[a["category_id"]]
    return edited_toy(swap)


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "lite.pth"
    torch.save({"model": build_model("ssdlite", 5).state_dict(), "category_ids": MODEL[0],
                "category_names": MODEL[1]}, path)
    return str(path)


def evaluate_toy(root, checkpoint, tmp_path, monkeypatch, capsys, tag):
    out = tmp_path / f"{tag}.json"
    code = run_script("test_dataset.py", ["--pretrained-model", checkpoint, "--data-path", str(root),
                                          "--num-workers", "0", "--json", str(out), "--cls-threshold", "0.01"],
                      monkeypatch)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text()), captured


def test_a_renumbered_dataset_gives_the_same_evaluation(toy_root, renumbered, checkpoint, tmp_path, monkeypatch,
                                                        capsys):
    same, first = evaluate_toy(toy_root, checkpoint, tmp_path, monkeypatch, capsys, "same")
    moved, second = evaluate_toy(renumbered, checkpoint, tmp_path, monkeypatch, capsys, "moved")
    assert "matched by name" in second.err and "matched by name" not in first.err
    names = {2: "circle", 5: "square", 9: "triangle", 14: "cross"}
    swapped = {5: "circle", 2: "square", 14: "triangle", 9: "cross"}
    assert same  # an untrained model at a low threshold finds plenty
    assert [{**r, "category_id": names[r["category_id"]]} for r in same] == \
        [{**r, "category_id": swapped[r["category_id"]]} for r in moved]  # in each dataset's own ids
    ap = [line for line in first.out.splitlines() if "Average Precision" in line]
    assert ap and ap == [line for line in second.out.splitlines() if "Average Precision" in line]


@pytest.fixture()
def renamed(edited_toy):
    """The toy set whose val split calls one of its scored categories 'star' (same ids)."""
    def rename(data):
        next(c for c in data["categories"] if c["id"] == data["annotations"][0]["category_id"])["name"] = "star"
    return edited_toy(rename)


def test_a_dataset_of_other_names_on_the_same_ids_is_refused(renamed, checkpoint, monkeypatch, capsys):
    code = run_script("test_dataset.py", ["--pretrained-model", checkpoint, "--data-path", str(renamed),
                                          "--num-workers", "0"], monkeypatch)
    err = capsys.readouterr().err
    assert code == 1 and "categories the model was not trained on: 'star'" in err, err


def test_training_evaluates_a_renumbered_val_split_by_name(renumbered):
    args = train.get_args_parser().parse_args(["--data-path", str(renumbered), "--batch-size", "2"])
    train_set, val_set = train.build_datasets(args, world_size=1)
    assert train_set.category_ids == [2, 5, 9, 14] and val_set.label_ids == [5, 2, 14, 9]


def test_training_refuses_a_val_split_of_other_names(renamed):
    args = train.get_args_parser().parse_args(["--data-path", str(renamed), "--batch-size", "2"])
    with pytest.raises(DatasetError, match="not trained on: 'star'"):
        train.build_datasets(args, world_size=1)


def test_image_annotations_of_other_names_are_refused(toy_root, checkpoint, tmp_path, monkeypatch, capsys):
    photo = tmp_path / "photo.jpg"
    val = coco_paths(toy_root, "val")
    shutil.copy(f"{val[1]}/000001.jpg", photo)
    data = json.loads(open(val[0]).read())
    data["categories"][2]["name"] = "star"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    code = run_script("test_image.py", ["--pretrained-model", checkpoint, "--input", str(photo), "--output",
                                        str(tmp_path / "out.jpg"), "--annotations", str(other)], monkeypatch)
    err = capsys.readouterr().err
    assert code == 1 and "not trained on: 'star'" in err, err
    assert not (tmp_path / "out.jpg").exists()


def test_a_name_given_to_two_categories_is_refused_unless_both_sides_are_the_same():
    twice = ([1, 2, 3], ["circle", "circle", "cross"])
    assert match_by_name(twice, cats(*twice)) == ([1, 2, 3], [])  # train and val of one file: no matching
    with pytest.raises(DatasetError, match="x.json names two categories 'circle': .* rename one"):
        match_by_name(MODEL, cats(*twice))
    with pytest.raises(DatasetError, match="the model names two categories 'circle'"):
        match_by_name(twice, cats([1, 2], ["circle", "cross"]))
