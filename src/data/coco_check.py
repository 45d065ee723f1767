"""Checking a COCO-format annotation dict once, at start, before any work.

A fatal problem raises :class:`DatasetError` as one line that names the file, the field, how
many entries it affects and the first of them. Tolerable ones are mended the way COCO
defines them (a missing ``area`` is the box area, a missing ``iscrowd`` is 0, a missing
annotation ``id`` is numbered) and counted in the returned :class:`CocoReport`, whose
:meth:`~CocoReport.warning` is one summary line.
"""
import math
from dataclasses import dataclass, field

from src.utils.errors import DatasetError

MIN_BOX_SIDE = 1.0  # pixels; thinner boxes cannot be matched to any default box


@dataclass
class CocoReport:
    """What the check mended or will drop, in counts."""
    boxes: int = 0  # usable boxes: not crowd, at least MIN_BOX_SIDE wide and high
    crowd: int = 0
    degenerate: int = 0  # non-crowd boxes thinner than MIN_BOX_SIDE after clipping to the image
    first_degenerate: str = ""  # where the first one is
    clipped: int = 0  # usable boxes reaching more than a pixel outside their image
    first_clipped: str = ""
    duplicates: int = 0  # annotations repeating another's image, category, box and crowd flag: dropped
    first_duplicate: str = ""
    filled_area: int = 0
    filled_iscrowd: int = 0
    filled_id: int = 0
    filled_name: int = 0
    unnamed_ids: list = field(default_factory=list)  # categories named by id

    def warning(self) -> str | None:
        """One line of what was mended or dropped, or None if nothing was."""
        parts = [f"{self.degenerate} boxes dropped as degenerate (under {MIN_BOX_SIDE:g} px after clipping "
                 f"to the image; first: {self.first_degenerate})" if self.degenerate else "",
                 f"{self.clipped} boxes reach outside their image and are clipped to it (first: {self.first_clipped})"
                 if self.clipped else "",
                 f"{self.duplicates} annotations repeat another of the same image, category and box and are dropped "
                 f"(each would be one more object to find; first: {self.first_duplicate})" if self.duplicates else "",
                 f"{self.filled_area} annotations without 'area' (set to the box area)" if self.filled_area else "",
                 f"{self.filled_iscrowd} annotations without 'iscrowd' (set to 0)" if self.filled_iscrowd else "",
                 f"{self.filled_id} annotations without 'id' (numbered)" if self.filled_id else "",
                 f"{self.filled_name} categories without 'name' (named by id)" if self.filled_name else ""]
        parts = [p for p in parts if p]
        return "; ".join(parts) if parts else None


def _fail(path, count, what, first):
    raise DatasetError(f"annotation file {path}: {count} {what} (first: {first})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entries(data, key, path) -> list:
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise DatasetError(f"annotation file {path}: '{key}' is a {type(entries).__name__}, not a list")
    bad = [i for i, e in enumerate(entries) if not isinstance(e, dict)]
    if bad:
        _fail(path, len(bad), f"entries of '{key}' are not objects", f"entry {bad[0]}")
    data[key] = entries
    return entries


def _unique_ints(entries, field, kind, path) -> set:
    """The ``field`` of every entry: present, an integer, and unique."""
    missing = [i for i, e in enumerate(entries) if field not in e]
    if missing:
        _fail(path, len(missing), f"{kind} have no '{field}'", f"entry {missing[0]}")
    not_int = [e[field] for e in entries if not _is_int(e[field])]
    if not_int:
        _fail(path, len(not_int), f"{kind} have an '{field}' that is not an integer", repr(not_int[0]))
    seen, repeated = set(), []
    for e in entries:
        (repeated.append(e[field]) if e[field] in seen else seen.add(e[field]))
    if repeated:
        _fail(path, len(repeated), f"{kind} repeat an '{field}' used before", f"{field} {repeated[0]}")
    return seen


def _check_images(images, path) -> dict:
    """image id -> (width, height) or None; file names present and listed once."""
    _unique_ints(images, "id", "images", path)
    no_name = [im["id"] for im in images if not isinstance(im.get("file_name"), str) or not im["file_name"]]
    if no_name:
        _fail(path, len(no_name), "images have no 'file_name'", f"image id {no_name[0]}")
    first_id, repeated = {}, []
    for im in images:
        name = im["file_name"]
        (repeated.append((name, first_id[name], im["id"])) if name in first_id else first_id.setdefault(name, im["id"]))
    if repeated:
        name, a, b = repeated[0]
        _fail(path, len(repeated), "images list a 'file_name' listed before, so its objects would also be taught "
              "as background", f"{name}, image ids {a} and {b}")
    bad_size = [im for im in images
                if any(k in im and not (_is_number(im[k]) and im[k] > 0) for k in ("width", "height"))]
    if bad_size:
        im = bad_size[0]
        _fail(path, len(bad_size), "images have a 'width' or 'height' that is not a positive number",
              f"image id {im['id']}, {im.get('annotation_source') or im['file_name']}")
    return {im["id"]: (im["width"], im["height"]) if "width" in im and "height" in im else None for im in images}


def _check_categories(categories, path, report) -> set:
    ids = _unique_ints(categories, "id", "categories", path)
    for c in categories:
        if not isinstance(c.get("name"), str) or not c["name"]:
            c["name"] = f"category {c['id']}"
            report.filled_name += 1
            report.unnamed_ids.append(c["id"])
    return ids


def _check_annotations(anns, sizes, category_ids, path, report, origins):
    def fail_where(bad, field, what):
        if bad:
            a = bad[0]
            _fail(path, len(bad), what, f"annotation {a.get('id', '?')}, {field} {a.get(field)!r}")

    fail_where([a for a in anns if not _is_int(a.get("image_id")) or a["image_id"] not in sizes], "image_id",
               "annotations have an 'image_id' that is not in 'images'")
    fail_where([a for a in anns if not _is_int(a.get("category_id")) or a["category_id"] not in category_ids],
               "category_id", "annotations have a 'category_id' that is not in 'categories'")
    fail_where([a for a in anns if not (isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4
                                        and all(_is_number(v) for v in a["bbox"]))],
               "bbox", "annotations have a bad 'bbox' (expected [x, y, width, height], four numbers)")
    with_id = [a for a in anns if "id" in a]
    if with_id:
        _unique_ints(with_id, "id", "annotations", path)
    next_id = max((a["id"] for a in with_id), default=0) + 1
    seen, kept = set(), []
    for a in anns:
        _mend(a, report)
        if "id" not in a:
            a["id"], next_id = next_id, next_id + 1
            report.filled_id += 1
        where = f"annotation {a['id']} of {origins[a['image_id']]}"
        key = (a["image_id"], a["category_id"], tuple(float(v) for v in a["bbox"]), bool(a["iscrowd"]))
        if key in seen:
            report.duplicates += 1
            report.first_duplicate = report.first_duplicate or where
            continue
        seen.add(key)
        kept.append(a)
        _count_box(a, sizes[a["image_id"]], report, where)
    anns[:] = kept


def _mend(ann, report):
    if not _is_number(ann.get("area")):
        ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        report.filled_area += 1
    if "iscrowd" not in ann:
        ann["iscrowd"] = 0
        report.filled_iscrowd += 1


def _count_box(ann, size, report, where: str):
    if ann["iscrowd"]:
        report.crowd += 1
        return
    x, y, w, h = ann["bbox"]
    box = x0, y0, x1, y1 = x, y, x + w, y + h
    if size is not None:  # clipped to the image, as the reader does
        x0, x1 = min(max(x0, 0), size[0]), min(max(x1, 0), size[0])
        y0, y1 = min(max(y0, 0), size[1]), min(max(y1, 0), size[1])
    if x1 - x0 < MIN_BOX_SIDE or y1 - y0 < MIN_BOX_SIDE:
        report.degenerate += 1
        report.first_degenerate = report.first_degenerate or f"{where}, bbox {ann['bbox']}"
        return
    report.boxes += 1
    if max(abs(a - b) for a, b in zip(box, (x0, y0, x1, y1))) > 1:
        report.clipped += 1
        report.first_clipped = report.first_clipped or f"{where}, bbox {ann['bbox']}"


def check_coco(data, path: str) -> CocoReport:
    """Check (and mend, in place) a decoded COCO annotation file; see the module docstring."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"annotation file {path} has no 'images' list: not COCO format")
    report = CocoReport()
    sizes = _check_images(_entries(data, "images", path), path)
    category_ids = _check_categories(_entries(data, "categories", path), path, report)
    origins = {im["id"]: im.get("annotation_source") or im["file_name"] for im in data["images"]}
    _check_annotations(_entries(data, "annotations", path), sizes, category_ids, path, report, origins)
    return report
