"""app.py's server without a browser: what it serves, what it answers for a photo and a video (the
detections of test_image.py), what it refuses and that it goes on serving, what may reach the
file system, and that concurrent requests each get their own answer."""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

import cv2
import numpy as np
import pytest
import torch
from app_server import call, detect, serving, two_models, val_photos
from PIL import Image
from test_bad_input import ROOT, run_script

from src.inference.detections import Detections
from src.web.worker import Busy, ModelWorker

THRESHOLD = 0.27  # the untrained SSDLite scores its boxes from 0.25 to 0.30: this keeps some


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A checkpoint folder: two SSDLites of other weights, beside what is no model."""
    folder = two_models(tmp_path_factory.mktemp("models"))
    (folder / "notes.txt").write_text("not a model")
    (folder / ".hidden.pth").write_bytes((folder / "lite.pth").read_bytes())
    (folder / "sub.pth").mkdir()
    return folder


@pytest.fixture(scope="module")
def url(models):
    with serving(models, "lite.pth", threshold=THRESHOLD, max_upload_mb=2, max_video_frames=4) as url:
        yield url


@pytest.fixture(scope="module")
def photos(toy_root):
    return val_photos(toy_root)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_the_page_its_files_and_the_models_of_the_folder_are_served_and_nothing_else(url):
    status, page = call(url, "/")
    assert status == 200 and b"<title>SSD detector</title>" in page
    assert call(url, "/app.js")[0] == 200 and call(url, "/style.css")[0] == 200
    for path in ("/index.html", "/static/app.js", "/../server.py", "/%2e%2e/app.py", "/etc/passwd", "/favicon.ico"):
        status, answer = call(url, path)
        assert status == 404 and answer["error"].startswith("nothing at"), path
    status, listing = call(url, "/api/models")
    assert listing["models"] == ["lite.pth", "other.pth"] and listing["current"] == "lite.pth"
    assert listing["settings"]["threshold"] == THRESHOLD


def ranked(detections):
    """By score, then box: boxes of equal scores (an untrained model has many) in one order."""
    return sorted(detections, key=lambda d: (-d["score"], d["box"], d["label"]))


def above(answer, threshold=THRESHOLD):
    """The detections of an answer the page shows at ``threshold``."""
    return [d for d, s in zip(answer["detections"], answer["scores"]) if s > threshold]


def test_a_photo_gets_the_detections_test_image_writes(url, photos, tmp_path, monkeypatch, capsys, models):
    out = tmp_path / "d.json"
    code = run_script("test_image.py", ["--pretrained-model", str(models / "lite.pth"), "--input", photos[0],
                                        "--output", str(tmp_path / "p.jpg"), "--json", str(out),
                                        "--cls-threshold", str(THRESHOLD)], monkeypatch)
    assert code == 0, capsys.readouterr().err
    expected = json.loads(out.read_text())[0]["detections"]
    status, answer = detect(url, read(photos[0]), "photo.jpg", kind="image/jpeg")
    assert status == 200 and answer["kind"] == "photo" and (answer["width"], answer["height"]) == (320, 240)
    shown = above(answer)
    assert 0 < len(shown) < len(answer["detections"]) and ranked(shown) == ranked(expected)
    assert answer["model"] == "lite.pth" and answer["score_floor"] == 0.05
    assert [c["name"] for c in answer["categories"]] == ["circle", "square", "triangle", "cross"]


def test_the_chosen_model_answers(url, photos):
    _, lite = detect(url, read(photos[0]), "a.jpg")
    status, info = call(url, "/api/model?name=other.pth", b"")
    assert status == 200 and info["model"] == "other.pth" and info["describe"] == "ssdlite on PyTorch (cpu)"
    _, other = detect(url, read(photos[0]), "a.jpg", model="other.pth")
    assert other["model"] == "other.pth" and other["detections"] != lite["detections"]
    _, again = detect(url, read(photos[0]), "a.jpg")  # back to the first: its own answer again
    assert again["detections"] == lite["detections"]


@pytest.mark.parametrize("name", ["../lite.pth", "/etc/passwd", "{folder}/lite.pth", "lite.pth/../lite.pth",
                                  "./lite.pth", ".hidden.pth", "sub.pth", "notes.txt", ""])
def test_no_name_from_the_browser_reaches_the_file_system(url, models, photos, name):
    name = name.format(folder=models)
    for status, answer in (call(url, "/api/model?name=" + name.replace("/", "%2F"), b""),
                           detect(url, read(photos[0]), "a.jpg", model=name)):
        assert status == 404 and answer["error"] == f"no model named {name!r} in the checkpoint folder"


def png_header(width, height) -> bytes:
    """A PNG that says it is ``width`` x ``height``, as a huge photo's header does (its pixels
    are never decoded, so none are needed)."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def empty_video(path) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    writer.release()
    return path.read_bytes() if path.exists() else b""


def bad_uploads(photos, tmp_path):
    jpeg = read(photos[0])
    return [
        (b"hello, not an image", "notes.txt", "text/plain", 400, "notes.txt is not an image OpenCV can decode"),
        (jpeg[:3000], "cut.jpg", "image/jpeg", 400, "cut.jpg is truncated"),
        (jpeg[::-1], "garbage.jpg", "image/jpeg", 400, "garbage.jpg is not an image"),
        (png_header(20000, 20000), "huge.png", "image/png", 400,
         r"huge.png is (20000x20000 pixels|over \d+ megapixels): this page takes up to 100 megapixels"),
        (png_header(12000, 9000), "large.png", "image/png", 400,
         r"large.png is 12000x9000 pixels: this page takes up to 100 megapixels"),
        (empty_video(tmp_path / "empty.avi"), "empty.avi", "video/x-msvideo", 400, "empty.avi has no frame"),
        (b"not a video at all", "clip.mp4", "video/mp4", 400, r"clip.mp4 (is not a video|has no frame)"),
        (b"x" * (3 * 2 ** 20), "big.jpg", "image/jpeg", 413, r"the upload is 3.0 MB: this page takes up to 2 MB"),
    ]


def test_bad_uploads_get_one_line_and_the_server_goes_on(url, photos, tmp_path):
    import re
    for data, name, kind, status, message in bad_uploads(photos, tmp_path):
        got, answer = detect(url, data, name, kind=kind)
        assert got == status and re.search(message, answer["error"]), (name, answer)
        assert "\n" not in answer["error"] and "Traceback" not in answer["error"]
        ok, good = detect(url, read(photos[1]), "good.jpg")
        assert ok == 200 and good["kind"] == "photo", name


def test_calls_not_made_by_the_page_are_refused(url, photos):
    status, answer = call(url, "/api/detect?model=lite.pth&file=a.jpg", read(photos[0]), page=False)
    assert status == 403 and answer["error"] == "this call is made by the page only"
    status, answer = call(url, "/api/models", headers={"Host": "attacker.example:8000"})  # DNS rebinding
    assert status == 421 and "answers on 127.0.0.1" in answer["error"]


def test_four_requests_at_once_each_get_their_own_answer(url, photos):
    expected = [detect(url, read(p), os.path.basename(p))[1] for p in photos[:4]]
    answers = [None] * 4

    def send(i):
        answers[i] = detect(url, read(photos[i]), os.path.basename(photos[i]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [a[0] for a in answers] == [200] * 4
    assert [a[1] for a in answers] == expected


def clip(path, frames) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for f in frames:
        writer.write(f)
    writer.release()
    return path.read_bytes()


def test_a_video_gets_its_frames_evenly_spread_each_with_the_detections_of_that_frame(
        url, photos, models, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the upload goes for OpenCV
    (tmp_path / "tmp").mkdir()
    frames = [cv2.imread(photos[i % len(photos)]) for i in range(10)]
    data = clip(tmp_path / "clip.avi", frames)
    status, answer = detect(url, data, "clip.avi", kind="video/x-msvideo")
    assert status == 200 and answer["kind"] == "video"
    assert [f["frame"] for f in answer["frames"]] == [0, 3, 6, 9]  # --max-video-frames 4 of 10: every third
    assert answer["step"] == pytest.approx(0.3) and answer["frames"][3]["time"] == pytest.approx(0.9)
    cap = cv2.VideoCapture(str(tmp_path / "clip.avi"))
    decoded = [cap.read()[1] for _ in range(10)]
    for frame, i in zip(answer["frames"], (0, 3, 6, 9)):
        _, photo = detect(url, cv2.imencode(".png", decoded[i])[1].tobytes(), "f.png")
        # above the threshold: the untrained model's ties at the 200th box fall either way
        assert ranked(above(frame)) == ranked(above(photo)) and len(above(frame)) > 0
        assert frame["image"].startswith("data:image/jpeg;base64,")
    assert os.listdir(tmp_path / "tmp") == []  # nothing uploaded is kept


def test_a_model_that_cannot_load_is_a_message_and_the_others_still_serve(models, photos, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(models / "lite.pth", folder / "lite.pth")
    (folder / "broken.pth").write_bytes(read(models / "lite.pth")[:5000])
    with serving(folder, "lite.pth") as url:
        status, answer = call(url, "/api/model?name=broken.pth", b"")
        assert status == 400 and answer["error"].startswith("broken.pth ") and "\n" not in answer["error"]
        assert str(folder) not in answer["error"]  # the page never sees the server's paths
        status, answer = detect(url, read(photos[0]), "a.jpg")
        assert status == 200 and answer["model"] == "lite.pth"


class Flaky:
    """A detector whose first call fails as a bug of ours would (and that finds nothing after)."""
    category_names, describe, input_size, cls_threshold, nms_threshold, max_output = ["x"], "flaky", 300, 0.05, 0.5, 9

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        if self.calls == 1:
            raise ZeroDivisionError("a bug")
        return [Detections(np.zeros((0, 4)), np.zeros(0, int), np.zeros(0), []) for _ in images]


def test_a_failure_of_ours_is_one_line_on_the_page_its_traceback_on_the_console_and_the_server_goes_on(
        models, photos, capsys):
    flaky = Flaky()
    with serving(models, "lite.pth", load=lambda name: flaky) as url:
        status, answer = detect(url, read(photos[0]), "a.jpg")
        assert status == 500 and answer == {"error": "the server failed on this request (its console says why)"}
        status, answer = detect(url, read(photos[0]), "a.jpg")
        assert status == 200 and answer["detections"] == []
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err


def test_a_full_queue_asks_to_try_again_and_takes_requests_once_free():
    started, release = threading.Event(), threading.Event()
    worker = ModelWorker(lambda name: name, queue_size=1)
    first = threading.Thread(target=worker.run, args=("m", lambda d: (started.set(), release.wait(60))))
    first.start()
    assert started.wait(60)
    with pytest.raises(Busy):
        worker.run("m", lambda d: d)
    release.set()
    first.join(60)
    assert worker.run("m", lambda d: d + "!") == "m!"
    worker.close()


def test_exif_orientation_is_applied_as_test_image_does(url, photos):
    """A phone photo stored sideways: the page's boxes are on the upright picture."""
    image = Image.open(photos[0])
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    image.save(buffer, "JPEG", exif=exif)
    status, answer = detect(url, buffer.getvalue(), "phone.jpg")
    assert status == 200 and (answer["width"], answer["height"]) == (240, 320)


@pytest.mark.slow
def test_the_script_starts_says_where_and_refuses_a_port_in_use(models):
    """Started in a process of its own: it prints its address (on every network only when asked,
    and then says so); a second one on the same port is one line and exit status 1."""
    def start(*flags):
        return subprocess.Popen([sys.executable, "app.py", "--checkpoints", str(models), *flags], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        busy = subprocess.run([sys.executable, "app.py", "--checkpoints", str(models), "--port", str(port)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert busy.returncode == 1 and busy.stderr.strip() == (
        f"app.py: error: port {port} on 127.0.0.1 is in use: stop what serves there, or choose another with --port")
    server = start("--port", "0", "--host", "0.0.0.0")
    try:
        lines = [server.stdout.readline() for _ in range(3)]  # waits for each line: no fixed sleep
        assert lines[0].strip() == "loading lite.pth" and lines[2].startswith("serving at http://127.0.0.1:")
        assert server.stderr.readline().startswith("note: listening on 0.0.0.0: other machines")
        port = int(lines[2].split(":")[2].split("/")[0])
        status, listing = call(f"http://127.0.0.1:{port}", "/api/models")
        assert status == 200 and listing["models"] == ["lite.pth", "other.pth"]
    finally:
        server.terminate()
        server.wait(60)


def test_a_photo_is_read_in_memory_and_written_nowhere(url, photos, tmp_path, monkeypatch):
    """A photo is decoded in memory: the temporary folder stays empty while it is detected."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    status, _ = detect(url, read(photos[0]), "a.jpg")
    assert status == 200 and os.listdir(tmp_path) == []


@pytest.mark.slow
def test_the_three_checkpoint_forms_and_an_exported_model_of_a_folder_each_answer(
        models, photos, kit_state_dict, tmp_path):
    """The original's form, NVIDIA's (saved from DDP), ours, and ours exported with NMS (.onnx, on
    OpenVINO, as --backend asks, while the checkpoints run on PyTorch): listed, loaded by name, and
    detecting; the exported one as its checkpoint does."""
    from test_runtime import export_in_process
    folder = tmp_path / "forms"
    folder.mkdir()
    state = kit_state_dict("ssdlite")
    torch.save({"epoch": 53, "model_state_dict": state, "optimizer": {}, "scheduler": {}}, folder / "SSD.pth")
    torch.save({"epoch": 64, "model": {"module." + k: v for k, v in state.items()}}, folder / "nvidia.pt")
    shutil.copy(models / "lite.pth", folder / "lite.pth")
    export_in_process(folder / "lite.pth", folder / "lite.onnx")
    with serving(folder, "lite.pth", argv=["--backend", "openvino"]) as url:  # for the exported one only
        assert call(url, "/api/models")[1]["models"] == ["SSD.pth", "lite.onnx", "lite.pth", "nvidia.pt"]
        answers = {}
        for name, describe in (("SSD.pth", "ssdlite on PyTorch"), ("nvidia.pt", "ssdlite on PyTorch"),
                               ("lite.onnx", "ssdlite exported (fp32) on openvino"),
                               ("lite.pth", "ssdlite on PyTorch")):
            status, info = call(url, f"/api/model?name={name}", b"")
            assert status == 200 and info["describe"].startswith(describe), info
            status, answers[name] = detect(url, read(photos[0]), "a.jpg", model=name)
            assert status == 200 and answers[name]["model"] == name
        assert len(answers["SSD.pth"]["categories"]) == 80  # COCO's, for a checkpoint without names
        onnx, torch_ = above(answers["lite.onnx"]), above(answers["lite.pth"])
        assert len(onnx) == len(torch_) > 0
        for a, b in zip(ranked(onnx), ranked(torch_)):
            assert a["name"] == b["name"] and abs(a["score"] - b["score"]) < 2e-3


def test_a_header_too_large_for_pillow_is_refused_under_its_limit_and_measured_once_decoded_over_it():
    from src.web.uploads import UploadError, check_photo
    with pytest.raises(UploadError, match=r"x.png is over 179 megapixels: this page takes up to 100 megapixels"):
        check_photo(png_header(20000, 20000), "x.png", 100)
    check_photo(png_header(20000, 20000), "x.png", 500)  # allowed: read_photo measures the decoded image


def test_odd_requests_get_a_json_line_not_a_traceback(url, models, tmp_path):
    import http.client
    port = int(url.rsplit(":", 1)[1])
    for method, headers, status in (("OPTIONS", {}, 405), ("PUT", {}, 405),
                                    ("POST", {"Content-Length": "\u00b2", "X-Requested-With": "ssd-page"}, 411)):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.putrequest(method, "/api/detect?model=lite.pth&file=a.jpg")
        for k, v in headers.items():
            connection.putheader(k, v.encode("latin-1"))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == status and "error" in json.loads(response.read()), method
        connection.close()
    assert call(url, "/")[0] == 200


def test_the_page_starts_with_the_first_model_that_loads(models, tmp_path, capsys):
    from test_bad_input import load_script
    app = load_script("app.py")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "aaa.onnx").write_text("not a model")
    (folder / "aaa.pth").write_bytes(read(models / "lite.pth")[:5000])
    shutil.copy(models / "lite.pth", folder / "lite.pth")
    args = app.get_args_parser().parse_args(["--checkpoints", str(folder)])
    catalogue, candidates = app.catalogue_of(args)
    assert candidates == ["aaa.pth", "lite.pth", "aaa.onnx"]  # checkpoints first
    worker = ModelWorker(app.loader(args, catalogue))
    assert app.first_that_loads(worker, candidates) == ("lite.pth", "ssdlite on PyTorch (cpu)")
    assert "note: skipped aaa.pth: aaa.pth is not a readable checkpoint (truncated" in capsys.readouterr().err
    worker.close()


def test_a_checkpoint_folder_gone_while_serving_is_a_message(models, photos, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(models / "lite.pth", folder / "lite.pth")
    with serving(folder, "lite.pth") as url:
        shutil.rmtree(folder)
        status, answer = call(url, "/api/models")
        assert status == 400 and answer["error"].startswith("cannot list the checkpoint folder")
