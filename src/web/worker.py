"""One model in memory, one thread that runs it: every request's model work waits its turn in a
queue of bounded length, so that concurrent requests neither load a model twice nor compete for
the cores (or the GPU) mid-forward."""
import threading
from concurrent.futures import ThreadPoolExecutor

from src.utils.errors import UserError


class Busy(UserError):
    """The queue is full: the page says so, and the request can be sent again."""


class ModelWorker:
    """Runs ``job(detector)`` for each request on its one thread, with the model ``name`` loaded.

    :param load: ``load(name) -> detector``; called on the worker's thread when a request asks for
        a model other than the one in memory (which is dropped first: one model at a time)
    :param queue_size: requests waiting or running at most; one more gets :class:`Busy`
    """

    def __init__(self, load, queue_size: int = 8):
        self._load = load
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._slots = threading.BoundedSemaphore(queue_size)
        self.name, self.detector = None, None

    def run(self, name: str, job):
        """``job(detector)`` run on the worker once the requests before it are done; its result
        (or its exception) is this call's."""
        if not self._slots.acquire(blocking=False):
            raise Busy("the server is busy with other requests: try again in a moment")
        try:
            return self._pool.submit(self._run, name, job).result()
        finally:
            self._slots.release()

    def _run(self, name, job):
        if name != self.name:
            self.name, self.detector = None, None  # the old model leaves memory before the new one loads
            self.detector = self._load(name)
            self.name = name
        return job(self.detector)

    def close(self):
        self._pool.shutdown(wait=False, cancel_futures=True)
