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

import functools
from typing import Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp

from sparse_restore.models import layers
from sparse_restore.models.layers import Conv2d, Kernel1x1
from sparse_restore.models.policy import Policy

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


# The convolution experts end in a 1x1 projection A. They return its input z and A (output = z @ A), so that
# OperationLayer can fold A into its own 1x1 (see there).


class SepConv(nn.Module):
  """Separable conv expert: dw k x k -> 1x1 -> ReLU -> dw k x k -> 1x1, no biases (``op.0, 1, 3, 4``)."""
  channels: int
  kernel_size: int
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    c, k = self.channels, self.kernel_size
    conv = functools.partial(Conv2d, use_bias=False, policy=self.policy)
    x = conv(c, k, padding=k // 2, groups=c, name="op_0")(x)
    x = nn.relu(conv(c, 1, name="op_1")(x))
    x = conv(c, k, padding=k // 2, groups=c, name="op_3")(x)
    return x, Kernel1x1(c, name="op_4")(c)


class DilConv(nn.Module):
  """Dilated conv expert: dw k x k with dilation 2 (padding k - 1) -> 1x1, no biases (``op.0, op.1``)."""
  channels: int
  kernel_size: int
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    c, k = self.channels, self.kernel_size
    x = Conv2d(c, k, padding=k - 1, dilation=2, groups=c, use_bias=False, policy=self.policy, name="op_0")(x)
    return x, Kernel1x1(c, name="op_1")(c)


class OperationLayer(nn.Module):
  """One MEFC step: ``relu(conv1x1(concat_j(op_j(x) * w[:, j])))`` over the expert operations (``_out_0``)."""
  channels: int
  experts: Tuple[str, ...] = OPERATIONS
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x, weights):
    """x: [B, H, W, C]; weights: [B, len(experts)] mixing weights of this step."""
    c = self.channels
    x = x.astype(self.policy.compute_dtype or jnp.promote_types(x.dtype, jnp.float32))
    fusion = Kernel1x1(c, name="_out_0")(len(self.experts) * c)[0, 0]  # [n * C, C]
    # concat_j(w_j * (z_j @ A_j)) @ B == concat_j(w_j * z_j) @ concat_j(A_j @ B_j), with B_j expert j's rows of
    # the fusion kernel: one product instead of n + 1 (folded in float32).
    features, folded = [], []
    for j, op in enumerate(self.experts):
      kind, k = op[:-4], int(op[-1])  # "sep_conv_3x3" -> ("sep_conv", 3)
      rows = fusion[j * c:(j + 1) * c]
      if kind == "avg_pool":
        z = layers.avg_pool_3x3(x, self.policy)
      else:
        expert = SepConv if kind == "sep_conv" else DilConv
        z, proj = expert(c, k, self.policy, name=f"_ops_{j}")(x)
        rows = jnp.dot(proj[0, 0], rows)
      features.append(z * weights[:, j, None, None, None].astype(z.dtype))
      folded.append(rows)
    y = jnp.dot(jnp.concatenate(features, axis=-1), jnp.concatenate(folded, axis=0).astype(x.dtype))
    return nn.relu(y)


class GroupOLs(nn.Module):
  """``relu(conv1x1)`` preprocessing (``preprocess/op_0``), then ``steps`` residual OperationLayers
  (``_ops_i``): ``s = relu(OperationLayer_i(s, weights[:, i]) + s)``."""
  channels: int
  steps: int = MEFC_STEPS
  experts: Tuple[str, ...] = OPERATIONS
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x, weights):
    """weights: [B, steps, len(experts)]."""
    s = nn.relu(_Preprocess(self.channels, self.policy, name="preprocess")(x))
    step = OperationLayer(self.channels, self.experts, self.policy, parent=None)
    return layers.repeated(self, step, [f"_ops_{i}" for i in range(self.steps)], s, jnp.swapaxes(weights, 0, 1),
                           scan=self.policy.scan_blocks, step=lambda layer, s, w: nn.relu(layer(s, w) + s))


class _Preprocess(nn.Module):
  """The reference's ``ReLUConv.op.0``: a bias-free 1x1 convolution (the ReLU is applied by the caller)."""
  channels: int
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    return Conv2d(self.channels, 1, use_bias=False, policy=self.policy, name="op_0")(x)


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
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    ops = resolve_experts(self.experts)
    weights = nn.softmax(OALayer(self.steps, len(ops), name="layers_0")(x), axis=-1)
    return GroupOLs(self.channels, self.steps, ops, self.policy, name="layers_1")(x, weights)
