"""The models a page may choose: the model files of one folder, named by their file names.

A name from the browser is only ever looked up among the names of a fresh listing of that
folder; it is never joined to a path, so ``../x`` or ``/etc/passwd`` names nothing.
"""
import os

from src.utils.errors import UserError

MODEL_SUFFIXES = (".pth", ".pt", ".onnx")


class UnknownModel(UserError):
    """A name that is not one of the folder's models."""


class Catalogue:
    """The checkpoints (ours, the original's, NVIDIA's, torchvision's: ``.pth``/``.pt``) and the
    exported models (``.onnx``) in ``folder``, plus ``extra``: one model given by path (or a
    published name, such as ``nvidia``), listed by its file name.

    :raises UserError: the folder is missing, or holds no model (and no ``extra``)
    """

    def __init__(self, folder: str | None, extra: str | None = None):
        if folder is not None and not os.path.isdir(folder):
            raise UserError(f"--checkpoints {folder} is not a folder" if os.path.exists(folder) else
                            f"--checkpoints {folder} does not exist")
        self.folder = folder
        self.extra = {os.path.basename(extra): extra} if extra else {}
        if not self.paths():
            raise UserError(f"no checkpoint in {folder}: it holds no {', '.join(MODEL_SUFFIXES)} file "
                            "(give another folder with --checkpoints, or a file with --pretrained-model)")

    def paths(self) -> dict[str, str]:
        """Name -> path of every model, listed now (checkpoints saved since start are included)."""
        try:
            names = sorted(os.listdir(self.folder)) if self.folder else []
        except OSError as e:
            raise UserError(f"cannot list the checkpoint folder {self.folder}: {e.strerror}") from None
        found = {}
        for name in names:
            path = os.path.join(self.folder, name)
            if name.lower().endswith(MODEL_SUFFIXES) and not name.startswith(".") and os.path.isfile(path):
                found[name] = path
        return {**found, **self.extra}

    def names(self) -> list[str]:
        return list(self.paths())

    def path_of(self, name: str) -> str:
        """The file of the model called ``name``.

        :raises UnknownModel: no model of the folder has that name
        """
        path = self.paths().get(name)
        if path is None:
            shown = name if len(name) <= 100 else name[:100] + "..."
            raise UnknownModel(f"no model named {shown!r} in the checkpoint folder")
        return path
