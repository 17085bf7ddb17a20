"""Where the embedded backend's image classifier runs: ONNX Runtime (fp32, or int8 with static quantization calibrated
on images the caller names) or eager PyTorch, and its eval preprocessing. The fp32 ONNX graph is written from the
sha256-checked weights without torch (efficientnet_graph.py) once per machine and kept in the user's cache folder,
keyed by those weights and the graph's source: a warm start imports neither onnx nor torch. torch is imported only
where it runs (--local_runtime torch)."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import Iterable, Protocol, Union

import numpy as np
from PIL import Image

from transforms import internals
from transforms.backends.efficientnet_graph import INPUT, INPUT_SIZE, IR_VERSION, OPSET, OUTPUT

RESIZE_SIZE = 256
# The Lite models were trained on inputs scaled to [-1, 1]: (x - 127) / 128 per channel.
MEAN = 127.0
STD = 128.0
_LOG = logging.getLogger("zero_shot")


def preprocess(image: Image.Image) -> np.ndarray:
    """Resize the shorter side to 256, center-crop 224, scale to [-1, 1]; returns CHW float32."""
    scale = RESIZE_SIZE / min(image.size)
    resized = image.resize(
        (max(INPUT_SIZE, round(image.width * scale)), max(INPUT_SIZE, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    left = (resized.width - INPUT_SIZE) // 2
    top = (resized.height - INPUT_SIZE) // 2
    crop = resized.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE))
    pixels = np.asarray(crop, dtype=np.float32)
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


class ImageClassifier(Protocol):
    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 3, 224, 224) float32 preprocessed pixels -> (n, 1000) float32 ImageNet logits."""


class TorchClassifier:
    """The eager PyTorch model: the reference every other runtime is checked against."""

    def __init__(self, model, threads: int = 0):
        self.model = model
        if threads:
            internals.set_torch_threads(threads)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(pixels)).numpy()


class OnnxClassifier:
    """An ONNX Runtime session over a graph (its file's path, or its bytes); `threads` intra-op threads (0: one per
    physical core)."""

    def __init__(self, graph: Union[str, bytes], threads: int = 0):
        from transforms.backends.graph_cache import cpu_session

        self.session = cpu_session(graph, threads)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: pixels})[0]


def graph_key(weights_sha256: str) -> str:
    """What a cached graph must have been written from: these weights, this graph source, this opset."""
    source = Path(importlib.util.find_spec("transforms.backends.efficientnet_graph").origin).read_bytes()
    return hashlib.sha256(f"{weights_sha256}\0{OPSET}\0{IR_VERSION}\0".encode() + source).hexdigest()


def quantize_int8(graph: bytes, calibration: Iterable[np.ndarray]) -> bytes:
    """Static int8 quantization (QDQ, per-channel weights) with activation ranges measured on `calibration`
    batches of preprocessed pixels."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        with internals.quiet_onnxruntime():
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
        yield np.stack([preprocess(image) for image in images])
