"""INT8 post-training static quantization of an exported model, with ONNX Runtime's QDQ quantizer.

The convolutions (weights signed 8-bit per channel, activations unsigned 8-bit per tensor,
ONNX Runtime's advice for x86 CPUs) are quantized from the activation ranges of calibration
images, preprocessed exactly as at inference; the decoding (softmax, box decoding, NMS) stays in
float. The file keeps its metadata, marked ``precision: int8``, and runs on ONNX Runtime and on
OpenVINO alike.

Why ONNX Runtime's quantizer and not NNCF: it needs no package beyond onnxruntime, which the
ONNX path already has, and OpenVINO executes its QDQ files as INT8 as well, though it loses more
AP on them than ONNX Runtime does (measured: docs/speed.md); NNCF, OpenVINO's own quantizer,
would add a large dependency for the OpenVINO path alone and is not used.
"""
import os
import sys
import tempfile

from src.data.images import read_image
from src.inference.runtime import ExportInfo, preprocess
from src.utils.errors import ImageReadError, UserError


class _Calibration:
    """Batches of preprocessed calibration images, as ONNX Runtime's CalibrationDataReader."""

    def __init__(self, paths: list[str], info: ExportInfo, batch_size: int = 8):
        self.paths, self.info, self.batch_size, self.position = paths, info, batch_size, 0

    def get_next(self):
        while self.position < len(self.paths):
            chunk = self.paths[self.position:self.position + self.batch_size]
            self.position += self.batch_size
            images = []
            for path in chunk:
                try:
                    images.append(read_image(path))
                except ImageReadError as e:
                    print(f"warning: calibration image skipped: {e}", file=sys.stderr)
            if images:
                return {"images": preprocess(images, self.info)}
        return None

    def rewind(self):
        self.position = 0


def quantize(fp32_path: str, int8_path: str, calibration_images: list[str]):
    """Write the INT8 version of the exported model ``fp32_path`` to ``int8_path``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if not calibration_images:
        raise UserError("no calibration image: INT8 needs images like those the model will see")
    meta = {p.key: p.value for p in onnx.load(fp32_path, load_external_data=False).metadata_props}
    info = ExportInfo.parse(meta, fp32_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, int8_path, _Calibration(calibration_images, info), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    model = onnx.load(int8_path)
    del model.metadata_props[:]
    for key, value in {**meta, "precision": "int8"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, int8_path)
