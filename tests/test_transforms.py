"""Property tests: after the training augmentation every box is inside the image with positive size."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision import tv_tensors

from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transforms, val_transforms

TRAIN = train_transforms()


@st.composite
def samples(draw):
    h = draw(st.integers(16, 120))
    w = draw(st.integers(16, 120))
    n = draw(st.integers(0, 8))
    boxes = []
    for _ in range(n):
        x1 = draw(st.floats(0, w - 1.5))
        y1 = draw(st.floats(0, h - 1.5))
        x2 = draw(st.floats(x1 + 1, w))
        y2 = draw(st.floats(y1 + 1, h))
        boxes.append([x1, y1, x2, y2])
    seed = draw(st.integers(0, 2**31 - 1))
    return h, w, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), seed


@settings(max_examples=150, deadline=None)
@given(samples())
def test_augmented_boxes_stay_valid(sample):
    h, w, boxes, seed = sample
    torch.manual_seed(seed)
    image = tv_tensors.Image(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
    labels = torch.arange(1, len(boxes) + 1)
    target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)), "labels": labels}
    out_image, out = TRAIN(image, target)
    assert out_image.shape == (3, 300, 300) and out_image.dtype == torch.float32
    b = out["boxes"]
    assert b.canvas_size == (300, 300)
    assert len(b) == len(out["labels"]) <= len(boxes)
    assert set(out["labels"].tolist()) <= set(labels.tolist())
    if len(b):
        assert b.min() >= 0 and b[:, 0::2].max() <= 300 and b[:, 1::2].max() <= 300
        assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()


def test_validation_transform_is_resize_and_normalise():
    image = tv_tensors.Image(torch.full((3, 40, 60), 255, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes([[6.0, 4, 30, 20]], format="XYXY", canvas_size=(40, 60))
    out_image, out = val_transforms()(image, {"boxes": boxes, "labels": torch.tensor([1])})
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out_image[:, 0, 0], expected)
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), torch.tensor([[30.0, 30, 150, 150]]))
