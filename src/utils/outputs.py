"""Where a command may write, checked before any work starts, so that nothing a user owns is lost.

An output file may land only where no file is, or on a file this project wrote that nobody
changed since. What we write is recorded in a small manifest in each output folder,
``.ssd-outputs.json`` (file name -> size and modification time). An output is never a file or
folder the same command reads: paths are compared by (device, inode), so symlinks and hard
links are caught, not only equal strings. Every output folder is created and tried for
writing at the start, so an unwritable place is found before an hour of work, not after.

A training save folder is also held by one run at a time (:class:`FolderLock`).
"""
import contextlib
import datetime
import json
import os
import shutil
import socket
import tempfile
import time

from src.utils.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the checks still run
    fcntl = None

MANIFEST = ".ssd-outputs.json"
LOCK_FILE = ".train.lock"


def identity(path: str):
    """``(device, inode)`` of what ``path`` names (symlinks followed), or None if nothing."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def _locked(folder: str):
    """An exclusive lock on ``folder`` (flock on the directory) while its manifest changes."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_manifest(folder: str) -> dict:
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            files = json.load(f).get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _update_manifest(folder: str, entries: dict):
    """Merge ``entries`` (name -> record) into the manifest of ``folder``, atomically."""
    with _locked(folder):
        files = {**_read_manifest(folder), **entries}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=MANIFEST + ".", suffix=".tmp")
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "w") as f:
            json.dump({"written_by": "SSD-pytorch (this repository); files it may replace", "files": files}, f,
                      indent=0)
        os.replace(tmp, os.path.join(folder, MANIFEST))


def default_mode() -> int:
    """The permissions a new file gets under this process's umask (mkstemp makes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _stamp(path: str) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _location(path: str) -> str:
    """Where an output's name lives: its folder resolved as the kernel will once the missing
    folders are made (``new/../photo.jpg`` is ``photo.jpg``; a link followed before its ``..``),
    the name itself not (a link we made is recorded as the link, in our folder, not as what it
    points to)."""
    return os.path.join(os.path.realpath(os.path.dirname(path) or "."), os.path.basename(path))


def _folders_to_make(path: str) -> list[str]:
    """The real paths of the folders ``os.makedirs(path)`` would make, outermost first (a
    ``missing/..`` step makes ``missing`` and comes back: only ``missing`` is new)."""
    parts = os.path.join(os.getcwd(), path).split(os.sep)  # as given: no '..' folded away
    made = []
    for i in range(2, len(parts) + 1):
        real = os.path.realpath(os.sep.join(parts[:i]))
        if not os.path.exists(real) and real not in made:
            made.append(real)
    return made


def written_by_us(path: str) -> bool:
    """Whether the file at ``path`` is one this project wrote (or set out to write) and that
    is unchanged since; False for a missing file."""
    real = _location(path)
    entry = _read_manifest(os.path.dirname(real)).get(os.path.basename(real))
    if not isinstance(entry, dict) or not os.path.isfile(real):
        return False
    if entry.get("pending"):  # set out to write: ours if written since (a killed run's half-written file)
        return os.stat(real).st_mtime_ns >= entry.get("since_ns", 0)
    return entry == _stamp(real)


def holds_our_outputs(folder: str) -> bool:
    """Whether ``folder`` is one this project made: it holds our manifest, a training lock or
    TensorBoard logs, or nothing at all (so that a save or log folder made inside a dataset root
    is not taken for a dataset folder on the next run)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return not names or any(n in (MANIFEST, LOCK_FILE) or n.startswith("events.out.tfevents.") for n in names)


@contextlib.contextmanager
def folder_kept_only_if_used(folder: str):
    """Make ``folder`` (and its missing parents) for the body of the ``with``; if the body fails,
    remove again those of them it made that are still empty (a failed download leaves none)."""
    made, path = [], os.path.abspath(folder)
    while not os.path.exists(path):
        made.append(path)
        path = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in made:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty
        raise


class OutputGuard:
    """The output checks of one command.

    :param inputs: every file and folder the command reads (images, annotation files,
        checkpoints, videos, dataset folders); those that do not exist are ignored
    """

    def __init__(self, inputs=()):
        self.inputs = {}
        self.add_inputs(inputs)
        self._writable = set()
        self._claimed = {}  # real path -> the path as given, over every call of files()
        self._to_make = []  # folders checked writable, made by claim()
        self.created = []  # the top folders that claim() made

    def remove_empty_created(self):
        """Remove the folders :meth:`claim` made that hold no file but a training lock: what a
        command that failed before writing anything would otherwise leave behind."""
        for top in reversed(self.created):
            if os.path.isdir(top) and all(f == LOCK_FILE for _, _, files in os.walk(top) for f in files):
                shutil.rmtree(top, ignore_errors=True)

    def add_inputs(self, paths):
        """More files or folders the command reads (known only once an annotation file is read);
        None (a flag not given) is skipped."""
        for path in paths:
            key = identity(path) if path else None
            if key is not None:
                self.inputs.setdefault(key, path)

    def folder(self, path: str, what: str = "output folder") -> str:
        """``path`` can be written in (made by :meth:`claim` if missing); it must not be a folder the
        command reads."""
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{what} {path} is a file, not a folder")
        source = self.inputs.get(identity(os.path.realpath(path)))
        if source is not None:
            same = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({source})"
            raise UserError(f"{what} {path} is a folder this command reads{same}: choose another folder")
        self._try_writing(path, what)
        return path

    def _try_writing(self, path, what):
        """``path`` is a folder that is, or can be made, writable; a missing one is made by
        :meth:`claim`, so that checks write nothing."""
        real = os.path.realpath(path)
        if real in self._writable:
            return
        existing = real
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UserError(f"{what} {path}: {existing} is a file, not a folder")
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as e:
            where = "" if existing == real else f" (its nearest existing folder is {existing})"
            raise UserError(f"cannot write in {what} {path}{where}: {e.strerror or e}") from None
        self._writable.add(real)
        if not os.path.isdir(path):
            self._to_make.append(path)

    def files(self, paths: list[str], what: str = "output") -> list[str]:
        """Check output files before the work: none is a folder, an input, a file we did not
        write, or the same file as another output; their folders are writable."""
        claimed = {}
        for path in paths:
            self._check_one(path, what)
            real = _location(path)
            if real in claimed or real in self._claimed:
                raise UserError(f"{what} {path}: another output of this command goes there too")
            claimed[real] = path
        self._claimed.update(claimed)
        return paths

    def claim(self):
        """Once every check has passed, just before the work: make the missing folders, and mark
        the checked files as being written, so that one a killed run left half-written is still
        ours to replace."""
        for folder in self._to_make:
            new = _folders_to_make(folder)
            self.created += [f for f in new if os.path.dirname(f) not in new]  # the outermost ones
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise UserError(f"cannot make the folder {folder} ({e.strerror or e})") from None
        self._to_make = []
        since = time.time_ns() - 2_000_000_000  # file times are coarser than the clock
        by_folder = {}
        for real in self._claimed:
            by_folder.setdefault(os.path.dirname(real), {})[os.path.basename(real)] = {"pending": True,
                                                                                      "since_ns": since}
        for folder, entries in by_folder.items():
            _update_manifest(folder, entries)

    def file(self, path: str, what: str = "output") -> str:
        """:meth:`files` for one file."""
        return self.files([path], what)[0]

    def _check_one(self, path, what):
        if os.path.basename(path) == MANIFEST:
            raise UserError(f"{what} {path}: {MANIFEST} is this project's record of what it wrote")
        where = _location(path)  # what the kernel will open, once the missing folders are made
        if os.path.isdir(where):
            raise UserError(f"{what} {path} is a folder: give a file name")
        source = self.inputs.get(identity(where))
        if source is not None:
            same = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({source})"
            raise UserError(f"{what} {path} is an input of this command{same}: it would be overwritten")
        if os.path.lexists(where) and not written_by_us(path):
            raise UserError(f"{what} {path} exists and was not written by this project (or was changed "
                            "since): move it away or choose another name")
        self._try_writing(os.path.dirname(path) or ".", f"the folder of {what}")

    @staticmethod
    def record(paths: list[str]):
        """After writing: remember size and time of each file, so a later run may replace it."""
        by_folder = {}
        for path in filter(None, paths):
            real = _location(path)
            if os.path.isfile(real):
                by_folder.setdefault(os.path.dirname(real), {})[os.path.basename(real)] = _stamp(real)
        for folder, entries in by_folder.items():
            _update_manifest(folder, entries)


def not_our_outputs(paths: list[str]) -> list[str]:
    """``paths`` without the files this project wrote: a glob run again does not take its own
    earlier outputs for new inputs."""
    return [p for p in paths if not written_by_us(p)]


class FolderLock:
    """One training run at a time in a save folder.

    A POSIX record lock on ``<folder>/.train.lock``: the kernel releases it when the process
    ends, however it ends, so a SIGKILLed run never leaves it stuck. The file holds the
    holder's pid, host and start time; a file left non-empty by a run that did not release
    it cleanly is taken over, and :attr:`taken_over` says from whom.
    """

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_FILE)
        self.fd = None
        self.taken_over = None

    def acquire(self) -> "FolderLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot create the lock {self.path} ({e.strerror})") from None
        holder = os.read(fd, 4096).decode(errors="replace").strip()
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                folder = os.path.dirname(self.path)
                raise UserError(f"{folder} is in use by another training run ({holder or 'unknown'}): wait for it "
                                "to end, or choose another --save-folder") from None
        self.taken_over = holder or None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}".encode(), 0)
        self.fd = fd
        return self

    def __enter__(self) -> "FolderLock":
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc):
        self.release()

    def release(self):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # empty: released cleanly
            os.close(self.fd)  # closing drops the lock
            self.fd = None
