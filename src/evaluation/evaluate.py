"""One prediction pass over a loader, and COCO mAP from it: what train.py runs after each epoch
and test_dataset.py runs once."""
import sys

import numpy as np
import torch
from tqdm import tqdm

from src.evaluation.coco_eval import coco_evaluate, to_coco_results
from src.utils.device import autocast, to_input
from src.utils.distributed import gather_lists, is_main_process
from src.utils.errors import DatasetError, ImageReadError
from src.utils.stopwatch import no_stopwatch


def eval_batch_size(device: torch.device) -> int:
    """Images per forward pass in evaluation: 32 on a GPU; 2 on a CPU, where small batches run
    fastest per image (cache-bound: SSDLite 10.6 ms at 2, 16.3 at 4, 22.9 at 8; docs/speed.md)."""
    return 32 if device.type == "cuda" else 2


def whole_dataset(loader):
    """The dataset a loader reads a shard of (:func:`~src.data.dataset.eval_loader` wraps it in a
    ``Subset`` when there are several processes)."""
    dataset = loader.dataset
    return dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset


@torch.no_grad()
def predict(model, loader, postprocess, device, *, amp=False, channels_last=False, desc="eval", watch=no_stopwatch):
    """Detections for every readable image of ``loader`` (this rank's shard); an image file
    that cannot be decoded (the loader gives a blank placeholder marked ``bad``) is left out.

    :param watch: a :class:`~src.utils.stopwatch.Stopwatch` to time reading, forward and decoding
    :return: ``(detections, image_ids, orig_sizes)``: per image ``(boxes (k, 4) normalised
        ltrb, labels (k,), scores (k,))`` on the CPU, its id and its (h, w)
    """
    model.eval()
    detections, image_ids, sizes, resized = [], [], [], 0
    batches = iter(tqdm(loader, desc=desc, disable=not is_main_process(), dynamic_ncols=True))
    while True:
        with watch("reading"):
            images, targets = next(batches, (None, None))
        if images is None:
            break
        resized += sum(1 for t in targets if t.get("resized"))
        with watch("forward"), autocast(device, amp):
            ploc, plabel = model(to_input(images, device, channels_last))
        with watch("decoding"):
            decoded = postprocess(ploc, plabel, out_device="cpu")
        for dets, target in zip(decoded, targets):
            if not target.get("bad"):
                detections.append(dets)
                image_ids.append(target["image_id"])
                sizes.append(target["orig_size"])
    if resized:
        print(f"warning: {resized} images of this shard have another size than the annotation file gives, even "
              "turned by their EXIF orientation: predictions are scaled to the annotated size", file=sys.stderr)
    return detections, image_ids, sizes


def evaluate(model, loader, postprocess, device, *, category_ids=None, amp=False, channels_last=False,
             watch=no_stopwatch, score=True):
    """COCO mAP of ``model`` on the dataset ``loader`` reads (every image, those without
    annotations included; image files that cannot be decoded are left out, with a warning).

    Each rank predicts the shard its loader reads (:func:`~src.data.dataset.eval_loader`); the
    detections are gathered, and every rank runs COCOeval on all of them (the main process
    prints the 12-line summary). No rank waits in a collective while another scores, so a
    COCOeval longer than the process group's timeout (``--dist-timeout``) cannot fail the run;
    it costs each rank the CPU time of one COCOeval.
    :param postprocess: a :class:`~src.models.postprocess.Postprocessor`, raw outputs -> detections
    :param category_ids: dataset category id of each label 1..K (default: the dataset's own)
    :param score: False: detections only, no COCOeval (a set without ground truth has nothing to score)
    :return: ``(evaluation, results)``: the :class:`~src.evaluation.coco_eval.Evaluation` (on every
        rank; ``.stats`` the 12 COCO numbers; None without ``score``) and all detections in COCO
        results format (pixels, COCO xywh)
    """
    dataset = whole_dataset(loader)
    category_ids = dataset.category_ids if category_ids is None else category_ids
    detections, image_ids, sizes = predict(model, loader, postprocess, device, amp=amp, channels_last=channels_last,
                                           watch=watch)
    results = gather_lists(to_coco_results(detections, image_ids, sizes, category_ids))
    return _score(dataset, results, gather_lists(image_ids), score, watch), results


def _score(dataset, results, evaluated, score, watch, verbose=True):
    """COCOeval of ``results`` on the images that could be read (the same on every rank), or None."""
    if not evaluated:
        raise DatasetError(f"none of the {len(dataset)} images of {dataset.image_dir} could be read (named above)")
    if not score:
        return None
    if len(evaluated) < len(dataset) and is_main_process():
        print(f"warning: {len(dataset) - len(evaluated)} of {len(dataset)} images could not be read and are "
              "left out of the evaluation (named above)", file=sys.stderr)
    with watch("COCOeval"):
        return coco_evaluate(dataset.coco, results, image_ids=evaluated, verbose=verbose and is_main_process())


def evaluate_images(detector, dataset, batch_size: int, *, category_ids, watch=no_stopwatch, score=True,
                    verbose=True):
    """:func:`evaluate` for a detector that takes images, one process: an exported model on ONNX
    Runtime or OpenVINO (:class:`~src.inference.runtime.ExportedDetector`). Each image is read
    as the evaluation reads it (:meth:`~src.data.dataset.CocoDetection.read_image`) and its
    detections scaled to the annotated size.

    :param category_ids: dataset category id of each label 1..K (None: a category it lacks)
    """
    detections, image_ids, sizes = [], [], []
    for start in tqdm(range(0, len(dataset.ids), batch_size), desc="eval", dynamic_ncols=True, disable=not verbose):
        batch = []
        with watch("reading"):
            for image_id in dataset.ids[start:start + batch_size]:
                try:
                    batch.append((image_id, dataset.read_image(image_id)[0].permute(1, 2, 0).numpy()))
                except ImageReadError as e:
                    print(f"warning: skipping a bad image: {e}", file=sys.stderr)
        with watch("forward"):
            found = detector([image for _, image in batch])
        for (image_id, image), dets in zip(batch, found):
            h, w = image.shape[:2]
            detections.append((dets.boxes / np.array([w, h, w, h], np.float32), dets.labels, dets.scores))
            image_ids.append(image_id)
            sizes.append(dataset.annotated_size(image_id) or (h, w))
    results = to_coco_results(detections, image_ids, sizes, category_ids)
    return _score(dataset, results, image_ids, score, watch, verbose), results
