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
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparse_restore.models.layers import Conv2d, conv_reference, cpu_barrier, grouped_conv_shift, resolve_conv_impl

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
  """``nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)`` in NHWC.

  The window sums are 9 shifted slices of the zero-padded input (XLA:CPU's reduce_window is slow); the number
  of in-image pixels per window is a trace-time constant, the outer product of a row and a column count.
  """
  b, h, w, c = x.shape
  xp = cpu_barrier(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
  total = None
  for i in range(3):
    for j in range(3):
      t = lax.slice(xp, (0, i, j, 0), (b, i + h, j + w, c))
      total = t if total is None else total + t

  def counts(n):
    v = np.full((n,), 3.0, np.float32)
    v[0] -= 1
    v[-1] -= 1
    return np.maximum(v, 1.0)  # n == 1: the window holds the pixel itself

  count = counts(h)[:, None] * counts(w)[None, :]
  return total / jnp.asarray(count[None, :, :, None], x.dtype)


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
    if not self.is_initializing():
      return operation_layer_apply(self.variables["params"], x, weights, self.experts, self.conv_impl, self.dtype)
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


def _depthwise(x, kernel, padding, dilation, conv_impl):
  if resolve_conv_impl(conv_impl) == "shift":
    return grouped_conv_shift(x, kernel, padding=padding, dilation=dilation)
  return conv_reference(x, kernel, padding=padding, dilation=dilation, groups=kernel.shape[-1])


def operation_layer_apply(params, x, weights, experts=OPERATIONS, conv_impl="auto", dtype=None):
  """:class:`OperationLayer` from its parameter dict, with each expert's last 1x1 merged into the fusion 1x1.

  ``concat_j(w_j * (z_j @ A_j)) @ B == concat_j(w_j * z_j) @ concat_j(A_j @ B_j)`` where ``z_j`` is the input of
  expert j's last 1x1 (kernel ``A_j``) and ``B_j`` its rows of ``_out_0``: one product instead of 8 per step
  (the same function up to float rounding). The merged kernel is formed in float32.
  """
  cdt = dtype or jnp.promote_types(x.dtype, jnp.float32)
  x = x.astype(cdt)
  c = x.shape[-1]
  out_kernel = params["_out_0"]["kernel"][0, 0]  # [n * C, C]
  pw = lambda v, k: jnp.dot(v, k[0, 0].astype(cdt))
  zs, merged = [], []
  for j, op in enumerate(experts):
    kind, k = op[:-4], int(op[-1])
    block = out_kernel[j * c:(j + 1) * c]
    if kind == "sep_conv":
      p = params[f"_ops_{j}"]
      z = _depthwise(x, p["op_0"]["kernel"].astype(cdt), k // 2, 1, conv_impl)
      z = nn.relu(pw(z, p["op_1"]["kernel"]))
      z = _depthwise(z, p["op_3"]["kernel"].astype(cdt), k // 2, 1, conv_impl)
      block = jnp.dot(p["op_4"]["kernel"][0, 0], block)
    elif kind == "dil_conv":
      p = params[f"_ops_{j}"]
      z = _depthwise(x, p["op_0"]["kernel"].astype(cdt), k - 1, 2, conv_impl)
      block = jnp.dot(p["op_1"]["kernel"][0, 0], block)
    else:
      z = avg_pool_3x3(x)
    zs.append(z * weights[:, j, None, None, None].astype(cdt))
    merged.append(block)
  y = jnp.dot(jnp.concatenate(zs, axis=-1), jnp.concatenate(merged, axis=0).astype(cdt))
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
    if not self.is_initializing() and self.steps > 1 and jax.default_backend() != "cpu":
      # The steps share one structure: a scan over their stacked params compiles one step instead of 4. Not on
      # CPU: there, the scan's stacked saved activations are written by single-threaded in-place updates (the
      # MEFC(96) train gradient at 2 x 128 x 128 took 2.0 s scanned, 1.5 s unrolled).
      p = self.variables["params"]
      stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[p[f"_ops_{i}"] for i in range(self.steps)])

      def step(s, inputs):
        params, w = inputs
        return nn.relu(operation_layer_apply(params, s, w, self.experts, self.conv_impl, self.dtype) + s), None

      s, _ = lax.scan(step, s, (stacked, jnp.swapaxes(weights, 0, 1)))
      return s
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
