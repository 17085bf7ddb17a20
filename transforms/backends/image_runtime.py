"""Where the embedded backend's image classifier runs: eager PyTorch, or ONNX Runtime (fp32, or int8 with static
quantization calibrated on images the caller names). The ONNX graph is exported in memory from the same
sha256-checked PyTorch weights at load (about a second), so nothing is downloaded or cached on disk."""
from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np
import torch

from transforms.backends import efficientnet_lite

INPUT, OUTPUT = "pixels", "logits"


class ImageClassifier(Protocol):
    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, 224, 224) float32 preprocessed pixels -> (n, 1000) float32 ImageNet logits."""


class TorchClassifier:
    """The eager PyTorch model: the reference every other runtime is checked against."""

    def __init__(self, model: torch.nn.Module, threads: int = 0):
        self.model = model
        if threads:
            torch.set_num_threads(threads)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(pixels)).numpy()


class OnnxClassifier:
    """An ONNX Runtime session over a serialized graph; `threads` intra-op threads (0: one per physical core)."""

    def __init__(self, graph: bytes, threads: int = 0):
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)  # graph-cleanup notices of the exporter's constants are noise
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one batch at a time per worker: parallelism lives inside the operators
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: pixels})[0]


def export_onnx(model: torch.nn.Module) -> bytes:
    """The model as an ONNX graph with a dynamic batch dimension, exported in memory."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript tracing warns that TF "SAME" padding sizes become constants: they are, for 224 x 224 inputs.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, efficientnet_lite.INPUT_SIZE, efficientnet_lite.INPUT_SIZE),),
                          buffer, dynamo=False, input_names=[INPUT], output_names=[OUTPUT], opset_version=17,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return buffer.getvalue()


def quantize_int8(graph: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """Static int8 quantization (QDQ, per-channel weights) with activation ranges measured on `calibration`
    batches of preprocessed pixels."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    onnxruntime.set_default_logger_severity(3)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return target.read_bytes()


def calibration_batches(pattern: str, batch_size: int = 16, limit: int = 256) -> Iterable[np.ndarray]:
    """Preprocessed batches of at most `limit` images that a glob names, decoded as the pipeline decodes them."""
    import fsspec
    from PIL import Image

    from transforms.decode import decode_image
    from transforms.read import expand_pattern

    paths = list(expand_pattern(pattern))[:limit]
    if not paths:
        raise ValueError(f"no calibration image matches {pattern!r}")
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start: start + batch_size]:
            with fsspec.open(path, "rb") as f:
                images.append(decode_image(f.read(), Image.MAX_IMAGE_PIXELS)[0])
        yield np.stack([efficientnet_lite.preprocess(image) for image in images])
