"""EfficientNet-Lite0 (ImageNet-1k classifier) in plain PyTorch: the reference the ONNX graph (efficientnet_graph.py)
is checked against, and what `--local_runtime torch` runs (its eval preprocessing is image_runtime.preprocess)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from transforms.backends.efficientnet_graph import BN_EPS, LITE0_STAGES, same_padding


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output size ceil(input / stride), extra pixel on the far side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [side for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride))
               for side in same_padding(size, k, s)]
        return F.conv2d(F.pad(x, pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> tuple[nn.Module, nn.Module]:
    return Conv2dSame(cin, cout, kernel, stride, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite variant), ReLU6 activations."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        hidden = cin * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv, self._bn0 = _conv_bn(cin, hidden, 1)
        self._depthwise_conv, self._bn1 = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self._project_conv, self._bn2 = _conv_bn(hidden, cout, 1)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


class EfficientNetLite0(nn.Module):
    """Parameter names follow the EfficientNet-PyTorch layout so the published state dict loads strictly."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem, self._bn0 = _conv_bn(3, 32, 3, stride=2)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = _conv_bn(320, 1280, 1)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
