"""An exported model (``export_onnx.py --with-nms``) run without PyTorch: ONNX Runtime or OpenVINO,
preprocessing in NumPy and PIL, the decoding (and its NMS) inside the graph.

Nothing here imports torch or torchvision: a deployed SSDLite starts in a fraction of a second.
The file carries what running it needs in its metadata (model name, input size, mean and std,
the decoding thresholds baked into the graph, category ids and names), written by
:func:`metadata` at export.
"""
import json
import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from src.inference.detections import Detections
from src.utils.errors import CheckpointError, UserError

BACKENDS = ("pytorch", "onnxruntime", "openvino")
EXPORTED_SUFFIXES = (".onnx",)


def is_exported(path: str) -> bool:
    """Whether ``path`` names an exported model rather than a checkpoint."""
    return str(path).lower().endswith(EXPORTED_SUFFIXES)


def metadata(model_name: str, size: int, mean, std, category_ids, category_names, score_threshold: float,
             nms_threshold: float, max_output: int, precision: str = "fp32", antialias: bool = True) -> dict:
    """The metadata an exported file carries (all values strings, as ONNX stores them)."""
    return {"model": model_name, "input_size": str(size), "mean": json.dumps(list(mean)), "std": json.dumps(list(std)),
            "antialias": str(int(antialias)),
            "category_ids": json.dumps(list(category_ids)), "category_names": json.dumps(list(category_names)),
            "score_threshold": repr(float(score_threshold)), "nms_threshold": repr(float(nms_threshold)),
            "max_output": str(max_output), "decoded": "1", "precision": precision}


@dataclass
class ExportInfo:
    """What an exported file's metadata says (see :func:`metadata`)."""
    model: str
    input_size: int
    mean: np.ndarray
    std: np.ndarray
    category_ids: list
    category_names: list
    score_threshold: float
    nms_threshold: float
    max_output: int
    precision: str
    antialias: bool = True

    @classmethod
    def parse(cls, meta: dict, path: str) -> "ExportInfo":
        if meta.get("decoded") != "1":
            raise CheckpointError(f"{path} holds the raw head outputs, not detections: export it again with "
                                  "export_onnx.py --with-nms to run it here")
        try:
            return cls(meta["model"], int(meta["input_size"]), np.array(json.loads(meta["mean"]), np.float32),
                       np.array(json.loads(meta["std"]), np.float32), json.loads(meta["category_ids"]),
                       json.loads(meta["category_names"]), float(meta["score_threshold"]),
                       float(meta["nms_threshold"]), int(meta["max_output"]), meta.get("precision", "fp32"),
                       meta.get("antialias", "1") == "1")
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path} lacks this project's export metadata ({e}): export it with "
                                  "export_onnx.py --with-nms") from None


def preprocess(images_rgb: list[np.ndarray], info: ExportInfo) -> np.ndarray:
    """uint8 RGB (H_i, W_i, 3) images -> (N, 3, S, S) float32, as the evaluation transform does:
    bilinear resize with antialiasing (PIL's, which torchvision's matches), rounded to uint8,
    scaled to [0, 1] and normalised; or for torchvision's models (``info.antialias`` False)
    normalised, then resized bilinearly without antialiasing (OpenCV's, half-pixel centres as torch's)."""
    size = info.input_size
    if not info.antialias:
        batch = np.stack([cv2.resize((img.astype(np.float32) / 255.0 - info.mean) / info.std, (size, size),
                                     interpolation=cv2.INTER_LINEAR) for img in images_rgb])  # (N, S, S, 3)
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))  # -> (N, 3, S, S)
    batch = np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)) for img in images_rgb])
    batch = (batch.astype(np.float32) / 255.0 - info.mean) / info.std  # (N, S, S, 3)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))  # -> (N, 3, S, S)


class _OnnxRuntime:
    def __init__(self, path: str, threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("the onnxruntime backend needs: pip install onnxruntime") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise CheckpointError(f"{path} is not a model ONNX Runtime can load ({str(e).splitlines()[0]})") from None
        self.meta = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, batch: np.ndarray):
        return self.session.run(["boxes", "labels", "scores"], {"images": batch})


class _OpenVino:
    def __init__(self, path: str, threads: int | None):
        try:
            import openvino as ov
        except ImportError:
            raise UserError("the openvino backend needs: pip install openvino") from None
        self.meta = _onnx_metadata(path)  # first: OpenVINO would try every frontend on a file that is not ONNX
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32"}  # not bf16 where the CPU has it: PyTorch's numbers
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        except RuntimeError as e:
            raise CheckpointError(f"{path} is not a model OpenVINO can load ({str(e).splitlines()[0]})") from None

    def __call__(self, batch: np.ndarray):
        result = self.compiled(batch)
        return [result[self.compiled.output(name)] for name in ("boxes", "labels", "scores")]


def _onnx_metadata(path: str) -> dict:
    import onnx
    from google.protobuf.message import DecodeError
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a model OpenVINO can load (not an ONNX file: {e})") from None
    return {p.key: p.value for p in model.metadata_props}


class ExportedDetector:
    """Images in, detections in pixels out, from an exported file (the same interface as the
    PyTorch :class:`~src.inference.detector.Detector`, on NumPy images).

    :param backend: "onnxruntime" or "openvino"
    :param cls_threshold: minimum score; the graph's own threshold (fixed at export) is the floor
        and the default
    :param nms_threshold: must be the one the graph was exported with (None: whatever it is)
    """

    def __init__(self, path: str, backend: str = "onnxruntime", cls_threshold: float | None = 0.3,
                 nms_threshold: float | None = None, threads: int | None = None):
        if not os.path.isfile(path):
            raise CheckpointError(f"exported model {path} does not exist")
        self.run = (_OpenVino if backend == "openvino" else _OnnxRuntime)(path, threads)
        self.info = ExportInfo.parse(self.run.meta, path)
        if nms_threshold is not None and abs(nms_threshold - self.info.nms_threshold) > 1e-6:
            raise UserError(f"{path} was exported with NMS at IoU {self.info.nms_threshold:g}: export it again with "
                            f"--nms-threshold {nms_threshold:g} to run at that threshold")
        floor = self.info.score_threshold
        self.cls_threshold = floor if cls_threshold is None else max(cls_threshold, floor)
        self.floor_raised = cls_threshold is not None and cls_threshold < floor
        self.backend = backend
        self.category_ids, self.category_names = self.info.category_ids, self.info.category_names
        # whether label i (0 the slots' filler) is reported: not one of torchvision's unused COCO labels
        self.reported = np.array([False] + [i is not None for i in self.category_ids])
        self.model_name = self.info.model
        self.input_size, self.nms_threshold, self.max_output = (self.info.input_size, self.info.nms_threshold,
                                                                self.info.max_output)

    @property
    def describe(self) -> str:
        return f"{self.model_name} exported ({self.info.precision}) on {self.backend}"

    def __call__(self, images_rgb: list[np.ndarray]) -> list[Detections]:
        """Detect objects in uint8 RGB images (H, W, 3), each at its own size."""
        if not images_rgb:
            return []
        boxes, labels, scores = self.run(preprocess(images_rgb, self.info))  # (N, M, 4), (N, M), (N, M)
        out = []
        for img, b, lab, s in zip(images_rgb, boxes, labels, scores):
            keep = (s > self.cls_threshold) & self.reported[lab]  # as the PyTorch decoding: strictly above
            h, w = img.shape[:2]
            pixels = b[keep].astype(np.float32) * np.array([w, h, w, h], dtype=np.float32)
            lab = lab[keep].astype(np.int64)
            out.append(Detections(pixels, lab, s[keep].astype(np.float32),
                                  [self.category_names[i - 1] for i in lab.tolist()]))
        return out
