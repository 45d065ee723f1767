"""What a checkpoint holds: the one place where checkpoints are written and read.

Four forms are read (every one with ``weights_only=True``: a file that carries pickled code is
refused before any of it runs):

- ours, written by train.py (:class:`TrainingCheckpoint`, every key listed there); inference
  and export read only its ``model``, ``category_ids`` and ``category_names``;
- the original repository's: ``{"epoch", "model_state_dict", "optimizer", "scheduler"}``;
- NVIDIA's SSD300 v1.1: ``{"model": state_dict, ...}``, keys possibly prefixed ``module.``;
- torchvision's detection weights: the bare state dict of ``ssd300_vgg16`` or
  ``ssdlite320_mobilenet_v3_large`` (as its weights API downloads them), whose 91-way COCO head
  takes COCO's category ids as labels (:func:`~src.data.categories.torchvision_coco_labels`).

The foreign forms carry no category list (see :func:`~src.data.categories.label_categories`) and the architecture is
read from the state dict's keys; :func:`load_model` turns any of the four into a model, and
:func:`resolve` turns a published name (:data:`~src.checkpoints.published.PUBLISHED`) into a checked file.
"""
import os
import pickle
import re
import sys
import tempfile
import zipfile
from dataclasses import MISSING, dataclass, field, fields

import torch

from src.checkpoints.published import PUBLISHED, fetch
from src.data.categories import DatasetCategories, label_categories, torchvision_coco_labels
from src.models.specs import get_spec
from src.models.ssd import build_model
from src.utils.distributed import is_main_process
from src.utils.errors import CheckpointError
from src.utils.outputs import default_mode

# keys of a parameter only one of the backbones has
_RESNET_KEY = "feature_extractor.feature_extractor.4.0.conv1.weight"
_MOBILENET_KEY = "feature_extractor.feature_extractor.1.conv.0.0.weight"
_SSD512_KEY = "loc.6.weight"  # SSD512's seventh map
_VGG_KEY = "backbone.scale_weight"  # the L2 normalisation of conv4_3
_MOBILENET_V3_KEY = "backbone.features.0.0.0.weight"
# the first class head's last conv of each model: its output channels are boxes x classes
_CLASS_HEAD_KEY = {"ssd": "conf.0.weight", "ssd512": "conf.0.weight", "ssdlite": "conf.0.3.weight",
                   "ssd300-vgg16": "head.classification_head.module_list.0.weight",
                   "ssdlite320-mnv3": "head.classification_head.module_list.0.1.weight"}
# SSDLite320's second map: 480 channels with the reduced tail (torchvision's COCO weights), 960 without
_MNV3_TAIL_KEY = "head.regression_head.module_list.1.0.0.weight"
# the original SSDLite built a 7th head pair it never used; ours has none
_UNUSED_SSDLITE_PREFIXES = ("loc.6.", "conf.6.")


@dataclass
class TrainingCheckpoint:
    """What train.py writes to ``<save-folder>/<model>.pth`` (and ``<model>_best.pth``), key by key.

    :param model: the model's state dict (no ``module.`` prefix)
    :param optimizer: the SGD state dict; ``lr_scheduler`` the schedule's; ``scaler`` the float16
        ``GradScaler``'s, None without one
    :param epoch: whole epochs done; ``iteration``: optimizer steps done
    :param model_name: one of :data:`~src.models.specs.MODEL_NAMES`; ``num_classes``: background + categories
    :param category_ids: the dataset's id of each label 1..K; ``category_names`` their names
    :param best_map: the best COCO AP so far; ``history``: one dict per finished epoch (its
        :class:`~src.training.loop.EpochStats` and COCO stats)
    :param progress: None at an epoch boundary; stopped mid-epoch, every rank's
        :class:`~src.training.loop.EpochTotals` as a dict (:mod:`src.training.resume`)
    :param rng: every rank's random states at a mid-epoch stop (rank 0's alone otherwise)
    :param args: train.py's flags, for the record
    :param global_batch: images per optimizer step over all processes: the schedule counts its
        iterations, so a run resumes only with the same (absent in files before 2026-12)
    """
    model: dict
    optimizer: dict
    lr_scheduler: dict
    scaler: dict | None
    epoch: int
    iteration: int
    model_name: str
    num_classes: int
    category_ids: list
    category_names: list
    best_map: float = 0.0
    history: list = field(default_factory=list)
    progress: list | None = None
    rng: list = field(default_factory=list)
    args: dict = field(default_factory=dict)
    global_batch: int | None = None

    def save(self, path: str):
        """Written atomically; refused (the file at ``path`` kept) when a weight is not finite."""
        for name, p in self.model.items():
            if p.is_floating_point() and not torch.isfinite(p).all():
                raise CheckpointError(f"weights became non-finite ({name}): not saving over {path}")
        save_atomic({f.name: getattr(self, f.name) for f in fields(self)}, path)

    @classmethod
    def read(cls, path: str, model_name: str, categories: tuple[list, list], data_path: str,
             global_batch: int | None = None) -> "TrainingCheckpoint":
        """The training checkpoint at ``path``, checked: ours, of this model, of these categories
        (``(ids, names)``, both the same) and, when ``global_batch`` is given, of that global batch."""
        ckpt = read_checkpoint(path)
        if "model_name" not in ckpt or "optimizer" not in ckpt:
            raise CheckpointError(f"{path} is not a training checkpoint of this project: move it away "
                                  "or choose another --save-folder")
        if ckpt["model_name"] != model_name:
            raise CheckpointError(f"{path} is a {ckpt['model_name']} checkpoint, not {model_name}: "
                                  f"use --model {ckpt['model_name']} or another --save-folder")
        if (list(ckpt.get("category_ids", [])), list(ckpt.get("category_names", []))) != tuple(map(list, categories)):
            raise CheckpointError(f"{path} was trained on {ckpt.get('num_classes', 1) - 1} other categories than "
                                  f"the {len(categories[0])} of {data_path} (ids or names differ): choose another "
                                  "--save-folder")
        saved_batch = ckpt.get("global_batch")
        if global_batch is not None and saved_batch is not None and saved_batch != global_batch:
            raise CheckpointError(f"{path} was trained {saved_batch} images a step (--batch-size x processes) and "
                                  f"this run takes {global_batch}: the schedule counts steps, so part of the "
                                  f"training would be skipped or repeated; resume with a global batch of "
                                  f"{saved_batch}, or choose another --save-folder to start afresh")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        absent = [k for k in required if k not in ckpt]
        if absent:
            raise CheckpointError(f"{path} lacks {', '.join(absent)}: not a whole training checkpoint; move it "
                                  "away or choose another --save-folder")
        return cls(**{k: v for k, v in ckpt.items() if k in names})


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """``torch.load`` with ``weights_only=True``, turning every failure into one clear line."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if path.lower().endswith(".onnx"):
        raise CheckpointError(f"{path} is an exported ONNX model, not a checkpoint: give the .pth it was exported "
                              "from (an exported model runs in test_image.py, test_video.py and test_dataset.py)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # a GLOBAL opcode: the file names code to import
            raise CheckpointError(f"checkpoint {path} carries pickled code or objects and was refused "
                                  "(only tensors and plain containers are loaded)") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (not a torch.save file)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError) as e:  # what the unpickler raises on text or random bytes
        raise CheckpointError(_unreadable(path, e)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def _unreadable(path: str, error: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip; older torch a pickle
        return f"{path} is not a checkpoint (not a file written by torch.save)"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{path} is not a readable checkpoint (truncated or corrupt: {first})"


def model_state_dict(ckpt: dict, path: str = "checkpoint") -> dict:
    """The model's state dict from any of the three forms, with ``module.`` prefixes removed."""
    if "model_state_dict" in ckpt:
        state = ckpt["model_state_dict"]
    elif "model" in ckpt:
        state = ckpt["model"]
    else:
        state = ckpt
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()) or not state:
        raise CheckpointError(f"{path} holds no model state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def infer_model_name(state: dict) -> str | None:
    """The model a state dict holds, from its keys: "ssd" or "ssd512" for a ResNet-50 backbone,
    "ssdlite" for MobileNetV2, "ssd300-vgg16" for VGG-16, "ssdlite320-mnv3" for MobileNetV3;
    None if none of them."""
    if _RESNET_KEY in state:
        return "ssd512" if _SSD512_KEY in state else "ssd"
    if _MOBILENET_KEY in state:
        return "ssdlite"
    if _VGG_KEY in state:
        return "ssd300-vgg16"
    if _MOBILENET_V3_KEY in state:
        return "ssdlite320-mnv3"
    return None


def has_reduced_tail(state: dict) -> bool | None:
    """Whether an SSDLite320 state dict has MobileNetV3's reduced tail (None for other models)."""
    return state[_MNV3_TAIL_KEY].shape[0] == 480 if _MNV3_TAIL_KEY in state else None


def build_for(state: dict, model_name: str, num_classes: int):
    """A model with the architecture of ``state``, ready for its weights."""
    return build_model(model_name, num_classes, reduced_tail=has_reduced_tail(state))


def infer_num_classes(state: dict, model_name: str) -> int:
    """Background plus categories, from the first class head's output channels."""
    key = _CLASS_HEAD_KEY[model_name]
    if key not in state:
        raise CheckpointError(f"the state dict has no {key} (not an {model_name} checkpoint?)")
    return state[key].shape[0] // get_spec(model_name).boxes_per_location[0]


def adapt_state_dict(state: dict, model_name: str) -> dict:
    """Drop what the original SSDLite carried but never used (``loc.6.*``, ``conf.6.*``)."""
    if model_name != "ssdlite":
        return state
    return {k: v for k, v in state.items() if not k.startswith(_UNUSED_SSDLITE_PREFIXES)}


def load_model_weights(model, state: dict, path: str = "checkpoint"):
    """``load_state_dict(strict=True)`` with mismatches reported in one line."""
    state = adapt_state_dict(state, model.spec.name)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                 f"{len(wrong)} of another shape (e.g. {wrong[0]})" if wrong else ""]
        raise CheckpointError(f"{path} does not fit {model.spec.name} with {model.num_classes} classes: "
                              + ", ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def architecture_of(state: dict, path: str, model_name: str | None = None) -> str:
    """The model's name, read from the keys; it must be ``model_name`` when one is given."""
    found = infer_model_name(state)
    if found is None:
        raise CheckpointError(f"{path} holds no weights of a model here (SSD300 or SSD512 on ResNet-50, SSDLite on "
                              "MobileNetV2, torchvision's SSD300-VGG16 or SSDLite320-MobileNetV3)")
    if model_name is not None and model_name != found:
        raise CheckpointError(f"{path} holds an {found} model, not {model_name}: use --model {found} (or leave "
                              "--model out where the script allows)")
    return found


def load_model(path: str, model_name: str | None = None, map_location="cpu",
               categories: DatasetCategories | None = None):
    """The one way to turn a checkpoint of any of the four forms into a model.

    :param path: a checkpoint file, or the name of published weights
        (:data:`~src.checkpoints.published.PUBLISHED`), fetched into the torch hub cache the first time
    :param model_name: when given, the checkpoint must hold this architecture
    :param categories: those of the dataset the model is used on, or None: the checkpoint's
        categories are matched to them by name, or for a checkpoint that names none, its labels
        read as them (:func:`~src.data.categories.label_categories`;
        a mismatch raises :class:`DatasetError`, remarks are printed once)
    The architecture comes from the keys and the class count from the class head.
    :return: ``(model in eval mode, category_ids, category_names)`` of labels 1..K: with
        ``categories``, the ids are the dataset's (None for a category it lacks); there may be
        fewer categories than the head has labels (decode with ``num_labels=len(category_ids)``)
    """
    path = resolve(path)
    ckpt = read_checkpoint(path, map_location)
    state = model_state_dict(ckpt, path)
    name = architecture_of(state, path, model_name)
    num_classes = infer_num_classes(state, name)
    model = build_for(state, name, num_classes)
    load_model_weights(model, state, path)
    stored = (ckpt["category_ids"], ckpt["category_names"]) if "category_names" in ckpt and "category_ids" in ckpt \
        else None
    if stored is None and model.spec.family == "torchvision" and num_classes == 91:
        ids, names, notes = torchvision_coco_labels(categories)
        _print_notes(notes)
        return model.eval(), ids, names
    if stored is not None and len(stored[1]) != num_classes - 1:
        raise CheckpointError(f"{path} has a {num_classes - 1}-class head, and {len(stored[1])} categories to "
                              "put on it")
    if stored is None and categories is not None and len(categories.ids) > num_classes - 1:
        raise CheckpointError(f"{path} has a {num_classes - 1}-class head, and {len(categories.ids)} categories to "
                              f"put on it (those of {categories.where})")
    ids, names, notes = label_categories(stored, num_classes, categories)
    _print_notes(notes)
    return model.eval(), ids, names


def _print_notes(notes: list[str]):
    if is_main_process():
        for line in notes:
            print(line, file=sys.stderr)


def checkpoint_state(path: str) -> dict:
    """The model state dict of a checkpoint of any form (a file or a published name)."""
    path = resolve(path)
    return model_state_dict(read_checkpoint(path), path)


def load_matching_weights(model, path: str, state: dict | None = None) -> list[str]:
    """Fine-tuning: from a checkpoint of any form (a file or a published name), copy every tensor
    whose name and shape match (backbone, extra layers, box heads); keep the fresh
    initialisation of the rest (class heads of another class count).

    :param state: its state dict when already read (:func:`checkpoint_state`), or None
    :return: the names of the model's tensors that were not loaded
    """
    path = resolve(path)
    if state is None:
        state = checkpoint_state(path)
    architecture_of(state, path, model.spec.name)
    state = adapt_state_dict(state, model.spec.name)
    own = model.state_dict()
    loadable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(loadable, strict=False)
    return [k for k in own if k not in loadable]


def save_atomic(obj: dict, path: str):
    """Write ``obj`` with ``torch.save`` to a temporary file beside ``path``, then rename it:
    a kill at any moment leaves either the old file or the new one, whole. A failed write
    (a full disk, say) raises :class:`CheckpointError` and leaves the old file as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + "."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
        os.fchmod(fd, default_mode())
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        os.remove(tmp)
        kept = " (the previous checkpoint is intact)" if os.path.exists(path) else ""
        raise CheckpointError(f"could not write {path}: {e.strerror or e}{kept}") from None
    except BaseException:
        os.remove(tmp)
        raise
    leftover = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}\.tmp")  # the names mkstemp gives
    for name in os.listdir(folder):  # temporaries left by a process killed while saving
        if leftover.fullmatch(name):
            os.remove(os.path.join(folder, name))


def resolve(name_or_path: str, url: str | None = None) -> str:
    """A checkpoint path: ``name_or_path`` itself, or for a published name ("nvidia", "original")
    its file in the torch hub cache, downloaded and checked the first time (a file that fails the
    check is removed). ``url`` overrides the source (tests use a file:// URL)."""
    if name_or_path not in PUBLISHED:
        return name_or_path
    path, downloaded = fetch(name_or_path, url)
    if downloaded:
        check_published(path, name_or_path)
    return path


def check_published(path: str, name: str = "nvidia"):
    """Every key and shape of a downloaded checkpoint (published as ``name``), before use; a bad
    file is removed."""
    model, num_classes = PUBLISHED[name]["model"], PUBLISHED[name]["num_classes"]
    try:
        state = adapt_state_dict(model_state_dict(read_checkpoint(path), path), model)
        expected = build_for(state, model, num_classes).state_dict() if infer_model_name(state) == model else {}
        if not expected or state.keys() != expected.keys() or any(
                state[k].shape != v.shape for k, v in expected.items()):
            raise CheckpointError(f"{path} is not {PUBLISHED[name]['what']} (a {num_classes}-class {model} checkpoint)")
    except CheckpointError:
        os.remove(path)
        raise
