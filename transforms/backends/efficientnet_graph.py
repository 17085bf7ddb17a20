"""EfficientNet-Lite0 as an ONNX graph written with onnx.helper from its NumPy weights: the embedded backend's image
model runs on ONNX Runtime without torch installed (efficientnet_lite.py, the PyTorch module, is the reference the
tests check this graph against)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

INPUT, OUTPUT = "pixels", "logits"
INPUT_SIZE = 224
OPSET = 17
IR_VERSION = 8  # opset 17's: what ONNX Runtime releases of the last years read, not the newest onnx writes
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in the TF reference.
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one side of `size` pixels: (before, after), the extra pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _Graph:
    """The nodes and weights of the graph as it is written, one layer at a time."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights, self.nodes, self.initializers = weights, [], []

    def constant(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    def conv_bn(self, x: str, conv: str, bn: str, size: int, stride: int = 1, groups: int = 1) -> tuple[str, int]:
        """Conv2dSame (no bias) then BatchNorm, as efficientnet_lite._conv_bn; (output, its side in pixels)."""
        weight = self.weights[f"{conv}.weight"]
        kernel = weight.shape[-1]
        before, after = same_padding(size, kernel, stride)
        if before or after:
            pads = self.constant(f"{conv}.pads", np.array([0, 0, before, before, 0, 0, after, after], np.int64))
            x = self.node("Pad", [x, pads], f"{conv}.pad")
        x = self.node("Conv", [x, self.constant(f"{conv}.weight", weight)], conv, kernel_shape=[kernel, kernel],
                      strides=[stride, stride], group=groups)
        x = self.node("BatchNormalization", [x] + [self.constant(f"{bn}.{part}", self.weights[f"{bn}.{part}"])
                                                   for part in ("weight", "bias", "running_mean", "running_var")],
                      bn, epsilon=BN_EPS)
        return x, math.ceil(size / stride)

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, "zero", "six"], f"{x}.relu6")


def build_graph(weights: Mapping[str, np.ndarray]) -> bytes:
    """The serialized graph of EfficientNet-Lite0 with these weights (its PyTorch state dict, as arrays): float32
    pixels (batch, 3, 224, 224) in, ImageNet logits (batch, 1000) out, any batch size. onnx is imported here: a
    warm start reads the cached graph and never imports it."""
    import onnx
    from onnx import TensorProto, helper

    graph = _Graph(weights)
    graph.constant("zero", np.array(0.0, np.float32))
    graph.constant("six", np.array(6.0, np.float32))
    x, size = graph.conv_bn(INPUT, "_conv_stem", "_bn0", INPUT_SIZE, stride=2)
    x = graph.relu6(x)
    index = 0
    for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
        for repeat in range(repeats):
            block, block_in = f"_blocks.{index}", x
            stride_here, cin_here = (stride, cin) if repeat == 0 else (1, cout)
            if expand != 1:
                x, _ = graph.conv_bn(x, f"{block}._expand_conv", f"{block}._bn0", size)
                x = graph.relu6(x)
            x, after = graph.conv_bn(x, f"{block}._depthwise_conv", f"{block}._bn1", size, stride_here,
                                     groups=cin_here * expand)
            x = graph.relu6(x)
            x, _ = graph.conv_bn(x, f"{block}._project_conv", f"{block}._bn2", after)
            if stride_here == 1 and cin_here == cout:
                x = graph.node("Add", [x, block_in], f"{block}.skip")
            size, index = after, index + 1
    x, _ = graph.conv_bn(x, "_conv_head", "_bn1", size)
    x = graph.node("GlobalAveragePool", [graph.relu6(x)], "pool")
    x = graph.node("Flatten", [x], "flatten", axis=1)
    graph.node("Gemm", [x, graph.constant("_fc.weight", weights["_fc.weight"]),
                        graph.constant("_fc.bias", weights["_fc.bias"])], OUTPUT, transB=1)
    pixels = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])
    logits = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 1000])
    model = helper.make_model(
        helper.make_graph(graph.nodes, "efficientnet_lite0", [pixels], [logits], graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="beam-zero-shot-labels",
        ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()
