"""The recipe variants of train.py that the ablation study compares: each flag reaches the code
path it names, and the study's rows are nothing but train.py flags."""
import sys

import numpy as np
import pytest
import torch

import train
from src.data import augment
from src.data.crop import IOU_CROP_OPTIONS
from src.data.dataset import CocoDetection, coco_paths
from src.data.transforms import SSDAugmentation
from src.models.ssd import build_model
from src.training.optim import param_groups


def parse(*flags):
    return train.get_args_parser().parse_args(["--data-path", "x", *flags])


def test_every_ablation_row_is_a_set_of_train_flags():
    sys.path.insert(0, "tools")
    import ablation
    for row, flags in ablation.ROWS.items():
        args = parse(*ablation.BUDGET, *flags)
        assert args.model == ("ssdlite320-mnv3" if row == "ssdlite320-mnv3" else "ssdlite"), row
    six = parse(*ablation.ROWS["six-crops"])
    assert six.crop_ious == [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    old = parse(*ablation.ROWS["old-defaults"])
    assert (old.zoom_out, old.crop, old.nesterov, old.empty_negatives) == (4, "paper", False, 0)
    assert old.channel_shuffle == 0.5 and old.crop_ious == six.crop_ious


def test_defaults_are_the_recipe():
    args = parse()
    assert args.crop_ious == list(IOU_CROP_OPTIONS) and args.channel_shuffle == 0
    assert not (args.decay_all or args.skip_empty_images or args.detach_first_map)


def test_train_builds_its_data_with_the_variant_flags(toy_root):
    args = train.get_args_parser().parse_args(["--data-path", toy_root, "--batch-size", "2", "--crop-ious", "1",
                                               "--channel-shuffle", "0.25", "--skip-empty-images"])
    train_set, _ = train.build_datasets(args, world_size=1)
    assert train_set.transforms.min_ious == (1.0,) and train_set.transforms.channel_shuffle == 0.25
    assert all(train_set.coco.imgToAnns.get(i) for i in train_set.ids)
    recipe, _ = train.build_datasets(parse_on(toy_root), world_size=1)
    assert recipe.transforms.min_ious == IOU_CROP_OPTIONS and len(recipe) > len(train_set)


def parse_on(root):
    return train.get_args_parser().parse_args(["--data-path", root, "--batch-size", "2"])


def test_crop_ious_reach_the_augmentation():
    only_whole = SSDAugmentation(min_ious=[1.0])
    assert only_whole.min_ious == (1.0,)
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0]])
    torch.manual_seed(0)
    crops = {augment.sample_geometry(boxes, 100, 100, 1.0, only_whole.min_ious).crop for _ in range(20)}
    assert crops == {(0, 0, 100, 100)}


def test_decay_all_puts_weight_decay_on_every_parameter():
    model = build_model("ssdlite", 3)
    n = sum(1 for p in model.parameters())
    conv_only = param_groups(model, 5e-4)
    assert [g["weight_decay"] for g in conv_only] == [5e-4, 0.0]
    assert 0 < len(conv_only[0]["params"]) < n and all(p.ndim > 1 for p in conv_only[0]["params"])
    everything = param_groups(model, 5e-4, decay_all=True)
    assert len(everything[0]["params"]) == n and not everything[1]["params"]


def test_skip_empty_images_leaves_out_the_images_without_annotations(toy_root):
    ann, images = coco_paths(toy_root, "train")
    dataset = CocoDetection(images, ann)
    empty = [i for i in dataset.ids if not dataset.coco.imgToAnns.get(i)]
    assert empty, "the toy set holds background-only images"
    before = len(dataset)
    assert dataset.drop_empty() == len(empty)
    assert len(dataset) == before - len(empty) and not set(empty) & set(dataset.ids)


def test_channel_shuffle_reorders_channels_and_costs_no_draw_when_off():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    torch.manual_seed(1)
    torch.rand(9)  # the nine draws of the colour steps
    after_colour = torch.rand(())
    torch.manual_seed(1)
    plain = augment.photometric_distort(rgb, strength=0.0, channel_shuffle=0.0)
    assert torch.rand(()) == after_colour  # the random stream is the recipe's when the variant is off
    reds = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out = augment.photometric_distort(rgb, strength=0.0, channel_shuffle=1.0)
        reds.add(int(out[0, 0].argmax()))
    assert np.array_equal(plain, rgb) and len(reds) > 1  # red moved to other channels


def test_detach_first_map_cuts_only_the_first_maps_gradient():
    x = torch.randn(2, 3, 300, 300, generator=torch.Generator().manual_seed(0))

    def stem_grad(detach, use_first):
        torch.manual_seed(0)
        model = build_model("ssdlite", 3, detach_first_map=detach)
        first, last = model.feature_extractor(x)
        (last.sum() + (first.sum() if use_first else 0)).backward()
        return model.feature_extractor.feature_extractor[0][0].weight.grad

    detached = stem_grad(True, use_first=True)
    torch.testing.assert_close(detached, stem_grad(False, use_first=False))  # as if the first map were not there
    assert not torch.allclose(detached, stem_grad(False, use_first=True))
    with pytest.raises(ValueError, match="SSDLite"):
        build_model("ssd", 3, detach_first_map=True)
