"""The evaluation report: a folder a person opens (``index.html``, one page, no network and no
JavaScript needed) and files a program reads (CSV, JSON).

    per_class.csv, per_class.json   AP, AP50, AP75, AP by size, objects, detections, best-F1 threshold
    pr_curves.png, pr_curves.json   precision-recall at IoU 0.5 and 0.75, overall and per class
    confusion.png, confusion.json   true x predicted category (+ background), counts and row-normalised
    errors.png, errors.json         what each kind of error costs in AP (TIDE's oracle, at IoU 0.5)
    gallery/<image id>.jpg          the images that fail most: ground truth and detections drawn
    index.html                      all of the above, the figures embedded
"""
import base64
import csv
import html
import json
import os

import cv2
import numpy as np

from src.evaluation.analysis import ERROR_TYPES, confusion_matrix, error_breakdown, per_class, pr_curves, worst_images
from src.inference.detections import Detections
from src.inference.draw import draw_detections, draw_ground_truth
from src.utils.outputs import written_by_us

FILES = ["per_class.csv", "per_class.json", "pr_curves.png", "pr_curves.json", "confusion.png", "confusion.json",
         "errors.png", "errors.json", "index.html"]


def report_files(folder: str, image_ids_for_gallery=()) -> list[str]:
    """Every file :func:`write_report` may write in ``folder`` (for the output checks)."""
    return [os.path.join(folder, name) for name in FILES] + [
        os.path.join(folder, "gallery", f"{image_id}.jpg") for image_id in image_ids_for_gallery]


def build(evaluation, dataset, results, image_ids, min_score=0.3, gallery=12) -> dict:
    """Every number of the report (no file written)."""
    names = dict(zip(dataset.category_ids, dataset.category_names))
    return {"stats": evaluation.stats,
            "classes": per_class(evaluation, dataset.coco, results, names, image_ids),
            "curves": pr_curves(evaluation),
            "confusion": confusion_matrix(dataset.coco, results, dataset.category_ids, min_score),
            "errors": error_breakdown(dataset.coco, results, image_ids),
            "worst": worst_images(dataset.coco, results, image_ids, min_score, gallery),
            "min_score": min_score, "names": [names[c] for c in dataset.category_ids]}


def write_report(folder: str, report: dict, dataset, results, read_image) -> list[str]:
    """Write the report's files into ``folder`` (which exists and was checked).

    :param read_image: image id -> BGR (H, W, 3) uint8, for the gallery (None for an unreadable file)
    :return: the files written
    """
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    written = [_write_tables(folder, report)]
    written += _write_figures(folder, report)
    written += _write_gallery(folder, report, dataset, results, read_image)
    written.append(_write_html(folder, report, [w for w in written if "gallery" in w]))
    return [w for group in written for w in (group if isinstance(group, list) else [group])]


def _write_tables(folder, report) -> list[str]:
    rows = [vars(r) for r in report["classes"]]
    with open(os.path.join(folder, "per_class.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["category_id"])
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    matrix = report["confusion"]
    labels = report["names"]
    tables = {"per_class.json": rows, "pr_curves.json": report["curves"], "errors.json": report["errors"],
              "confusion.json": {"truth (rows)": labels + ["background"], "prediction (columns)": labels + ["missed"],
                                 "min_score": report["min_score"], "iou": 0.5, "counts": matrix.tolist(),
                                 "row_normalised": _row_normalised(matrix).tolist()}}
    for name, data in tables.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(data, f, indent=1, default=str)
    return [os.path.join(folder, n) for n in ["per_class.csv", *tables]]


def _row_normalised(matrix):
    return matrix / np.maximum(matrix.sum(1, keepdims=True), 1)


def _write_figures(folder, report) -> list[str]:
    import matplotlib.pyplot as plt
    paths = [os.path.join(folder, n) for n in ("pr_curves.png", "confusion.png", "errors.png")]
    for path, draw in zip(paths, (_plot_curves, _plot_confusion, _plot_errors)):
        fig = draw(plt, report)
        fig.savefig(path, dpi=80)
        plt.close(fig)
    return paths


def _plot_curves(plt, report, max_panels=20):
    """Overall precision-recall, then a small panel per category with ground truth (up to
    ``max_panels``; beyond, every category's curve in one panel: a panel costs ~0.1 s to draw)."""
    curves = report["curves"]
    shown = [(name, c) for name, c in zip(report["names"], curves["classes"].values()) if c.get("0.5")]
    if len(shown) > max_panels:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for _, data in shown:
            ax.plot(curves["recall"], data["0.5"], color="0.75", linewidth=0.7)
        for iou, style in (("0.5", "-"), ("0.75", "--")):
            ax.plot(curves["recall"], curves["all"][iou], style, color="k", linewidth=2, label=f"all, IoU {iou}")
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
               title=f"all categories (grey: each of the {len(shown)} at IoU 0.5)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
    cols = min(5, len(shown) + 1)
    rows = (len(shown) + cols) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows), squeeze=False)
    for ax, (title, data) in zip(axes.flat, [("all categories", curves["all"]), *shown]):
        for iou, style in (("0.5", "-"), ("0.75", "--")):
            if data.get(iou):
                ax.plot(curves["recall"], data[iou], style, label=f"IoU {iou}")
        ax.set(title=title, xlim=(0, 1), ylim=(0, 1.02))
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    axes.flat[0].set(xlabel="recall", ylabel="precision")
    for ax in list(axes.flat)[len(shown) + 1:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _plot_confusion(plt, report):
    """Row shares in colour, counts written in; the categories that appear at all (the JSON has every one)."""
    matrix, names = report["confusion"], report["names"]
    present = [i for i in range(len(names)) if matrix[i].any() or matrix[:, i].any()] or list(range(len(names)))
    rows, cols = present + [len(names)], present + [len(names)]
    shown = matrix[np.ix_(rows, cols)]
    normalised = _row_normalised(shown)
    labels = [names[i] for i in present]
    side = min(16, 3 + 0.45 * len(labels))
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), labels + ["missed"], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), labels + ["background"], fontsize=7)
    ax.set(xlabel="prediction", ylabel="truth",
           title=f"confusion at score >= {report['min_score']:g}, IoU 0.5 (row shares, counts)")
    if len(labels) <= 30:
        for (i, j), count in np.ndenumerate(shown):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def _plot_errors(plt, report):
    gains = report["errors"]["dAP"]
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.barh(ERROR_TYPES[::-1], [gains[k] for k in ERROR_TYPES[::-1]], color="tab:red")
    ax.set(xlabel="AP50 gained if fixed", title=f"errors (AP50 {report['errors']['AP']:.3f})")
    fig.tight_layout()
    return fig


def _write_gallery(folder, report, dataset, results, read_image) -> list[str]:
    os.makedirs(os.path.join(folder, "gallery"), exist_ok=True)
    _remove_stale_pictures(os.path.join(folder, "gallery"), {f"{row['image_id']}.jpg" for row in report["worst"]})
    by_image = {}
    for r in results:
        if r["score"] >= report["min_score"]:
            by_image.setdefault(r["image_id"], []).append(r)
    names = dict(zip(dataset.category_ids, dataset.category_names))
    written = []
    for row in report["worst"]:
        image = read_image(row["image_id"])
        if image is None:
            continue
        anns = [a for a in dataset.coco.imgToAnns.get(row["image_id"], []) if not a["iscrowd"]]
        gt = np.array([a["bbox"] for a in anns], dtype=float).reshape(-1, 4)
        gt[:, 2:] += gt[:, :2]  # COCO xywh -> ltrb
        drawn = draw_ground_truth(image, gt, [names[a["category_id"]] for a in anns])
        drawn = draw_detections(drawn, Detections.from_coco_results(by_image.get(row["image_id"], []),
                                                                    dataset.category_ids, dataset.category_names))
        path = os.path.join(folder, "gallery", f"{row['image_id']}.jpg")
        cv2.imwrite(path, drawn, [cv2.IMWRITE_JPEG_QUALITY, 85])
        written.append(path)
    return written


def _remove_stale_pictures(gallery: str, kept: set):
    """An earlier report's pictures that this one does not show are removed, when this project
    wrote them and nobody changed them since (a file of anyone else's stays)."""
    for name in os.listdir(gallery):
        path = os.path.join(gallery, name)
        if name.endswith(".jpg") and name not in kept and written_by_us(path):
            os.remove(path)


def _embed(path) -> str:
    kind = "png" if path.endswith(".png") else "jpeg"
    with open(path, "rb") as f:
        return f"data:image/{kind};base64,{base64.b64encode(f.read()).decode()}"


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _write_html(folder, report, gallery) -> str:
    rows = report["classes"]
    columns = ["name", "num_gt", "num_detections", "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
               "best_f1", "f1_threshold", "precision_at_f1", "recall_at_f1"]
    table = "".join("<tr>" + "".join(f"<td>{_fmt(getattr(r, c))}</td>" for c in columns) + "</tr>" for r in rows)
    stats = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in report["stats"].items())
    errors = report["errors"]
    error_rows = "".join(f"<tr><td>{k}</td><td>{errors['count'][k]}</td><td>{errors['dAP'][k]:+.3f}</td></tr>"
                         for k in ERROR_TYPES)
    worst = {r["image_id"]: r for r in report["worst"]}
    tiles = "".join(
        f"<figure><img src='{_embed(p)}'><figcaption>image {html.escape(os.path.basename(p)[:-4])}: "
        f"{worst[int(os.path.basename(p)[:-4])]['missed']} missed, "
        f"{worst[int(os.path.basename(p)[:-4])]['false']} false</figcaption></figure>" for p in gallery)
    figure = {n: _embed(os.path.join(folder, n)) for n in ("pr_curves.png", "confusion.png", "errors.png")}
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:6px}} figure img{{max-width:380px}} img{{max-width:100%}}</style></head><body>
<h1>Evaluation report</h1>
<p>COCO metrics of the detections, then what they are made of. Categories without ground truth in these
images show "—", not 0. Gallery: ground truth in thin white boxes, detections scoring at least
{report['min_score']:g} in coloured boxes with their scores.</p>
<h2>Summary</h2><table>{stats}</table>
<h2>Per category</h2><table><tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>{table}</table>
<p>best_f1: the best F1 at IoU 0.5 over the score thresholds; f1_threshold: the score that gives it.</p>
<h2>Precision and recall</h2><img src="{figure['pr_curves.png']}">
<h2>Confusion matrix</h2><img src="{figure['confusion.png']}">
<p>Rows: the truth (the last, background: a detection that matched nothing). Columns: the prediction
(the last, missed: an object nothing matched). Matched at IoU 0.5 whatever the category.</p>
<h2>Errors</h2><table><tr><th>error</th><th>count</th><th>AP50 if fixed</th></tr>{error_rows}</table>
<img src="{figure['errors.png']}">
<p>In the spirit of TIDE (Bolya et al., 2020), at IoU 0.5 (0.1 for background): each kind of error fixed alone,
and the AP50 it would give back.</p>
<h2>The images that fail most</h2>{tiles or '<p>No image has a miss or a false detection.</p>'}
</body></html>
"""
    path = os.path.join(folder, "index.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def print_table(report: dict):
    """The per-category table on stdout."""
    print(f"{'category':>16s} {'objects':>8s} {'dets':>7s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'APs':>6s} "
          f"{'APm':>6s} {'APl':>6s} {'bestF1':>7s} {'@score':>7s}")
    for r in report["classes"]:
        cells = [_fmt(v) for v in (r.AP, r.AP50, r.AP75, r.AP_small, r.AP_medium, r.AP_large)]
        print(f"{r.name[:16]:>16s} {r.num_gt:8d} {r.num_detections:7d} " + " ".join(f"{c:>6s}" for c in cells)
              + f" {_fmt(r.best_f1):>7s} {_fmt(r.f1_threshold):>7s}")
