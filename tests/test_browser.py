"""The page of app.py, and the evaluation report, in a real browser: Debian's Chromium, headless,
driven by Playwright. Skipped where no Chromium is installed (`apt-get install chromium`).

    SSD_APP_CHECKPOINT=demo/trained_models/ssdlite.pth SSD_APP_SCREENSHOT=docs/app.png \
        .venv/bin/python -m pytest tests/test_browser.py -k table      # the README's screenshot
"""
import json
import os
import shutil

import cv2
import pytest
from app_server import serving, two_models, val_photos
from test_app import ranked
from test_bad_input import run_script

from src.data.dataset import coco_paths

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium for the browser tests: apt-get install chromium "
                                                "(Debian, Ubuntu); .ci/run installs it where it can"),
    pytest.mark.skipif(sync_playwright is None, reason="no Playwright: make install (requirements-dev.txt)"),
]

CHECKPOINT = os.environ.get("SSD_APP_CHECKPOINT")  # a trained model for the README's screenshot
THRESHOLD = 0.3 if CHECKPOINT else 0.27  # the untrained SSDLite scores its boxes from 0.25 to 0.30
RESOURCE_ERROR = "Failed to load resource"  # Chromium's console line for an answer of status 4xx


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return two_models(tmp_path_factory.mktemp("page-models"), CHECKPOINT)


@pytest.fixture(scope="module")
def url(models):
    with serving(models, "lite.pth", threshold=THRESHOLD, max_upload_mb=2, max_video_frames=4) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])  # a webcam that draws a clock
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, url):
    """The page, loaded and ready; ``page.problems``: its console errors and uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1280, "height": 820}, accept_downloads=True)
    page = context.new_page()
    page.problems = []
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"uncaught: {e}"))
    page.calls = []
    page.on("request", lambda r: page.calls.append(r.url) if "/api/detect" in r.url else None)
    page.goto(url)
    expect(page.locator("#status")).to_contain_text("Ready")  # (no wait_for_function: the page's CSP forbids eval)
    yield page
    context.close()


@pytest.fixture(scope="module")
def photos(toy_root):
    return val_photos(toy_root)


def table(page) -> list[dict]:
    rows = page.eval_on_selector_all("#detections tbody tr", "rows => rows.map(r => [...r.cells].map(c => "
                                                             "c.textContent))")
    return [{"name": name, "score": float(score), "box": [float(v) for v in box.split(", ")]}
            for _, name, score, box in rows]


def as_rows(detections) -> list[dict]:
    """Detections as the table shows them: scores to 3 decimals."""
    return [{"name": d["name"], "score": round(d["score"], 3), "box": d["box"]} for d in detections]


def same_rows(got, expected):
    """Equal, but for the last digit of a score rounded twice (4 decimals in the JSON, then 3)."""
    key = lambda d: (d["box"], d["name"])  # noqa: E731
    got, expected = sorted(got, key=key), sorted(expected, key=key)
    return len(got) == len(expected) and all(
        g["name"] == e["name"] and g["box"] == e["box"] and abs(g["score"] - e["score"]) <= 0.0011
        for g, e in zip(got, expected))


def colour_pixels(page, colours) -> dict:
    """How many pixels of the selected card's canvas have each of ``colours`` (#rrggbb) exactly."""
    return page.evaluate("""(colours) => {
        const canvas = document.querySelector('.card.selected canvas');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        const hex = (i) => '#' + [data[i], data[i + 1], data[i + 2]].map(v => v.toString(16).padStart(2, '0')).join('');
        const counts = Object.fromEntries(colours.map(c => [c, 0]));
        for (let i = 0; i < data.length; i += 4) if (hex(i) in counts) counts[hex(i)] += 1;
        return counts;
    }""", colours)


def set_threshold(page, value):
    page.eval_on_selector("#threshold", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)


def upload(page, *paths):
    before = page.locator(".card").count()
    page.set_input_files("#files", list(paths))
    expect(page.locator(".card")).to_have_count(before + len(paths), timeout=120_000)


def expected_json(photo, models, tmp_path, monkeypatch, threshold=THRESHOLD):
    """What ``test_image.py --json`` writes for ``photo`` with the page's model and threshold."""
    out = tmp_path / "expected.json"
    code = run_script("test_image.py", ["--pretrained-model", str(models / "lite.pth"), "--input", photo,
                                        "--output", str(tmp_path / "p.jpg"), "--json", str(out),
                                        "--cls-threshold", str(threshold)], monkeypatch)
    assert code == 0
    return json.loads(out.read_text())


def busiest(toy_root) -> str:
    """The val photo with the most objects."""
    ann, images = coco_paths(toy_root, "val")
    data = json.loads(open(ann).read())
    counts = {i["id"]: 0 for i in data["images"]}
    for a in data["annotations"]:
        counts[a["image_id"]] += 1
    best = max(data["images"], key=lambda i: (counts[i["id"]], -i["id"]))
    return os.path.join(images, best["file_name"])


def test_table_of_a_photo_is_test_image_json_and_the_threshold_redraws_without_the_model(
        page, toy_root, models, tmp_path, monkeypatch):
    photo = busiest(toy_root)
    expected = expected_json(photo, models, tmp_path, monkeypatch)[0]["detections"]
    assert page.input_value("#threshold") == str(THRESHOLD)  # not moved onto a step counted from the floor
    upload(page, photo)
    name = os.path.basename(photo)
    assert page.inner_text(".card.selected .caption").startswith(f"{name}: ")
    assert page.eval_on_selector(".card.selected canvas", "c => [c.width, c.height]") == [320, 240]
    rows = table(page)
    assert 0 < len(rows) and same_rows(rows, as_rows(expected))
    colours = {c["name"]: c["color"] for c in page.evaluate("state.info.categories")}
    drawn = colour_pixels(page, list(colours.values()))
    assert all(drawn[colours[r["name"]]] > 20 for r in rows)  # each category's labels are drawn in its colour
    shot = os.environ.get("SSD_APP_SCREENSHOT")
    page.screenshot(path=shot or str(tmp_path / "app.png"))

    set_threshold(page, 0.05)  # down to the model's floor: every detection it found
    everything = table(page)
    assert len(everything) > len(rows)
    assert same_rows(everything, as_rows(expected_json(photo, models, tmp_path, monkeypatch, 0.05)[0]["detections"]))
    set_threshold(page, THRESHOLD)  # and up again: fewer rows, those of test_image.py's threshold
    assert table(page) == rows
    assert len(page.calls) == 1 and page.problems == []  # the model ran once: the threshold only redrew


def test_a_category_filtered_out_leaves_the_table_and_the_picture(page, photos):
    upload(page, photos[0])
    rows = table(page)
    colours = {c["name"]: c["color"] for c in page.evaluate("state.info.categories")}
    name = rows[0]["name"]
    page.uncheck(f"#category-list input[value='{name}']")
    assert [r for r in table(page) if r["name"] == name] == [] and len(table(page)) == sum(
        r["name"] != name for r in rows)
    assert colour_pixels(page, [colours[name]])[colours[name]] == 0
    page.click("#all-categories")
    assert len(table(page)) == len(rows) and len(page.calls) == 1 and page.problems == []


def test_the_download_is_test_image_json_of_what_is_shown(page, photos, models, tmp_path, monkeypatch):
    expected = expected_json(photos[1], models, tmp_path, monkeypatch)
    upload(page, photos[1])
    with page.expect_download() as download:
        page.click("#download")
    got = json.loads(open(download.value.path()).read())
    assert [g["input"] for g in got] == ["000002.jpg"] and got[0]["output"] is None
    assert ranked(got[0]["detections"]) == ranked(expected[0]["detections"]) and page.problems == []


def test_several_photos_each_get_a_card_and_the_chosen_one_its_table(page, photos):
    upload(page, *photos[:4])
    assert page.locator(".card").count() == 4
    page.click(".card >> nth=1")
    assert page.inner_text("#table-title").startswith("000002.jpg: ")
    assert page.locator(".card.selected").get_attribute("data-input") == "000002.jpg"
    assert len(page.calls) == 4 and page.problems == []


def test_a_webcam_photo_is_detected(page):
    page.click("#webcam-open")
    expect(page.locator("#webcam")).to_be_visible()
    for _ in range(600):  # the fake camera's first frame
        if page.evaluate("document.getElementById('webcam-video').videoWidth") > 0:
            break
        page.wait_for_timeout(100)
    page.click("#webcam-take")
    expect(page.locator(".card")).to_have_count(1, timeout=120_000)
    assert page.inner_text("#table-title").startswith("webcam-") and page.problems == []
    page.click("#webcam-close")


def test_a_video_plays_its_frames_and_the_table_follows_the_frame(page, photos, tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for i in range(8):
        writer.write(cv2.imread(photos[i % len(photos)]))
    writer.release()
    upload(page, str(path))
    assert page.inner_text(".card.selected .caption").startswith("clip.avi, frame 0 at 0.00 s (1 of 4 shown)")
    page.eval_on_selector(".card.selected .player input",
                          "(e) => { e.value = 2; e.dispatchEvent(new Event('input')); }")
    assert page.inner_text("#table-title").startswith("clip.avi, frame 4: ")  # 4 of 8 frames: every other
    assert "frame 4 at 0.40 s (3 of 4 shown)" in page.inner_text(".card.selected .caption") and page.problems == []


def test_bad_uploads_are_a_line_on_the_page_and_the_next_one_works(page, photos, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"x" * (3 * 2 ** 20))
    for path, message in ((notes, "notes.txt: notes.txt is not an image OpenCV can decode"),
                          (big, "big.jpg: it is 3.0 MB: this page takes up to 2 MB")):
        page.set_input_files("#files", str(path))
        expect(page.locator("#error")).to_be_visible(timeout=120_000)
        text = page.inner_text("#error")
        assert text.startswith(message) and "Traceback" not in page.content(), text
        upload(page, photos[0])  # the server goes on, and the error line goes away
        assert page.locator("#error").is_hidden()
    assert [p for p in page.problems if RESOURCE_ERROR not in p] == []  # the 400 itself is logged by Chromium


def test_choosing_another_model_detects_again_with_it(page, photos):
    upload(page, photos[0])
    first = table(page)
    page.select_option("#model", "other.pth")
    expect(page.locator("#status")).to_contain_text("by other.pth", timeout=120_000)
    assert page.inner_text("#model-line").startswith("other.pth: ssdlite on PyTorch")
    assert table(page) != first and len(page.calls) == 2 and page.problems == []


def test_a_page_whose_first_model_fails_says_so_and_works_once_another_is_chosen(browser, models, photos, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "broken.pth").write_bytes((models / "lite.pth").read_bytes()[:5000])
    shutil.copy(models / "lite.pth", folder / "lite.pth")
    with serving(folder, "broken.pth") as url:
        page = browser.new_page()
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url)
        expect(page.locator("#error")).to_contain_text("broken.pth is not a readable checkpoint (truncated")
        page.set_input_files("#files", photos[0])
        expect(page.locator("#error")).to_contain_text("000001.jpg: no model is loaded: choose one in the list")
        page.select_option("#model", "lite.pth")
        expect(page.locator("#status")).to_contain_text("Ready: lite.pth")
        upload(page, photos[0])
        assert page.locator("#error").is_hidden() and problems == []
        page.close()


def test_the_evaluation_report_opens_with_every_picture_and_no_console_error(browser, toy_root, tmp_path):
    from test_report import report_once

    from src.data.dataset import CocoDetection
    ann, images = coco_paths(toy_root, "val")
    dataset = CocoDetection(images, ann)
    annotated = sorted({a["image_id"] for a in dataset.coco.dataset["annotations"]})
    folder = tmp_path / "report"
    folder.mkdir()
    report_once(dataset, folder, set(annotated[:2]))
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto((folder / "index.html").as_uri())
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
    assert len(images) == 3 + 2 and all(done and width > 0 for done, width in images)  # 3 figures, 2 failures
    assert page.inner_text("h1") == "Evaluation report" and problems == []
    page.close()
