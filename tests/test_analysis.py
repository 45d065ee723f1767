"""The evaluation report's numbers: per-class AP against pycocotools class by class, and hand-made
cases with known answers for the confusion matrix and the error breakdown."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from src.data.dataset import CocoDetection, coco_paths
from src.evaluation.analysis import ERROR_TYPES, confusion_matrix, error_breakdown, per_class, pr_curves, worst_images
from src.evaluation.coco_eval import coco_evaluate


@pytest.fixture(scope="module")
def val(toy_root):
    ann, images = coco_paths(toy_root, "val")
    return CocoDetection(images, ann)


def gt_as_detections(dataset, score=0.9, relabel=None, shift=0.0, duplicate=False):
    """The ground truth given back as detections, changed as asked."""
    results = []
    for i, a in enumerate(a for a in dataset.coco.dataset["annotations"] if not a["iscrowd"]):
        x, y, w, h = a["bbox"]
        cat = relabel.get(a["category_id"], a["category_id"]) if relabel else a["category_id"]
        s = score - 0.01 * i
        results.append({"image_id": a["image_id"], "category_id": cat, "bbox": [x + shift * w, y, w, h], "score": s})
        if duplicate:
            results.append({"image_id": a["image_id"], "category_id": cat, "bbox": [x + 1, y + 1, w, h],
                            "score": s - 0.005})
    return results


def analyse(dataset, results, min_score=0.3):
    evaluation = coco_evaluate(dataset.coco, results, verbose=False)
    names = dict(zip(dataset.category_ids, dataset.category_names))
    return (per_class(evaluation, dataset.coco, results, names, dataset.ids),
            confusion_matrix(dataset.coco, results, dataset.category_ids, min_score),
            error_breakdown(dataset.coco, results, dataset.ids))


def counts_by_category(dataset):
    out = dict.fromkeys(dataset.category_ids, 0)
    for a in dataset.coco.dataset["annotations"]:
        out[a["category_id"]] += 1
    return out


def test_the_ground_truth_as_detections_is_perfect(val):
    rows, matrix, errors = analyse(val, gt_as_detections(val))
    for row in rows:
        assert row.AP is None if row.num_gt == 0 else row.AP == pytest.approx(1.0)
    n = counts_by_category(val)
    assert np.array_equal(matrix, np.diag([n[c] for c in val.category_ids] + [0]))
    assert errors["AP"] == pytest.approx(1.0) and all(v == 0 for v in errors["count"].values())
    assert all(v == pytest.approx(0.0) for v in errors["dAP"].values())
    assert worst_images(val.coco, gt_as_detections(val), val.ids, 0.3, 10) == []


def test_one_class_named_as_another_is_a_classification_error(val):
    n = counts_by_category(val)
    a, b = [c for c in val.category_ids if n[c]][:2]
    rows, matrix, errors = analyse(val, gt_as_detections(val, relabel={a: b}))
    ia, ib = val.category_ids.index(a), val.category_ids.index(b)
    assert matrix[ia, ib] == n[a] and matrix[ia, ia] == 0  # the known off-diagonal cell
    assert errors["count"]["classification"] == n[a] and errors["count"]["background"] == 0
    assert errors["AP"] + errors["dAP"]["classification"] == pytest.approx(1.0)  # fixing them is perfect
    assert next(r for r in rows if r.category_id == a).AP == pytest.approx(0.0)


def test_boxes_shifted_to_iou_0_3_are_localisation_errors(val):
    shift = 7 / 13  # a box moved by this much of its width overlaps it at IoU (1 - s) / (1 + s) = 0.3
    rows, matrix, errors = analyse(val, gt_as_detections(val, shift=shift))
    total = sum(counts_by_category(val).values())
    assert errors["count"]["localization"] == total and errors["AP"] == pytest.approx(0.0)
    assert errors["dAP"]["localization"] == pytest.approx(1.0)
    assert matrix[:-1, :-1].sum() == 0  # nothing matched at IoU 0.5


def test_a_duplicate_of_every_box_is_a_duplicate_error(val):
    rows, matrix, errors = analyse(val, gt_as_detections(val, duplicate=True))
    total = sum(counts_by_category(val).values())
    assert errors["count"]["duplicate"] == total
    assert errors["AP"] < 1.0 and errors["AP"] + errors["dAP"]["duplicate"] == pytest.approx(1.0)
    assert matrix[-1, :-1].sum() == total  # each duplicate matched nothing: background row


def test_no_detections_misses_everything(val):
    rows, matrix, errors = analyse(val, [])
    total = sum(counts_by_category(val).values())
    assert errors["count"]["missed"] == total and errors["AP"] == 0.0
    assert matrix[:-1, -1].sum() == total and matrix[:, :-1].sum() == 0
    assert all(r.AP in (None, 0.0) for r in rows)
    assert set(errors["dAP"]) == set(ERROR_TYPES)


def test_without_detections_what_has_no_objects_is_undefined_not_zero(val, tmp_path):
    """No detection at all: AP 0 where there are objects to find, as COCOeval gives; -1 (and no
    per-class AP) where there are none, as with detections."""
    data = dict(val.coco.dataset)
    data["categories"] = data["categories"] + [{"id": 77, "name": "unseen"}]
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(data))
    extended = CocoDetection(val.image_dir, str(path))
    empty = coco_evaluate(extended.coco, [], verbose=False)
    some = coco_evaluate(extended.coco, noisy_detections(extended, seed=2), verbose=False)
    assert empty.stats["AP"] == 0.0
    assert {k for k, v in empty.stats.items() if v == -1} == {k for k, v in some.stats.items() if v == -1}
    k = extended.category_ids.index(77)
    assert empty.class_ap(k) is None and some.class_ap(k) is None
    assert empty.class_ap(extended.category_ids.index(extended.coco.dataset["annotations"][0]["category_id"])) == 0.0


def noisy_detections(dataset, seed=0):
    g = torch.Generator().manual_seed(seed)
    results = []
    for image_id in dataset.ids:
        for a in dataset.coco.imgToAnns.get(image_id, []):
            jitter = (torch.randn(4, generator=g) * 6).tolist()
            score = float(torch.rand(1, generator=g))
            results.append({"image_id": image_id, "category_id": a["category_id"], "score": score,
                            "bbox": [v + j for v, j in zip(a["bbox"], jitter)]})
        cat = dataset.category_ids[int(torch.randint(len(dataset.category_ids), (1,), generator=g))]
        results.append({"image_id": image_id, "category_id": cat, "bbox": [5.0, 5.0, 60.0, 50.0],
                        "score": float(torch.rand(1, generator=g))})
    return results


def test_per_class_ap_is_what_pycocotools_gives_for_that_class_alone(val):
    results = noisy_detections(val)
    evaluation = coco_evaluate(val.coco, results, verbose=False)  # faster-coco-eval when installed
    rows = per_class(evaluation, val.coco, results, dict(zip(val.category_ids, val.category_names)), val.ids)
    checked = 0
    for row in rows:
        with contextlib.redirect_stdout(io.StringIO()):
            alone = COCOeval(val.coco, val.coco.loadRes([dict(r) for r in results]), "bbox")
            alone.params.catIds = [row.category_id]
            alone.evaluate()
            alone.accumulate()
            alone.summarize()
        if row.num_gt == 0:
            assert row.AP is None and alone.stats[0] == -1
            continue
        checked += 1
        assert row.AP == pytest.approx(alone.stats[0], abs=1e-6)
        assert row.AP50 == pytest.approx(alone.stats[1], abs=1e-6)
        assert row.AP75 == pytest.approx(alone.stats[2], abs=1e-6)
        assert 0 < row.best_f1 <= 1 and 0 <= row.f1_threshold <= 1
    assert checked >= 2
    errors = error_breakdown(val.coco, results, val.ids)
    assert errors["AP"] == pytest.approx(evaluation.stats["AP50"], abs=1e-6)  # the same AP at IoU 0.5


def test_a_class_without_ground_truth_is_shown_as_such(val, tmp_path):
    results = noisy_detections(val, seed=1)
    data = dict(val.coco.dataset)
    data["categories"] = data["categories"] + [{"id": 77, "name": "unseen"}]
    path = tmp_path / "extra.json"
    path.write_text(json.dumps(data))
    extended = CocoDetection(val.image_dir, str(path))
    evaluation = coco_evaluate(extended.coco, results, verbose=False)
    rows = per_class(evaluation, extended.coco, results, dict(zip(extended.category_ids, extended.category_names)),
                     extended.ids)
    unseen = next(r for r in rows if r.category_id == 77)
    assert unseen.num_gt == 0 and unseen.AP is None and unseen.best_f1 is None
    assert pr_curves(evaluation)["classes"][77]["0.5"] == []
    assert len(pr_curves(evaluation)["all"]["0.5"]) == 101


def test_a_set_of_one_category(val, tmp_path):
    data = dict(val.coco.dataset)
    keep = data["categories"][0]["id"]
    data["categories"] = data["categories"][:1]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == keep]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(data))
    one = CocoDetection(val.image_dir, str(path))
    rows, matrix, errors = analyse(one, gt_as_detections(one))
    assert len(rows) == 1 and rows[0].AP == pytest.approx(1.0) and matrix.shape == (2, 2)
    assert matrix[0, 0] == len(data["annotations"]) and errors["AP"] == pytest.approx(1.0)


def test_the_error_breakdown_counts_only_the_detections_cocoeval_counts(val):
    """COCOeval keeps the 100 best detections of each image and category: objects found only
    below them count as missed in the breakdown too, so its AP is still COCOeval's AP50."""
    results = gt_as_detections(val, score=0.5)
    for image_id in val.ids:  # 100 better-scored detections far from everything, in every image
        results += [{"image_id": image_id, "category_id": val.category_ids[0], "bbox": [0.0, 0.0, 2.0, 2.0],
                     "score": 0.9} for _ in range(100)]
    evaluation = coco_evaluate(val.coco, results, verbose=False)
    errors = error_breakdown(val.coco, results, val.ids)
    assert evaluation.stats["AP50"] < 0.99  # the first category's objects are below its 100 junk boxes
    assert errors["AP"] == pytest.approx(evaluation.stats["AP50"], abs=1e-6)
    assert errors["count"]["missed"] == counts_by_category(val)[val.category_ids[0]]


def faster_coco_eval_confusion(coco_gt, results, category_ids, min_score, iou=0.5):
    """The reference: faster-coco-eval's PreviewResults, in our category order."""
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval.extra import PreviewResults
    k = len(category_ids)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    gt = FastCOCO(coco_gt.dataset, use_deepcopy=True)
    preview = PreviewResults(gt, gt.loadRes([dict(r) for r in results if r["score"] >= min_score]),
                             iou_tresh=iou, useCats=False)
    theirs = preview.compute_confusion_matrix()  # (K, K+2), their category order; + fp, fn columns
    order = [category_ids.index(c) for c in preview.cocoGt.cats]
    for i, ours_i in enumerate(order):
        for j, ours_j in enumerate(order):
            matrix[ours_i, ours_j] = theirs[i, j]
        matrix[k, ours_i], matrix[ours_i, k] = theirs[i, -2], theirs[i, -1]
    return matrix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_confusion_matrix_is_faster_coco_evals(val, seed):
    """Noisy, relabelled and background detections: the same counts as the library's."""
    g = torch.Generator().manual_seed(seed)
    results = noisy_detections(val, seed)
    for r in list(results):
        if torch.rand(1, generator=g) < 0.3:  # another category on the same place
            category = val.category_ids[int(torch.randint(len(val.category_ids), (1,), generator=g))]
            results.append({**r, "category_id": category, "score": float(torch.rand(1, generator=g))})
    for min_score in (0.0, 0.3):
        ours = confusion_matrix(val.coco, results, val.category_ids, min_score)
        assert (ours == faster_coco_eval_confusion(val.coco, results, val.category_ids, min_score)).all()
    assert ours[:-1, :-1].sum() > 0 and ours[-1].sum() > 0  # matches and background both met


def test_a_detection_on_a_crowd_is_counted_nowhere(val, tmp_path):
    """As COCOeval ignores it (faster-coco-eval would count it a hit of the crowd's category)."""
    data = json.loads(open(val.annotation_file).read())
    crowd = data["annotations"][0]
    crowd["iscrowd"] = 1
    (tmp_path / "crowd.json").write_text(json.dumps(data))
    with_crowd = CocoDetection(val.image_dir, str(tmp_path / "crowd.json"))
    results = gt_as_detections(val)  # the crowd given back too, as a detection of its category
    matrix = confusion_matrix(with_crowd.coco, results, val.category_ids, 0.3)
    n = counts_by_category(val)
    n[crowd["category_id"]] -= 1
    assert [matrix[i, i] for i in range(len(n))] == [n[c] for c in val.category_ids]
    assert matrix[-1].sum() == 0 and matrix[:, -1].sum() == 0 and matrix.sum() == sum(n.values())
