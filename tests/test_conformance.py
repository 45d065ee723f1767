"""Our models, default boxes, encoder, loss and decoder against the reference conformance kit."""
# the kit names centre-format boxes "xywh"; they are cxcywh here
import pytest
import torch

from src.checkpoints.schema import adapt_state_dict, load_model_weights, model_state_dict
from src.models.box_coder import BoxCoder
from src.models.default_boxes import default_boxes
from src.models.loss import MultiBoxLoss
from src.models.matching import pad_targets
from src.models.postprocess import Postprocessor
from src.models.specs import get_spec
from src.models.ssd import build_model

MODELS = ["ssd", "ssdlite"]


@pytest.mark.parametrize("name", MODELS)
def test_default_boxes_match_kit(name, kit_dboxes):
    ours = default_boxes(get_spec(name))
    assert ours.shape == kit_dboxes[name]["xywh"].shape == (get_spec(name).num_boxes, 4)
    torch.testing.assert_close(ours, kit_dboxes[name]["xywh"], atol=1e-6, rtol=0)
    torch.testing.assert_close(BoxCoder(ours).dboxes_ltrb, kit_dboxes[name]["ltrb"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_keys_and_shapes_match_kit(name, kit_shapes):
    ours = {k: list(v.shape) for k, v in build_model(name, 81).state_dict().items()}
    expected = dict(kit_shapes[name])
    if name == "ssdlite":  # the reference's unused 7th head is the only difference
        dead = [k for k in expected if k.startswith(("loc.6.", "conf.6."))]
        assert sorted(dead) == ["conf.6.bias", "conf.6.weight", "loc.6.bias", "loc.6.weight"]
        for k in dead:
            del expected[k]
    assert list(ours) == list(expected)
    assert ours == expected


@pytest.mark.parametrize("name", MODELS)
def test_model_outputs_match_kit(name, kit, kit_state_dict):
    model = build_model(name, 81).eval()
    load_model_weights(model, kit_state_dict(name))
    x = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(kit[name]["input_seed"]))
    with torch.no_grad():
        ploc, plabel = model(x)
    torch.testing.assert_close(ploc, kit[name]["ploc"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(plabel, kit[name]["plabel"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_encoder_cases(name, kit, kit_dboxes):
    coder = BoxCoder(kit_dboxes[name]["xywh"], kit[name]["encoder_iou_threshold"])
    cases = kit[name]["encoder_cases"]
    for case in cases:
        boxes, labels = coder.match_one(case["boxes_ltrb"], case["labels"])
        assert torch.equal(labels, case["encoded_labels"])
        torch.testing.assert_close(boxes, case["encoded_xywh"], atol=1e-5, rtol=0)
    # the same three images as one padded batch
    boxes, labels = coder.match(*pad_targets([{"boxes": c["boxes_ltrb"], "labels": c["labels"]} for c in cases]))
    assert torch.equal(labels, torch.stack([c["encoded_labels"] for c in cases]))
    torch.testing.assert_close(boxes, torch.stack([c["encoded_xywh"] for c in cases]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_loss_case(name, kit, kit_dboxes):
    coder = BoxCoder(kit_dboxes[name]["xywh"])
    b = coder.num_boxes
    g = torch.Generator().manual_seed(kit[name]["loss_case"]["seed"])
    ploc = torch.randn(3, 4, b, generator=g)
    plabel = torch.randn(3, 81, b, generator=g)
    cases = kit[name]["encoder_cases"]
    out = MultiBoxLoss(coder)(ploc, plabel, torch.stack([c["encoded_xywh"] for c in cases]),
                              torch.stack([c["encoded_labels"] for c in cases]))
    torch.testing.assert_close(out["total"], kit[name]["loss_case"]["loss"], rtol=1e-4, atol=0)
    torch.testing.assert_close(out["total"], out["loc"] + out["cls"])


@pytest.mark.parametrize("name", MODELS)
def test_decode_case(name, kit, kit_dboxes):
    case = kit[name]["decode_case"]
    coder = BoxCoder(kit_dboxes[name]["xywh"])
    b = coder.num_boxes
    g = torch.Generator().manual_seed(case["seed"])
    ploc = 0.5 * torch.randn(1, 4, b, generator=g)
    plabel = torch.randn(1, 81, b, generator=g)
    hot = torch.randint(0, b, (60,), generator=g)
    cls = torch.randint(1, 81, (60,), generator=g)
    plabel[0, cls, hot] += 9.0
    post = Postprocessor(coder, score_threshold=case["score_threshold"], nms_threshold=case["nms_threshold"],
                         max_output=case["max_output"])
    boxes, labels, scores = post(ploc, plabel)[0]
    expected_scores, order = case["scores"].sort(descending=True)
    torch.testing.assert_close(scores, expected_scores)
    assert torch.equal(labels, case["labels"][order])
    # the reference leaves boxes unclamped; ours are clamped to the image
    torch.testing.assert_close(boxes, case["boxes_ltrb"][order].clamp(0, 1), atol=1e-5, rtol=0)


def _original_form(state):
    return {"epoch": 53, "model_state_dict": state, "optimizer": {}, "scheduler": {}}


def _nvidia_form(state, prefix):
    return {"epoch": 64, "iteration": 1000, "optimizer": {}, "scheduler": {},
            "label_map": {}, "model": {prefix + k: v for k, v in state.items()}}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("form", ["original", "nvidia", "nvidia-ddp"])
def test_published_checkpoint_forms_load_strictly(name, form, kit_state_dict, tmp_path):
    state = kit_state_dict(name)
    ckpt = {"original": lambda: _original_form(state), "nvidia": lambda: _nvidia_form(state, ""),
            "nvidia-ddp": lambda: _nvidia_form(state, "module.")}[form]()
    path = tmp_path / "published.pth"
    torch.save(ckpt, path)
    loaded = torch.load(path, weights_only=True)
    model = build_model(name, 81)
    load_model_weights(model, model_state_dict(loaded))
    expected = adapt_state_dict(state, name)
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_only_the_unused_ssdlite_head_is_dropped(kit_state_dict):
    state = kit_state_dict("ssdlite")
    adapted = adapt_state_dict(state, "ssdlite")
    assert set(state) - set(adapted) == {"loc.6.weight", "loc.6.bias", "conf.6.weight", "conf.6.bias"}
    assert adapt_state_dict(kit_state_dict("ssd"), "ssd").keys() == kit_state_dict("ssd").keys()
