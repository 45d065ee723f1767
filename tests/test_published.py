"""Published weights by name, fine-tuning onto another class count, torch.hub entry points."""
import json
import os
import shutil

import pytest
import torch
from test_train import ROOT, ckpt, run, train_cmd

from src.checkpoints.published import PUBLISHED
from src.checkpoints.schema import resolve
from src.utils.errors import CheckpointError, UserError


@pytest.fixture()
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_nvidia_weights_download_once_into_the_hub_cache(hub_dir, kit_state_dict, tmp_path):
    source = tmp_path / "served.pt"
    torch.save({"model": {"module." + k: v for k, v in kit_state_dict("ssd").items()}}, source)
    path = resolve("nvidia", url=source.as_uri())
    assert path == str(hub_dir / PUBLISHED["nvidia"]["file"]) and os.path.exists(path)
    source.unlink()  # a second call uses the cache
    assert resolve("nvidia", url=source.as_uri()) == path
    assert resolve("some/local/file.pth") == "some/local/file.pth"


def test_a_download_that_is_not_ssd300_is_refused_and_removed(hub_dir, tmp_path):
    source = tmp_path / "wrong.pt"
    from src.models.ssd import build_model
    torch.save({"model": build_model("ssdlite", 81).state_dict()}, source)
    with pytest.raises(CheckpointError, match=r"not NVIDIA SSD300 v1.1 .*\(a 81-class ssd checkpoint\)"):
        resolve("nvidia", url=source.as_uri())
    assert not (hub_dir / PUBLISHED["nvidia"]["file"]).exists()


def test_no_network_names_the_file_to_place(hub_dir, tmp_path):
    with pytest.raises(UserError, match=f"put {PUBLISHED['nvidia']['file']} at .*{hub_dir.name}"):
        resolve("nvidia", url=(tmp_path / "absent.pt").as_uri())


def test_original_weights_without_gdown_print_the_manual_steps(hub_dir, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="drive.google.com.*SSD.pth"):
        resolve("original")


@pytest.mark.slow
def test_finetune_from_an_81_class_checkpoint_onto_three_classes(toy_root, tmp_path, kit_state_dict):
    data = tmp_path / "three"
    shutil.copytree(toy_root, data)
    for split in ["train", "val"]:  # drop the "cross" category: three classes remain
        ann = data / "annotations" / f"instances_{split}2017.json"
        coco = json.loads(ann.read_text())
        coco["categories"] = [c for c in coco["categories"] if c["name"] != "cross"]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != 14]
        ann.write_text(json.dumps(coco))
    published = tmp_path / "SSD.pth"  # the original's form, 81 classes, SSDLite under the kit recipe
    torch.save({"epoch": 1, "model_state_dict": kit_state_dict("ssdlite"), "optimizer": {}, "scheduler": {}},
               published)
    save = tmp_path / "save"
    result = run(train_cmd(str(data), save, "--finetune-from", str(published), eval_every=1))
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("Fine-tuning from"))
    skipped = line.split(": ", 1)[1].split(", ")
    assert skipped == [f"conf.{i}.3.{p}" for i in range(6) for p in ("weight", "bias")]
    c = ckpt(save)
    assert c["num_classes"] == 4 and c["category_names"] == ["circle", "square", "triangle"]
    loaded = c["model"]["loc.0.3.weight"]  # box heads come from the checkpoint (then one epoch of SGD)
    assert torch.allclose(loaded, kit_state_dict("ssdlite")["loc.0.3.weight"], atol=0.05)
    assert os.path.isdir(save / "tb" / "hparams")  # the run's hyper-parameters beside its mAP


def test_torch_hub_local_entry_points(kit_state_dict, tmp_path):
    path = tmp_path / "lite.pth"
    torch.save({"model": kit_state_dict("ssdlite")}, path)
    model, detector = torch.hub.load(ROOT, "ssdlite_mobilenetv2", source="local", pretrained=str(path),
                                     cls_threshold=0.0)
    assert model.spec.name == "ssdlite" and not model.training
    dets = detector([torch.zeros(3, 120, 160, dtype=torch.uint8)])
    assert dets[0].boxes.shape[1] == 4 and dets[0].boxes[:, 0::2].max() <= 160
    assert dets[0].names and dets[0].names[0] in detector.category_names
    model, _ = torch.hub.load(ROOT, "ssd300_resnet50", source="local", pretrained=False, num_classes=3)
    assert model.spec.name == "ssd" and model.num_classes == 3
