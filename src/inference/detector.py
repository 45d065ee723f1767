"""One detector for every inference script: load a checkpoint, preprocess, forward, decode,
and scale the boxes to the pixels of each input image."""
import numpy as np
import torch

from src.checkpoints.schema import load_model
from src.data.transforms import model_transforms
from src.inference.detections import Detections
from src.models.postprocess import Postprocessor
from src.utils.device import autocast


def bgr_to_tensor(frame: np.ndarray) -> torch.Tensor:
    """An OpenCV BGR uint8 (H, W, 3) frame as an RGB uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(frame[..., ::-1])).permute(2, 0, 1)


class Detector:
    """Images in, detections in pixels out.

    :param model: an :class:`~src.models.ssd.SSD` in eval mode
    :param category_ids: the id of each label 1..K; a label whose id is None (a category the
        dataset lacks, or one of the unused slots of torchvision's 91-way COCO head) is not reported
    :param category_names: name of each label 1..K
    :param cls_threshold: minimum score of a detection
    :param nms_threshold, max_output: None: the model's own (``model.spec.decoding``)
    """

    def __init__(self, model, category_ids, category_names, device="cpu", cls_threshold=0.3,
                 nms_threshold=None, max_output=None, amp=False):
        self.device = torch.device(device)
        # NHWC: faster convolutions on the CPU (oneDNN) and with AMP on a GPU
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.category_ids = category_ids
        self.category_names = category_names
        self.transform = model_transforms(model.spec)
        self.reported = torch.tensor([i is not None for i in category_ids])  # (K,) per label 1..K
        self.postprocess = Postprocessor.for_spec(model.spec, self.device, score_threshold=cls_threshold,
                                                  nms_threshold=nms_threshold, max_output=max_output,
                                                  num_labels=len(category_names))
        self.amp = amp

    @classmethod
    def from_checkpoint(cls, path, model_name=None, device="cpu", categories=None, **kwargs) -> "Detector":
        """:param categories: a dataset's :class:`~src.data.categories.DatasetCategories`: the
            names of a checkpoint that carries none; one that does must match them by name"""
        model, ids, names = load_model(path, model_name, map_location="cpu", categories=categories)
        return cls(model, ids, names, device, **kwargs)

    def preprocess(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 RGB images (3, H_i, W_i) of any sizes -> (N, 3, S, S), exactly as in evaluation."""
        return torch.stack([self.transform(img.to(self.device, non_blocking=True)) for img in images])

    @torch.no_grad()
    def __call__(self, images: list[torch.Tensor]) -> list[Detections]:
        """Detect objects in uint8 RGB images (3, H, W), each at its own size."""
        if not images:
            return []
        with autocast(self.device, self.amp):
            ploc, plabel = self.model(self.preprocess(images).contiguous(memory_format=torch.channels_last))
        out = []
        for img, (boxes, labels, scores) in zip(images, self.postprocess(ploc, plabel, out_device="cpu")):
            keep = self.reported[labels - 1]
            boxes, labels, scores = boxes[keep], labels[keep], scores[keep]
            h, w = img.shape[-2:]
            pixels = boxes * torch.tensor([w, h, w, h], dtype=torch.float32)
            out.append(Detections(pixels, labels, scores, [self.category_names[i - 1] for i in labels.tolist()]))
        return out
