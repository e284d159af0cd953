"""Mixture-of-experts feature compensator (MEFC) of DRSformer (reference class ``subnet``).

An attention layer (``OALayer``) turns the globally pooled features into softmax weights over the experts for
each of 4 steps; ``GroupOLs`` then runs 4 residual ``OperationLayer`` steps, each a weighted mixture of expert
operations (separable / dilated depthwise convolutions and a 3x3 average pool) fused by a 1x1 convolution.

Names mirror the reference so that converted checkpoints map one to one: a PyTorch module list / sequential
index is joined to its parent with ``_`` (``layers.1._ops.2._ops.4.op.1`` -> ``layers_1/_ops_2/_ops_4/op_1``).
``experts`` selects the operations (paper Table 4 ablates 1, 4 and 8 experts): an int ``n`` takes the first
``n`` of :data:`OPERATIONS` in the reference order, or a sequence of names picks them explicitly. The
default, 8, is the released model.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from sparse_restore.models.layers import Conv2d

Dtype = Any
OPERATIONS: Tuple[str, ...] = (
    "sep_conv_1x1", "sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7",
    "dil_conv_3x3", "dil_conv_5x5", "dil_conv_7x7", "avg_pool_3x3")
MEFC_STEPS = 4


def resolve_experts(experts: Union[int, Sequence[str]]) -> Tuple[str, ...]:
  """The expert operation names for an ``experts`` setting (int n = first n of OPERATIONS, or names)."""
  if isinstance(experts, (int,)) and not isinstance(experts, bool):
    if not 1 <= experts <= len(OPERATIONS):
      raise ValueError(f"mefc_experts must be 1..{len(OPERATIONS)} or a list of names, got {experts}")
    return OPERATIONS[:experts]
  names = tuple(experts)
  unknown = [n for n in names if n not in OPERATIONS]
  if unknown or not names or len(set(names)) != len(names):
    raise ValueError(f"mefc_experts names must be distinct entries of {OPERATIONS}, got {names}")
  return names


def avg_pool_3x3(x):
  """``nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)`` in NHWC."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = lax.reduce_window(x, jnp.array(0, x.dtype), lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
  count = lax.reduce_window(ones, jnp.array(0, x.dtype), lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return total / count


class SepConv(nn.Module):
  """Separable conv expert: dw k x k -> 1x1 -> ReLU -> dw k x k -> 1x1, no biases (``op.0, 1, 3, 4``)."""
  channels: int
  kernel_size: int
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x):
    c, k = self.channels, self.kernel_size
    kw = dict(use_bias=False, conv_impl=self.conv_impl, dtype=self.dtype)
    x = Conv2d(c, k, padding=k // 2, groups=c, name="op_0", **kw)(x)
    x = nn.relu(Conv2d(c, 1, name="op_1", **kw)(x))
    x = Conv2d(c, k, padding=k // 2, groups=c, name="op_3", **kw)(x)
    return Conv2d(c, 1, name="op_4", **kw)(x)


class DilConv(nn.Module):
  """Dilated conv expert: dw k x k with dilation 2 (padding k - 1) -> 1x1, no biases (``op.0, op.1``)."""
  channels: int
  kernel_size: int
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x):
    c, k = self.channels, self.kernel_size
    kw = dict(use_bias=False, conv_impl=self.conv_impl, dtype=self.dtype)
    x = Conv2d(c, k, padding=k - 1, dilation=2, groups=c, name="op_0", **kw)(x)
    return Conv2d(c, 1, name="op_1", **kw)(x)


class OperationLayer(nn.Module):
  """One MEFC step: ``relu(conv1x1(concat_j(op_j(x) * w[:, j])))`` over the expert operations."""
  channels: int
  experts: Tuple[str, ...] = OPERATIONS
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, weights):
    """x: [B, H, W, C]; weights: [B, len(experts)] mixing weights of this step."""
    states = []
    for j, op in enumerate(self.experts):
      kind, k = op[:-4], int(op[-1])  # "sep_conv_3x3" -> ("sep_conv", 3)
      name = f"_ops_{j}"
      if kind == "sep_conv":
        y = SepConv(self.channels, k, self.conv_impl, self.dtype, name=name)(x)
      elif kind == "dil_conv":
        y = DilConv(self.channels, k, self.conv_impl, self.dtype, name=name)(x)
      else:
        y = avg_pool_3x3(x)
      states.append(y * weights[:, j, None, None, None].astype(y.dtype))
    y = Conv2d(self.channels, 1, use_bias=False, conv_impl=self.conv_impl, dtype=self.dtype,
               name="_out_0")(jnp.concatenate(states, axis=-1))
    return nn.relu(y)


class _Preprocess(nn.Module):
  """The reference's ``ReLUConv.op.0``: a bias-free 1x1 convolution (the ReLU is applied by the caller)."""
  channels: int
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x):
    return Conv2d(self.channels, 1, use_bias=False, conv_impl=self.conv_impl, dtype=self.dtype, name="op_0")(x)


class GroupOLs(nn.Module):
  """``relu(conv1x1)`` preprocessing, then ``steps`` residual OperationLayers (``preprocess``, ``_ops_i``)."""
  channels: int
  steps: int = MEFC_STEPS
  experts: Tuple[str, ...] = OPERATIONS
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x, weights):
    """weights: [B, steps, len(experts)]."""
    s = nn.relu(_Preprocess(self.channels, self.conv_impl, self.dtype, name="preprocess")(x))
    for i in range(self.steps):
      layer = OperationLayer(self.channels, self.experts, self.conv_impl, self.dtype, name=f"_ops_{i}")
      s = nn.relu(layer(s, weights[:, i]) + s)
    return s


class OALayer(nn.Module):
  """Expert attention: global average pool -> Linear(C, 2*steps*n) -> ReLU -> Linear(-, steps*n) (``ca_fc_0/2``).

  Returns the logits as ``[B, steps, n]`` (the caller applies the softmax over experts), float32.
  """
  steps: int = MEFC_STEPS
  num_ops: int = len(OPERATIONS)

  @nn.compact
  def __call__(self, x):
    y = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    y = nn.relu(nn.Dense(2 * self.steps * self.num_ops, name="ca_fc_0")(y))
    y = nn.Dense(self.steps * self.num_ops, name="ca_fc_2")(y)
    return y.reshape(-1, self.steps, self.num_ops)


class MEFC(nn.Module):
  """Mixture-of-experts feature compensator (DRSformer, Sec. 3.4): ``layers_0`` (OALayer), ``layers_1`` (GroupOLs).

  Input and output ``[B, H, W, channels]``.
  """
  channels: int
  experts: Union[int, Sequence[str]] = len(OPERATIONS)
  steps: int = MEFC_STEPS
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x):
    ops = resolve_experts(self.experts)
    weights = nn.softmax(OALayer(self.steps, len(ops), name="layers_0")(x), axis=-1)
    return GroupOLs(self.channels, self.steps, ops, self.conv_impl, self.dtype, name="layers_1")(x, weights)
