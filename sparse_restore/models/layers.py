"""Building blocks shared by the networks: PyTorch-layout convolutions, pooling, top-k, repeated blocks, layer norms.

Convolutions keep PyTorch's semantics (explicit symmetric padding, dilation, groups) with Flax's kernel layout
``[kh, kw, in_channels // groups, out_channels]``, so converted checkpoints map one to one. The blocks take the
network's :class:`~sparse_restore.models.policy.Policy` and pick the implementation it names: depthwise and
grouped convolutions run as ``lax.conv_general_dilated`` or as the shifted-tap sums of ``cpu_kernels``;
``fusion_guards`` adds XLA:CPU's optimization barriers; ``scan_blocks`` rolls repeated blocks into a scan.
Every choice computes the same function.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparse_restore.models import cpu_kernels
from sparse_restore.models.policy import Policy

Dtype = Any
IntPair = Union[int, Tuple[int, int]]
conv_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # PyTorch's default


def _pair(v: IntPair) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def conv_reference(x, kernel, *, stride=1, padding=0, dilation=1, groups=1):
  """Plain ``lax.conv_general_dilated`` (NHWC / HWIO): the ground truth the fast paths are tested against."""
  sh, sw = _pair(stride)
  ph, pw = _pair(padding)
  dh, dw = _pair(dilation)
  return lax.conv_general_dilated(
      x, kernel, window_strides=(sh, sw), padding=((ph, ph), (pw, pw)), rhs_dilation=(dh, dw),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def depthwise_conv(x, kernel, policy: Policy, *, padding: IntPair = 0, dilation: IntPair = 1):
  """Grouped convolution with one output channel per group (kernel ``[kh, kw, in / groups, groups]``), stride 1,
  in the policy's implementation."""
  if policy.conv in ("shift", "taps"):
    return cpu_kernels.grouped_conv_shift(x, kernel, padding=_pair(padding), dilation=_pair(dilation),
                                          guards=policy.fusion_guards, custom_backward=policy.conv == "shift")
  return conv_reference(x, kernel, padding=padding, dilation=dilation, groups=kernel.shape[-1])


def fusion_guard(x, policy: Policy):
  """``lax.optimization_barrier`` under ``policy.fusion_guards`` (XLA:CPU), else ``x``.

  On XLA:CPU the barrier keeps the simplifier from rewriting ``x`` into its consumers (a pad folded into each of
  nine conv taps' slices, which then bounds-check every element; a ``top_k`` of which only part is used turned
  into a full sort).
  """
  return lax.optimization_barrier(x) if policy.fusion_guards else x


def top_k(x, k: int, policy: Policy):
  """``lax.top_k`` over the last axis: (values, indices)."""
  return fusion_guard(lax.top_k(x, k), policy)


def avg_pool_3x3(x, policy: Policy):
  """``torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)`` in NHWC.

  The window sums are 9 shifted slices of the zero-padded input (XLA:CPU's reduce_window is slow); the number
  of in-image pixels per window is a trace-time constant, the outer product of a row and a column count.
  """
  b, h, w, c = x.shape
  xp = fusion_guard(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), policy)
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


class Conv2d(nn.Module):
  """``torch.nn.Conv2d`` in NHWC with a Flax kernel ``[kh, kw, in // groups, out]``.

  Attributes mirror PyTorch's arguments. 1x1 convolutions run as a matrix product; grouped ones with one output
  channel per group as :func:`depthwise_conv`; compute dtype and implementation come from ``policy``.
  """
  features: int
  kernel_size: IntPair = 1
  stride: IntPair = 1
  padding: IntPair = 0
  dilation: IntPair = 1
  groups: int = 1
  use_bias: bool = True
  policy: Policy = Policy()
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = conv_kernel_init

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f"{self.name}: channels in={cin} out={self.features} not divisible by groups={self.groups}")
    kh, kw = _pair(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init, (kh, kw, cin // self.groups, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.policy.compute_dtype)

    unit_stride = _pair(self.stride) == (1, 1)
    if (kh, kw) == (1, 1) and self.groups == 1 and unit_stride and _pair(self.padding) == (0, 0):
      y = jnp.dot(x, kernel[0, 0])
    elif self.groups > 1 and self.groups == self.features and unit_stride and not self.is_initializing():
      # (Initialisation only needs shapes: the plain convolution traces and compiles faster there.)
      y = depthwise_conv(x, kernel, self.policy, padding=self.padding, dilation=self.dilation)
    else:
      y = conv_reference(x, kernel, stride=self.stride, padding=self.padding, dilation=self.dilation,
                         groups=self.groups)
    if bias is not None:
      y = y + bias
    return y


class Kernel1x1(nn.Module):
  """The ``[1, 1, in, out]`` kernel of a bias-free 1x1 :class:`Conv2d`, declared under this module's name and
  returned unapplied, for a caller that folds it into another product."""
  features: int

  @nn.compact
  def __call__(self, in_features: int):
    return self.param("kernel", conv_kernel_init, (1, 1, in_features, self.features), jnp.float32)


@functools.lru_cache(maxsize=None)
def _remat(cls):
  return nn.remat(cls)  # same parameter names; one class per block type


def repeated(module: nn.Module, template: nn.Module, names: Sequence[str], x, xs=None, *, scan: bool,
             step: Callable = lambda block, x, _: block(x), remat: bool = False):
  """``x = step(block_i, x, xs[i])`` over the child blocks ``names`` of ``module``, copies of ``template``.

  ``template`` is an unbound module (``parent=None``) with the blocks' settings; ``xs`` (optional) is stacked
  along its leading axis. Unrolled, each block is a named child of ``module``. With ``scan`` (not at
  initialisation), the blocks run as one ``lax.scan`` over their stacked parameters: the parameter tree is the
  same, but one block is traced and compiled instead of ``len(names)``. ``remat`` recomputes each block's
  activations in the backward pass.
  """
  if module.is_initializing() or not scan or len(names) == 1:
    fields = {f.name: getattr(template, f.name) for f in dataclasses.fields(template)
              if f.init and f.name not in ("parent", "name")}
    cls = _remat(type(template)) if remat else type(template)
    for i, name in enumerate(names):
      x = step(cls(**fields, name=name), x, None if xs is None else xs[i])
    return x
  params = module.variables["params"]
  stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[params[n] for n in names])

  def body(carry, inputs):
    block_params, x_i = inputs
    return step(lambda *args: template.apply({"params": block_params}, *args), carry, x_i), None

  if remat:
    body = jax.checkpoint(body, prevent_cse=False)  # inside a scan, CSE cannot undo the remat
  x, _ = lax.scan(body, x, (stacked, xs))
  return x


def pixel_shuffle(x, r: int = 2):
  """``torch.nn.PixelShuffle`` in NHWC: input channel ``c*r*r + dy*r + dx`` goes to pixel (dy, dx) of channel c."""
  b, h, w, c = x.shape
  if c % (r * r):
    raise ValueError(f"pixel_shuffle: {c} channels not divisible by {r * r}")
  x = x.reshape(b, h, w, c // (r * r), r, r)
  x = jnp.transpose(x, (0, 1, 4, 2, 5, 3))
  return x.reshape(b, h * r, w * r, c // (r * r))


def pixel_unshuffle(x, r: int = 2):
  """``torch.nn.PixelUnshuffle`` in NHWC, the exact inverse of :func:`pixel_shuffle`."""
  b, h, w, c = x.shape
  if h % r or w % r:
    raise ValueError(f"pixel_unshuffle: spatial size {h}x{w} not divisible by {r}")
  x = x.reshape(b, h // r, r, w // r, r, c)
  x = jnp.transpose(x, (0, 1, 3, 5, 2, 4))
  return x.reshape(b, h // r, w // r, c * r * r)


class ChannelLayerNorm(nn.Module):
  """LayerNorm over the channel (last) axis with biased variance, as in Restormer/DRSformer.

  kind: ``"WithBias"`` ((x - mean) / sqrt(var + eps) * scale + bias) or ``"BiasFree"``
  (x / sqrt(var + eps) * scale, no mean subtraction and no bias). Statistics are computed in float32.
  """
  kind: str = "WithBias"
  epsilon: float = 1e-5
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.kind not in ("WithBias", "BiasFree"):
      raise ValueError(f"LayerNorm kind must be 'WithBias' or 'BiasFree', got {self.kind!r}")
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    out_dtype = self.dtype or x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    inv = lax.rsqrt(var + self.epsilon)
    if self.kind == "BiasFree":
      y = x32 * inv * scale
    else:
      bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
      y = (x32 - mean) * inv * scale + bias
    return y.astype(out_dtype)


def pad_to_multiple(x, multiple: int, mode: str = "reflect"):
  """Pads NHWC ``x`` at the bottom/right to a multiple of ``multiple``; returns (padded, (H, W)) for cropping.

  Reflect padding (the reference test code's choice) needs the pad to be smaller than the side; for tiny
  images it falls back to symmetric padding repeated as often as needed.
  """
  h, w = x.shape[1], x.shape[2]
  ph, pw = (-h) % multiple, (-w) % multiple
  if ph == 0 and pw == 0:
    return x, (h, w)
  if mode == "reflect" and (ph >= h or pw >= w):
    mode = "symmetric"
  xp = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
  return xp, (h, w)


def crop_to(x, size: Sequence[int]):
  """Crops NHWC ``x`` back to ``size = (H, W)`` (top-left corner)."""
  return x[:, : size[0], : size[1], :]
