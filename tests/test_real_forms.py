"""The forms datasets really come in: labelImg's VOC folders without split lists, VOC class names
that differ from classes.txt in case or spaces (or are missing from it), Roboflow's and
Ultralytics' data.yaml with several folders, .txt lists of images and ``../train/images`` paths;
and a missing split named with the option that chooses one and the splits that exist."""
import json
import os
import shutil

import pytest
from export_formats import to_voc, to_yolo
from test_bad_input import run_script

import train
from src.data.dataset import coco_paths, dataset_from
from src.data.formats import Source, source, splits_of
from src.utils.errors import DatasetError


@pytest.fixture(scope="module")
def voc_root(toy_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    to_voc(toy_root, str(root))
    return root


@pytest.fixture(scope="module")
def yolo_root(toy_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    to_yolo(toy_root, str(root))
    return root


def boxes(dataset):
    """{file name: sorted [(category name, box)]}."""
    names = dict(zip(dataset.category_ids, dataset.category_names))
    return {os.path.basename(dataset.coco.imgs[i]["file_name"]):
            sorted((names[a["category_id"]], tuple(a["bbox"])) for a in dataset.coco.imgToAnns.get(i, []))
            for i in dataset.ids}


@pytest.fixture()
def labelimg(voc_root, tmp_path):
    """A VOC folder as labelImg leaves it: Annotations/ and JPEGImages/, no ImageSets/."""
    root = tmp_path / "labelimg"
    shutil.copytree(voc_root, root)
    shutil.rmtree(root / "ImageSets")
    return root


def test_a_voc_set_without_split_lists_is_one_split_all(voc_root, labelimg):
    assert splits_of(str(labelimg)) == ["all"]
    everything = dataset_from(source(str(labelimg), "all"))
    listed = {**boxes(dataset_from(source(str(voc_root), "trainval"))),
              **boxes(dataset_from(source(str(voc_root), "test")))}
    assert boxes(everything) == listed and len(everything) == 18
    with pytest.raises(DatasetError, match="no ImageSets/Main/ lists .* its one split is 'all' .* --split all"):
        source(str(labelimg), "test")


def test_test_dataset_evaluates_every_xml_of_a_set_without_lists(labelimg, tmp_path, monkeypatch, capsys):
    from test_bad_input import training_checkpoint
    training_checkpoint(tmp_path / "ckpt.pth")
    code = run_script("test_dataset.py", ["--pretrained-model", str(tmp_path / "ckpt.pth"), "--data-path",
                                          str(labelimg), "--num-workers", "0"], monkeypatch)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "evaluating every XML of Annotations/ (split 'all')" in captured.err and "18 images" in captured.out


def test_training_on_a_set_without_lists_names_the_options(labelimg, capsys):
    args = train.get_args_parser().parse_args(["--data-path", str(labelimg), "--batch-size", "2"])
    with pytest.raises(DatasetError, match="choose it with --train-split all"):
        train.build_datasets(args, world_size=1)
    args = train.get_args_parser().parse_args(["--data-path", str(labelimg), "--batch-size", "2",
                                               "--train-split", "all"])
    with pytest.raises(DatasetError, match="choose it with --val-split all"):
        train.build_datasets(args, world_size=1)
    args.val_split = "all"
    train.build_datasets(args, world_size=1)
    assert "validating on the training split 'all'" in capsys.readouterr().err


def test_voc_class_names_are_matched_to_classes_txt_ignoring_case_and_spaces(voc_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    (root / "classes.txt").write_text("square\ncircle\nTriangle\ncross\n")
    for xml in (root / "Annotations").iterdir():
        xml.write_text(xml.read_text().replace("<name>circle</name>", "<name> Circle </name>")
                       .replace("<name>triangle</name>", "<name>TRIANGLE</name>"))
    data = dataset_from(source(str(root), "trainval"))
    assert data.category_names == ["square", "circle", "Triangle", "cross"]  # classes.txt's order and spelling
    ref = boxes(dataset_from(source(str(voc_root), "trainval")))
    spelled = {k: sorted((n.lower(), b) for n, b in v) for k, v in boxes(data).items()}
    assert spelled == ref


def test_a_voc_class_missing_from_classes_txt_is_refused_naming_the_file(voc_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    (root / "classes.txt").write_text("circle\nsquare\ntriangle\n")  # no cross
    with pytest.raises(DatasetError, match=r"Annotations/\S+\.xml has an object of class 'cross', which "
                                           r"\S+classes.txt does not list"):
        source(str(root), "trainval")


def test_voc_names_differing_only_in_case_are_one_category_without_classes_txt(voc_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    xml = next(p for p in sorted((root / "Annotations").iterdir()) if "<name>circle</name>" in p.read_text())
    xml.write_text(xml.read_text().replace("<name>circle</name>", "<name>Circle</name>"))
    data = dataset_from(source(str(root), "trainval"))
    assert len(data.category_names) == 4


def test_roboflow_yaml_with_parent_paths_and_a_valid_folder(yolo_root, tmp_path):
    """Roboflow's export: data.yaml beside train/ and valid/, its paths written as ../train/images."""
    root = tmp_path / "roboflow"
    for split, folder in (("train", "train"), ("val", "valid")):
        for kind in ("images", "labels"):
            shutil.copytree(yolo_root / kind / split, root / folder / kind)
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 4\n"
                                    "names: ['circle', 'square', 'triangle', 'cross']\n")
    for split in ("train", "val"):
        assert boxes(dataset_from(source(str(root), split))) == boxes(dataset_from(source(str(yolo_root), split)))


def test_yolo_splits_as_several_folders_and_as_txt_lists(yolo_root, tmp_path):
    root = tmp_path / "yolo"
    shutil.copytree(yolo_root, root)
    images = sorted((root / "images" / "train").iterdir())
    (root / "images" / "part2").mkdir()
    (root / "labels" / "part2").mkdir()
    for image in images[6:]:  # half the training images moved to a second folder
        shutil.move(image, root / "images" / "part2" / image.name)
        label = root / "labels" / "train" / (image.stem + ".txt")
        if label.exists():
            shutil.move(label, root / "labels" / "part2" / label.name)
    (root / "val.txt").write_text("".join(f"./images/val/{p.name}\n" for p in sorted((root / "images" / "val")
                                                                                       .iterdir())))
    names = "names: ['circle', 'square', 'triangle', 'cross']\n"
    (root / "data.yaml").write_text("path: .\ntrain: [images/train, images/part2]\nval: val.txt\n" + names)
    train_set = dataset_from(source(str(root), "train"))
    assert boxes(train_set) == boxes(dataset_from(source(str(yolo_root), "train"))) and len(train_set) == 12
    assert not any(os.path.isabs(im["file_name"]) for im in train_set.coco.dataset["images"])  # pictures stay apart
    assert boxes(dataset_from(source(str(root), "val"))) == boxes(dataset_from(source(str(yolo_root), "val")))
    (root / "data.yaml").write_text("path: .\ntrain: images/nowhere\nval: val.txt\n" + names)
    with pytest.raises(DatasetError, match="'train' of .*data.yaml: .*images/nowhere is not an image folder or a "
                                           r"\.txt list of images \(not found\)"):
        source(str(root), "train")


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_a_missing_split_names_the_option_and_the_splits_that_exist(fmt, toy_root, voc_root, yolo_root):
    root = {"coco": toy_root, "voc": str(voc_root), "yolo": str(yolo_root)}[fmt]
    have = {"coco": "train, val", "voc": "test, trainval, all", "yolo": "train, val"}[fmt]
    with pytest.raises(DatasetError, match=f"has no split 'valid' \\(its splits are {have}\\): choose one with "
                                           "--val-split"):
        source(root, "valid", fmt, "--val-split")


def test_degenerate_and_out_of_image_boxes_name_their_file(voc_root, toy_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    xml = next(p for p in sorted((root / "Annotations").iterdir()) if "<object>" in p.read_text()
               and p.stem in (root / "ImageSets" / "Main" / "test.txt").read_text())
    text = xml.read_text()
    start = text.index("<xmax>") + len("<xmax>")
    xml.write_text(text[:start] + "0" + text[text.index("</xmax>"):])  # xmax 0: a degenerate box
    warnings = " ".join(dataset_from(source(str(root), "test")).warnings)
    assert "1 boxes dropped as degenerate" in warnings and f"first: annotation 1 of {xml}" in warnings
    data = json.loads(open(coco_paths(toy_root, "val")[0]).read())
    data["annotations"][0]["bbox"][0] = -30.0  # reaches 30 px left of its image
    image = next(im["file_name"] for im in data["images"] if im["id"] == data["annotations"][0]["image_id"])
    warnings = " ".join(dataset_from(Source(coco_paths(toy_root, "val")[1], data, "x.json")).warnings)
    assert f"1 boxes reach outside their image and are clipped to it (first: annotation " \
           f"{data['annotations'][0]['id']} of {image}" in warnings


def test_a_yolo_image_turned_by_exif_is_read_upright_as_its_labels_are(tmp_path):
    """Ultralytics labels the upright view: a phone photo stored upside down (EXIF orientation 3)
    must be read turned, although its stored size is the same."""
    import numpy as np
    from PIL import Image
    upright = np.zeros((60, 80, 3), np.uint8)
    upright[:20, :20] = 255  # a white square at the top left of the upright view
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 3  # stored turned by 180 degrees
    Image.fromarray(upright[::-1, ::-1].copy()).save(root / "images" / "train" / "a.jpg", exif=exif, quality=95)
    (root / "labels" / "train" / "a.txt").write_text("0 0.125 0.1667 0.25 0.3333\n")  # the square, upright
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [square]\n")
    data = dataset_from(source(str(root), "train"))
    image, resized = data.read_image(data.ids[0])
    assert not resized and image.shape == (3, 60, 80)
    assert image[:, :20, :20].float().mean() > 200 and image[:, -20:, -20:].float().mean() < 50
    box = data.coco.imgToAnns[data.ids[0]][0]["bbox"]
    assert box == pytest.approx([0, 0, 20, 20], abs=0.1)  # on the white square of what is read


def test_an_annotation_listed_twice_is_dropped_with_a_warning(toy_root):
    """Two identical ground-truth boxes are two objects to COCOeval: a perfect detector would score
    AP 0.5. The repeat is dropped and said."""
    data = json.loads(open(coco_paths(toy_root, "val")[0]).read())
    count = len(data["annotations"])
    data["annotations"] += [{**a, "id": 1000 + i} for i, a in enumerate(data["annotations"])]
    dataset = dataset_from(Source(coco_paths(toy_root, "val")[1], data, "x.json"))
    assert len(dataset.coco.dataset["annotations"]) == count
    warning = " ".join(dataset.warnings)
    assert f"{count} annotations repeat another of the same image, category and box and are dropped" in warning
    assert "first: annotation 1000 of" in warning


def test_a_voc_image_renamed_without_its_xml_is_found_by_the_xml_name(voc_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    xml = sorted((root / "Annotations").iterdir())[0]
    xml.write_text(xml.read_text().replace(f"<filename>{xml.stem}.jpg</filename>",
                                           "<filename>IMG_0001.JPG</filename>"))  # the camera's old name
    data = dataset_from(source(str(root), "trainval"))
    assert not data.warnings and len(data) == 12
    assert boxes(data) == boxes(dataset_from(source(str(voc_root), "trainval")))


def test_a_bad_image_size_names_the_file(voc_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    xml = sorted((root / "Annotations").iterdir())[0]
    text = xml.read_text()
    xml.write_text(text[:text.index("<width>") + 7] + "0" + text[text.index("</width>"):])
    with pytest.raises(DatasetError, match=f"not a positive number \\(first: image id 1, {xml}\\)"):
        dataset_from(source(str(root), "trainval"))


def test_an_annotation_file_given_as_the_dataset_names_the_options(toy_root):
    with pytest.raises(DatasetError, match="is an annotation file, not a dataset folder: .* --annotations FILE "
                                           "--images FOLDER"):
        source(coco_paths(toy_root, "val")[0], "val")


def test_a_run_shorter_than_its_learning_rate_drops_says_so(toy_root):
    args = train.get_args_parser().parse_args(["--data-path", toy_root, "--epochs", "50"])
    assert "drops after epoch(s) 54 (--multistep) lie beyond this 50-epoch run: not all of them happen" in \
        train.schedule_warning(args)
    assert "it never drops" in train.schedule_warning(train.get_args_parser().parse_args(["--epochs", "1"]))
    assert train.schedule_warning(train.get_args_parser().parse_args(["--epochs", "2", "--multistep", "1"])) is None
