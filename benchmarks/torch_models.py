"""PyTorch twins of kd_jax's mlp, cnn and CIFAR ResNets, for the speed comparison only.

Same layers, widths, strides, paddings and parameter counts as the Flax models
(``vs_pytorch.py`` checks the counts); NCHW instead of NHWC, and PyTorch's own
initialisation (timing does not depend on the weights).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kd_jax.models import resnet as jax_resnet


def _out_size(size: int, kernel: int, stride: int) -> int:
  return (size + 2 * (kernel // 2) - kernel) // stride + 1


class MLP(nn.Module):

  def __init__(self, num_classes, input_shape=(28, 28, 1), hidden=(256,)):
    super().__init__()
    widths = [math.prod(input_shape), *hidden]
    layers = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
      layers += [nn.Linear(w_in, w_out), nn.ReLU()]
    self.body = nn.Sequential(nn.Flatten(), *layers)
    self.head = nn.Linear(widths[-1], num_classes)

  def forward(self, x):
    return self.head(self.body(x))


class CNN(nn.Module):

  def __init__(self, num_classes, input_shape=(28, 28, 1), widths=(32, 64, 128),
               batch_norm=False, hidden=None, first_kernel=3, first_stride=1, head="gap"):
    super().__init__()
    height, width, channels = input_shape
    layers, c_in = [], channels
    for i, c_out in enumerate(widths):
      k, s = (first_kernel, first_stride) if i == 0 else (3, 2)
      layers.append(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=not batch_norm))
      if batch_norm:
        layers.append(nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1))
      layers.append(nn.ReLU())
      height, width, c_in = _out_size(height, k, s), _out_size(width, k, s), c_out
    self.convs = nn.Sequential(*layers)
    self.gap = head == "gap"
    pooled = c_in if self.gap else c_in * height * width
    self.hidden = nn.Sequential(nn.Linear(pooled, hidden), nn.ReLU()) if hidden else nn.Identity()
    self.head = nn.Linear(hidden or pooled, num_classes)

  def forward(self, x):
    h = self.convs(x)
    h = h.mean(dim=(2, 3)) if self.gap else h.flatten(1)
    return self.head(self.hidden(h))


class BasicBlock(nn.Module):

  def __init__(self, c_in, c_out, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(c_out)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(c_out)
    self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                   nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else nn.Identity())

  def forward(self, x):
    h = torch.relu(self.bn1(self.conv1(x)))
    return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):

  def __init__(self, num_classes, depth, widths, input_shape=(28, 28, 1)):
    super().__init__()
    n = (depth - 2) // 6
    self.stem = nn.Sequential(nn.Conv2d(input_shape[-1], widths[0], 3, 1, 1, bias=False),
                              nn.BatchNorm2d(widths[0]), nn.ReLU())
    blocks = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
      for b in range(n):
        blocks.append(BasicBlock(c_in if b == 0 else c_out, c_out, (1 if i == 0 else 2) if b == 0 else 1))
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(widths[-1], num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def create(name: str, *, num_classes: int, input_shape, **kwargs) -> nn.Module:
  """The PyTorch twin of ``kd_jax.models.create(name, ...)``."""
  if name == "mlp":
    return MLP(num_classes, input_shape, **kwargs)
  if name == "cnn":
    return CNN(num_classes, input_shape, **kwargs)
  if name in jax_resnet.CONFIGS:
    depth, widths = jax_resnet.CONFIGS[name]
    return ResNet(num_classes, depth, widths, input_shape)
  raise ValueError(f"no PyTorch twin for model {name!r}")


def count_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())
