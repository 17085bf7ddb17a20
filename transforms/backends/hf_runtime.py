"""Where the hf backend's image tower runs: eager PyTorch (GPUs; models ONNX cannot take), or on CPU its ONNX graph on
ONNX Runtime, exported once per machine from the loaded model and cached by the weights' digest (graph_cache), used
only when its vectors match eager PyTorch's; dynamic int8 on request."""
from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from transforms import internals
from transforms.backends.base import l2_normalize
from transforms.backends.graph_cache import cached_graph, cpu_session, graph_bytes
from transforms.faults import one_line

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
AGREEMENT = 1e-4  # largest difference of a unit vector's component from eager PyTorch's for the graph to be used
OPSET = 17
INPUT, OUTPUT = "pixel_values", "image_features"
_LOG = logging.getLogger("zero_shot")


def pooled(output):
    """transformers 5 returns image and text features as the pooled output of a ModelOutput; 4 as a tensor."""
    return getattr(output, "pooler_output", output)


def image_features(model, inputs: Mapping[str, Any]):
    """The image vectors (not normalized) of `model` for the processor's `inputs`, as a tensor: get_image_features
    where the model has it (CLIP, SigLIP, SigLIP 2), else an image tower's projected embeddings or CLS token (Nomic
    Embed Vision)."""
    if hasattr(model, "get_image_features"):
        return pooled(model.get_image_features(**inputs))
    output = model(**inputs)
    vectors = getattr(output, "image_embeds", None)
    return output.last_hidden_state[:, 0] if vectors is None else vectors


def export_image_tower(model, pixels_shape: tuple[int, ...]) -> bytes:
    """The image tower of `model` (pixel_values -> image features) as an ONNX graph with a dynamic batch dimension,
    exported on the CPU in float32."""
    import torch

    class ImageTower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return image_features(self.model, {"pixel_values": pixel_values})

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TorchScript tracing: shapes of one input size become constants, as they are
        torch.onnx.export(ImageTower().eval(), (torch.zeros(2, *pixels_shape[1:]),), buffer, dynamo=False,
                          input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return buffer.getvalue()


def fused(graph: bytes) -> bytes:
    """The graph with ONNX Runtime's transformer fusions (LayerNormalization, SkipLayerNormalization, the GELUs):
    unfused, ONNX Runtime runs a ViT barely faster than eager PyTorch on a CPU; fused, about twice as fast, with
    the same vectors (docs/BENCHMARKS.md)."""
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "exported.onnx", Path(folder) / "fused.onnx"
        source.write_bytes(graph)
        with internals.quiet_tool():
            optimize_model(str(source), model_type="clip", opt_level=0).save_model_to_file(str(target))
        return target.read_bytes()


def quantize_dynamic_int8(graph: bytes) -> bytes:
    """Dynamic int8 quantization: int8 weights of the matrix products, activation ranges measured per batch (no
    calibration set)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        with internals.quiet_onnxruntime(), internals.quiet_tool():
            # The fused operators are ONNX Runtime's own, whose output types shape inference does not know: float.
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
        return target.read_bytes()


class OnnxImageTower:
    """An ONNX Runtime session over an image tower's graph; `threads` intra-op threads (0: one per physical core).
    The fused fp32 graph needs only ONNX Runtime's basic optimizations (its session then starts in 0.3 s instead of
    1-3 s for CLIP B/32's, at the same speed); the int8 graph gets them all (its integer matrix products are fused
    at load: about 10% faster)."""

    def __init__(self, graph: Union[str, bytes], threads: int = 0, int8: bool = False):
        self.session = cpu_session(graph, threads, all_optimizations=int8)

    def features(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(pixels, dtype=np.float32)})[0]


def onnx_image_tower(model, weights_sha256: str, probe: np.ndarray, runtime: str,
                     threads: int = 0) -> Optional[OnnxImageTower]:
    """The image tower of `model` on ONNX Runtime (`runtime`: onnx or onnx-int8), its graph cached by the weights'
    digest; None, with a warning, when the fp32 graph cannot be exported or its vectors for the processor's `probe`
    pixels differ from eager PyTorch's by more than AGREEMENT (the caller then runs eager PyTorch)."""
    import torch
    import transformers

    key = hashlib.sha256(f"{weights_sha256}\0{probe.shape[1:]}\0{OPSET}\0{torch.__version__}\0"
                         f"{transformers.__version__}".encode() + Path(__file__).read_bytes()).hexdigest()
    try:
        graph = cached_graph("hf-image-tower", key, lambda: fused(export_image_tower(model, probe.shape)))
        tower = OnnxImageTower(graph, threads)
        with torch.inference_mode():
            eager = image_features(model, {"pixel_values": torch.from_numpy(probe)}).float().numpy()
        difference = float(np.abs(l2_normalize(tower.features(probe)) - l2_normalize(eager)).max())
    except Exception as e:  # noqa: BLE001 - an architecture the exporter cannot trace: eager PyTorch serves it
        _LOG.warning("the image tower cannot run on ONNX Runtime (%s); it runs on PyTorch", one_line(e))
        return None
    if difference > AGREEMENT:
        _LOG.warning("the image tower's ONNX graph differs from PyTorch by %.1e (more than %g); it runs on PyTorch",
                     difference, AGREEMENT)
        return None
    if runtime == "onnx-int8":
        graph = cached_graph("hf-image-tower-int8", key, lambda: quantize_dynamic_int8(graph_bytes(graph)))
        tower = OnnxImageTower(graph, threads, int8=True)
    return tower

