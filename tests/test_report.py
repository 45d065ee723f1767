"""The evaluation report written twice into one folder shows the second run alone."""
import cv2

from src.data.dataset import CocoDetection, coco_paths
from src.evaluation.coco_eval import coco_evaluate
from src.evaluation.report import build, write_report
from src.utils.outputs import OutputGuard


def results_missing(dataset, skip: set) -> list[dict]:
    """The ground truth as detections, except on the images in ``skip`` (those fail most)."""
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in dataset.coco.dataset["annotations"] if a["image_id"] not in skip and not a["iscrowd"]]


def report_once(dataset, folder, skip):
    results = results_missing(dataset, skip)
    evaluation = coco_evaluate(dataset.coco, results, verbose=False)
    report = build(evaluation, dataset, results, dataset.ids, gallery=len(skip))
    written = write_report(str(folder), report, dataset, results,
                           lambda i: cv2.imread(dataset.image_path(i), cv2.IMREAD_COLOR))
    OutputGuard.record(written)  # as test_dataset.py does: these files are ours
    return sorted(p.name for p in (folder / "gallery").iterdir() if p.suffix == ".jpg")


def test_a_report_written_again_leaves_no_picture_of_the_previous_one(toy_root, tmp_path):
    ann, images = coco_paths(toy_root, "val")
    dataset = CocoDetection(images, ann)
    annotated = sorted({a["image_id"] for a in dataset.coco.dataset["annotations"]})
    first, second = set(annotated[:2]), set(annotated[2:4])
    folder = tmp_path / "report"
    folder.mkdir()
    assert report_once(dataset, folder, first) == sorted(f"{i}.jpg" for i in first)
    mine = folder / "gallery" / "mine.jpg"  # a file of the user's in the gallery folder
    mine.write_bytes(b"not ours")
    kept = report_once(dataset, folder, second)
    assert kept == sorted([*(f"{i}.jpg" for i in second), "mine.jpg"]) and mine.read_bytes() == b"not ours"
