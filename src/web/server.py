"""The HTTP server of the page: three static files and three JSON calls, on the standard library.

    GET  /                         the page (and /app.js, /style.css)
    GET  /api/models               the folder's models, the one in use, the page's limits
    POST /api/model?name=NAME      load NAME (a file name from /api/models): its description
    POST /api/detect?model=NAME    the body is a photo or a video: its detections

Nothing else is served: no path of a request reaches the file system. A refusal is a JSON
``{"error": "one line"}`` with a 4xx status; an unexpected failure is a 500 with one line (the
traceback goes to the server's console, never to the page); the server goes on serving.
"""
import json
import os
import socket
import sys
import time
import traceback
import urllib.parse
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from src.utils.errors import UserError
from src.web.catalogue import UnknownModel
from src.web.results import model_info, photo_result, video_result
from src.web.uploads import UploadError, check_photo, is_video, read_photo, video_frames
from src.web.worker import Busy

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "[::1]"}
# what the page may load: itself, and the pictures it makes from uploads (data: and blob: URLs)
CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@dataclass
class PageSettings:
    """The page's limits and defaults (app.py's flags)."""
    threshold: float = 0.3
    max_upload_mb: float = 50.0
    max_megapixels: float = 100.0
    max_video_frames: int = 150


class Refused(UserError):
    """A request refused with ``status``."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


def status_of(error: UserError) -> HTTPStatus:
    if isinstance(error, Refused):
        return error.status
    if isinstance(error, UnknownModel):
        return HTTPStatus.NOT_FOUND
    if isinstance(error, Busy):
        return HTTPStatus.SERVICE_UNAVAILABLE
    return HTTPStatus.BAD_REQUEST


class PageServer(ThreadingHTTPServer):
    """One thread per connection; the model work of all of them queued on ``worker``. Each call to
    the API, and each refusal, is one line on stderr (``log_requests``)."""
    daemon_threads = True

    def __init__(self, address, catalogue, worker, settings: PageSettings, default_model: str, log_requests=True):
        self.catalogue, self.worker, self.settings = catalogue, worker, settings
        self.default_model, self.log_requests = default_model, log_requests
        folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
        self.static = {}
        for route, (name, kind) in STATIC.items():
            with open(os.path.join(folder, name), "rb") as f:
                self.static[route] = (f.read(), kind)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)

    @property
    def loopback(self) -> bool:
        return self.server_address[0] == "::1" or self.server_address[0].startswith("127.")


class Handler(BaseHTTPRequestHandler):
    server_version = "ssd-app"
    timeout = 120  # seconds a client may take to send its request

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def do_HEAD(self):
        self._answer(self._get)

    def _other_method(self):
        self._answer(self._not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

    def _not_allowed(self, path, query):
        raise Refused(f"{self.command} is not answered here (GET and POST are)", HTTPStatus.METHOD_NOT_ALLOWED)

    def log_message(self, format, *args):  # the default logs every request to stderr
        pass

    # --- routing ---------------------------------------------------------------------------

    def _answer(self, route):
        started = time.perf_counter()
        try:
            self._check_host()
            path, query = self._target()
            status, body, kind = route(path, query)
        except UserError as e:
            status, body, kind = status_of(e), {"error": str(e)}, None
        except Exception:  # a bug: the console gets the traceback, the page one line, the server goes on
            traceback.print_exc(file=sys.stderr)
            status, body, kind = HTTPStatus.INTERNAL_SERVER_ERROR, {
                "error": "the server failed on this request (its console says why)"}, None
        self._send(status, body, kind)
        if self.server.log_requests and (self.command == "POST" or status >= 400):
            print(f"{self.command} {self.path.split('?')[0]} {int(status)} {time.perf_counter() - started:.2f} s",
                  file=sys.stderr, flush=True)

    def _check_host(self):
        """On the loopback address, only a page of this machine may call: a Host header naming
        another site (DNS rebinding) is refused."""
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if self.server.loopback and host not in LOOPBACK_NAMES:
            raise Refused(f"this server answers on {', '.join(sorted(LOOPBACK_NAMES))} only",
                          HTTPStatus.MISDIRECTED_REQUEST)

    def _target(self):
        url = urllib.parse.urlsplit(self.path)
        return url.path, dict(urllib.parse.parse_qsl(url.query))

    def _get(self, path, query):
        if path in self.server.static:
            body, kind = self.server.static[path]
            return HTTPStatus.OK, body, kind
        if path == "/api/models":
            server = self.server
            return HTTPStatus.OK, {"models": server.catalogue.names(), "current": server.worker.name or
                                   server.default_model, "settings": asdict(server.settings)}, None
        raise Refused(f"nothing at {path}", HTTPStatus.NOT_FOUND)

    def _post(self, path, query):
        if path not in ("/api/model", "/api/detect"):
            raise Refused(f"nothing at {path}", HTTPStatus.NOT_FOUND)
        if self.headers.get("X-Requested-With") != "ssd-page":  # a form of another site cannot send this
            raise Refused("this call is made by the page only", HTTPStatus.FORBIDDEN)
        name = query.get("model") or query.get("name") or ""
        self.server.catalogue.path_of(name)  # an unknown name is refused before anything is read
        if path == "/api/model":
            return HTTPStatus.OK, self.server.worker.run(name, lambda detector: model_info(name, detector)), None
        return HTTPStatus.OK, self._detect(name, query.get("file") or "upload"), None

    def _detect(self, model: str, filename: str) -> dict:
        settings = self.server.settings
        data = self._body(settings.max_upload_mb)
        filename = "".join(c for c in os.path.basename(filename) if c.isprintable())[:200] or "upload"
        kind = self.headers.get("Content-Type", "")
        if is_video(filename, kind):
            def job(detector):
                with video_frames(data, filename, settings.max_video_frames, settings.max_megapixels) as video:
                    return {**video_result(detector, *video, filename), **model_info(model, detector)}
            return self.server.worker.run(model, job)
        check_photo(data, filename, settings.max_megapixels)  # a refusal by the header waits for nobody

        def job(detector):  # decoded in the queue's turn: the queue bounds the memory of decoded photos too
            image = read_photo(data, filename, settings.max_megapixels)
            return {**photo_result(detector, image, filename), **model_info(model, detector)}
        return self.server.worker.run(model, job)

    def _body(self, max_mb: float) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            raise Refused("the upload has no length", HTTPStatus.LENGTH_REQUIRED)
        if int(length) > max_mb * 2 ** 20:
            self._drain(int(length), 16 * max_mb * 2 ** 20)
            raise Refused(f"the upload is {int(length) / 2 ** 20:.1f} MB: this page takes up to {max_mb:g} MB "
                          "(app.py --max-upload-mb)", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            data = self.rfile.read(int(length))
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            raise Refused(f"the upload stopped arriving (nothing for {self.timeout} s)") from None
        if len(data) != int(length):
            raise Refused("the upload was cut short")
        if not data:
            raise UploadError("the upload is empty")
        return data

    def _drain(self, length: int, most: float):
        """Read and drop an upload refused for its size, so that the client, still sending it,
        reads the answer (not a reset connection); one of over ``most`` bytes is cut off."""
        self.close_connection = True
        if length > most:
            return
        try:
            while length > 0 and (chunk := self.rfile.read(min(length, 2 ** 20))):
                length -= len(chunk)
        except (TimeoutError, ConnectionError):
            pass  # the answer is the refusal all the same

    def _send(self, status, body, kind):
        """``body``: bytes of type ``kind``, or a dict sent as JSON (``kind`` None)."""
        if kind is None:
            body, kind = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        try:
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the page was closed or reloaded meanwhile
            pass
