"""app.py's server run in this process on a free port, and calls to it as the page makes them
(shared by test_app.py and test_browser.py)."""
import contextlib
import json
import os
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request

from test_bad_input import load_script, training_checkpoint

from src.web.catalogue import Catalogue
from src.web.server import PageServer, PageSettings
from src.web.worker import ModelWorker


def two_models(folder, first=None):
    """``lite.pth`` (a copy of ``first``, else an untrained SSDLite on the toy categories) and
    ``other.pth`` (other weights, the same categories) in ``folder``."""
    import torch

    from src.models.ssd import build_model
    if first:
        shutil.copy(first, folder / "lite.pth")
    else:
        training_checkpoint(folder / "lite.pth")
    torch.manual_seed(1)
    torch.save({"model": build_model("ssdlite", 5).state_dict(), "category_ids": [2, 5, 9, 14],
                "category_names": ["circle", "square", "triangle", "cross"]}, folder / "other.pth")
    return folder


def val_photos(toy_root) -> list[str]:
    """The toy set's val photos."""
    val = os.path.join(toy_root, "val2017")
    return [os.path.join(val, name) for name in sorted(os.listdir(val))]


@contextlib.contextmanager
def serving(folder, default, argv=(), queue=8, load=None, **settings):
    """``with serving(folder, "lite.pth") as url:`` app.py's server of the models in ``folder``,
    with app.py's flags ``argv`` (its model loader, unless ``load`` is given)."""
    app = load_script("app.py")
    args = app.get_args_parser().parse_args(["--checkpoints", str(folder), *argv])
    catalogue = Catalogue(str(folder))
    worker = ModelWorker(load or app.loader(args, catalogue), queue)
    server = PageServer(("127.0.0.1", 0), catalogue, worker, PageSettings(**settings), default,
                        log_requests=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        worker.close()


def call(url, path, data=None, headers=None, page=True):
    """(status, answer) of ``path``: the JSON of an API call, else the bytes. ``page``: with the
    header the page sends."""
    headers = {**({"X-Requested-With": "ssd-page"} if page else {}), **(headers or {})}
    request = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data is not None
                                     else "GET")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            status, body, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, body, kind = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body


def detect(url, data: bytes, file: str, model="lite.pth", kind="application/octet-stream"):
    query = urllib.parse.urlencode({"model": model, "file": file})
    return call(url, f"/api/detect?{query}", data, {"Content-Type": kind})
