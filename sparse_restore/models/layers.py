"""Building blocks shared by the networks: PyTorch-layout convolutions, pixel (un)shuffle, layer norms.

Convolutions keep PyTorch's semantics (explicit symmetric padding, dilation, groups) with Flax's kernel layout
``[kh, kw, in_channels // groups, out_channels]``, so converted checkpoints map one to one.

Grouped / depthwise convolutions have two implementations that compute the same function:

* ``"xla"``: ``lax.conv_general_dilated`` with ``feature_group_count``. GPUs and TPUs lower this well.
* ``"shift"``: a sum of shifted, channel-wise multiplies (one per kernel tap). XLA:CPU's grouped convolution
  is ~10x slower than this (see the project's performance notes), so it is the CPU choice.

``conv_impl="auto"`` (the default everywhere) picks ``"shift"`` on CPU and ``"xla"`` elsewhere, at trace time.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
IntPair = Union[int, Tuple[int, int]]
CONV_IMPLS = ("auto", "xla", "shift")


def _pair(v: IntPair) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def resolve_conv_impl(conv_impl: str) -> str:
  """Maps ``"auto"`` to the fast implementation for the default backend."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
  if conv_impl == "auto":
    return "shift" if jax.default_backend() == "cpu" else "xla"
  return conv_impl


def cpu_barrier(x):
  """``lax.optimization_barrier`` on XLA:CPU, the identity elsewhere.

  On CPU the barrier keeps XLA's simplifier from rewriting ``x`` into its consumers before fusion (e.g. a pad
  folded into each of nine conv taps' slices, which then bounds-check every element); GPU/TPU keep XLA's own
  decisions. XLA:CPU removes barriers before its fusion pass, so a barrier does not stop a fused producer from
  being recomputed in several consumers: :func:`cpu_materialize` does that.
  """
  return lax.optimization_barrier(x) if jax.default_backend() == "cpu" else x


_UINT_OF_WIDTH = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def cpu_materialize(x):
  """On XLA:CPU, makes XLA compute ``x`` once into its own buffer; the identity elsewhere.

  XLA:CPU fuses a cheap elementwise producer into every consumer, so an array read by several fusions (a
  convolution's output read by the next layer and by the backward pass's ReLU mask, say) is recomputed in each
  of them: with a 25-tap depthwise convolution that is 25 slices and products per consumer. It also removes
  ``optimization_barrier`` before fusion, so a barrier does not stop this. The operand of a conditional is
  always materialised, so ``x`` goes through a ``lax.cond`` whose predicate is true for every value but is not
  known to XLA (``bits(x[0]) | 1 != 0``); the other branch never runs.
  """
  if jax.default_backend() != "cpu" or x.size == 0:
    return x
  first = lax.bitcast_convert_type(x.reshape(-1)[0], _UINT_OF_WIDTH[x.dtype.itemsize])
  return lax.cond((first | 1) != 0, lambda v: v, jnp.zeros_like, x)


def conv_reference(x, kernel, *, stride=1, padding=0, dilation=1, groups=1):
  """Plain ``lax.conv_general_dilated`` (NHWC / HWIO): the ground truth the fast paths are tested against."""
  sh, sw = _pair(stride)
  ph, pw = _pair(padding)
  dh, dw = _pair(dilation)
  return lax.conv_general_dilated(
      x, kernel, window_strides=(sh, sw), padding=((ph, ph), (pw, pw)), rhs_dilation=(dh, dw),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)


def grouped_conv_shift(x, kernel, *, padding=0, dilation=1):
  """Grouped convolution (stride 1, one output channel per group) as a sum of shifted multiplies.

  x: [B, H, W, G * m]; kernel: [kh, kw, m, G] (group g reads input channels g*m .. g*m+m-1, as in PyTorch).
  """
  kh, kw, m, groups = kernel.shape
  ph, pw = _pair(padding)
  dh, dw = _pair(dilation)
  b, h, w, cin = x.shape
  if cin != groups * m:
    raise ValueError(f"input has {cin} channels, kernel expects {groups} groups of {m}")
  if m > 1:
    # One depthwise pass over all G * m input channels (input channel g*m + j gets kernel[:, :, j, g]), then
    # the m partial results of each group added as explicit slices: XLA:CPU's reduce over a minor axis of
    # size m is 20x slower than this, and m separate passes over strided channel slices are ~15% slower.
    flat = jnp.transpose(kernel, (0, 1, 3, 2)).reshape(kh, kw, 1, groups * m)
    ys = grouped_conv_shift(x, flat, padding=padding, dilation=dilation).reshape(*x.shape[:3], groups, m)
    return sum(ys[..., j] for j in range(m))
  if 0 <= ph <= dh * (kh - 1) and 0 <= pw <= dw * (kw - 1):
    return _depthwise_shift(x, kernel, (ph, pw), (dh, dw))
  return _depthwise_shift_fwd_only(x, kernel, (ph, pw), (dh, dw))


def _depthwise_shift_fwd_only(x, kernel, padding, dilation):
  kh, kw, _, _ = kernel.shape
  (ph, pw), (dh, dw) = padding, dilation
  b, h, w, cin = x.shape
  out_h = h + 2 * ph - dh * (kh - 1)
  out_w = w + 2 * pw - dw * (kw - 1)
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  if ph or pw:
    # Materialise the padded input: fused into every tap's slice, the pad costs a bounds check per element
    # and per tap and XLA:CPU's loop stops vectorising (measured 30x slower at 7x7, and 3x longer to compile).
    xp = lax.optimization_barrier(xp)
  taps = kernel[:, :, 0, :]
  acc = None
  for i in range(kh):
    for j in range(kw):
      window = lax.slice(xp, (0, i * dh, j * dw, 0), (b, i * dh + out_h, j * dw + out_w, cin))
      term = window * taps[i, j]
      acc = term if acc is None else acc + term
  return acc


class Conv2d(nn.Module):
  """``torch.nn.Conv2d`` in NHWC with a Flax kernel ``[kh, kw, in // groups, out]``.

  Attributes mirror PyTorch's arguments. 1x1 convolutions run as a matrix product; grouped ones with one output
  channel per group use ``conv_impl`` (see the module docstring).
  """
  features: int
  kernel_size: IntPair = 1
  stride: IntPair = 1
  padding: IntPair = 0
  dilation: IntPair = 1
  groups: int = 1
  use_bias: bool = True
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # PyTorch's default

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise ValueError(f"{self.name}: channels in={cin} out={self.features} not divisible by groups={self.groups}")
    kh, kw = _pair(self.kernel_size)
    kernel = self.param("kernel", self.kernel_init, (kh, kw, cin // self.groups, self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

    # Initialisation only needs shapes (the output is usually discarded): the plain XLA convolution traces and
    # compiles much faster than the shifted-tap formulation and gives the same params.
    impl = "xla" if self.is_initializing() else resolve_conv_impl(self.conv_impl)
    if (kh, kw) == (1, 1) and self.groups == 1 and _pair(self.stride) == (1, 1) and _pair(self.padding) == (0, 0):
      y = jnp.dot(x, kernel[0, 0])
    elif (self.groups > 1 and self.groups == self.features and _pair(self.stride) == (1, 1)
          and impl == "shift"):
      y = grouped_conv_shift(x, kernel, padding=self.padding, dilation=self.dilation)
    else:
      y = conv_reference(x, kernel, stride=self.stride, padding=self.padding, dilation=self.dilation,
                         groups=self.groups)
    if bias is not None:
      y = y + bias
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shift(x, kernel, padding, dilation):
  """Depthwise shift convolution whose backward pass is cheap to compile and run on XLA:CPU.

  Input gradient: the same shifted-tap correlation of the output gradient with the flipped kernel. Kernel
  gradient: per tap, the product of the shifted input and the output gradient summed by :func:`halving_sum`
  (XLA:CPU's reductions over the pixel axes run single-threaded and unvectorised: its convolution-based kernel
  gradient and plain ``jnp.sum`` were both measured 5-20x slower).
  """
  return _depthwise_shift_fwd_only(x, kernel, padding, dilation)


def _depthwise_shift_fwd(x, kernel, padding, dilation):
  return cpu_materialize(_depthwise_shift_fwd_only(x, kernel, padding, dilation)), (x, kernel)


def halving_sum(x):
  """Sum over the leading axis by repeated halving (``x[:n/2] + x[n/2:]``).

  Each level is an elementwise add, which XLA:CPU vectorises and spreads over all cores; the pairwise order
  also keeps float32 rounding error lower than a sequential sum.
  """
  while x.shape[0] > 1:
    n = x.shape[0]
    half = n // 2
    total = x[:half] + x[half:2 * half]
    if n % 2:
      total = total.at[0].add(x[-1])
    x = total
  return x[0]


KERNEL_GRAD_ROW_BLOCK = 16  # rows per block of the many-tap kernel gradient (see depthwise_kernel_grad)


def depthwise_kernel_grad(x, g, kernel_shape, padding, dilation):
  """Gradient of a depthwise convolution's ``[kh, kw, 1, C]`` kernel: ``sum_pixels shift_ij(x_padded) * g``.

  Up to 9 taps: one product-and-halving-sum per tap over the whole batch. More taps (5x5, 7x7): a loop over
  blocks of :data:`KERNEL_GRAD_ROW_BLOCK` output rows, and inside it a loop over the taps (``lax.scan`` with
  dynamic slices: as fast as unrolled taps on XLA:CPU and several times quicker to compile). Each block of
  the padded input and of ``g`` is read by every tap while it is still in cache; tap-outer loops stream both
  arrays from memory once per tap (measured 1.5-2x slower for 5x5 and 7x7 kernels at 128x128).
  """
  kh, kw, _, c = kernel_shape
  (ph, pw), (dh, dw) = padding, dilation
  b, h, w, _ = g.shape
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))

  def tap(window, gb):
    rows = (window * gb).astype(jnp.float32).reshape(-1, w, c)
    return jnp.sum(halving_sum(rows), axis=0)

  if kh * kw > 9:
    offsets = jnp.asarray([(i * dh, j * dw) for i in range(kh) for j in range(kw)], jnp.int32)
    rows = next((r for r in (KERNEL_GRAD_ROW_BLOCK, 8) if h % r == 0 and h > r), h)
    span = rows + dh * (kh - 1)

    def block(total, start):
      xb = lax.dynamic_slice_in_dim(xp, start, span, axis=1)
      gb = lax.dynamic_slice_in_dim(g, start, rows, axis=1)

      def one_tap(carry, offset):
        return carry, tap(lax.dynamic_slice(xb, (0, offset[0], offset[1], 0), (b, rows, w, c)), gb)

      _, taps = lax.scan(one_tap, None, offsets)
      return total + taps, None

    total, _ = lax.scan(block, jnp.zeros((kh * kw, c), jnp.float32), jnp.arange(0, h, rows, dtype=jnp.int32))
    return total.reshape(kh, kw, 1, c)
  if ph or pw:
    xp = lax.optimization_barrier(xp)
  taps = [tap(lax.slice(xp, (0, i * dh, j * dw, 0), (b, i * dh + h, j * dw + w, c)), g)
          for i in range(kh) for j in range(kw)]
  return jnp.stack(taps).reshape(kh, kw, 1, c)


def _depthwise_shift_bwd(padding, dilation, res, g):
  x, kernel = res
  # Materialise the incoming gradient: otherwise XLA may fuse (recompute) its producer into every tap's loop.
  g = cpu_materialize(g)
  kh, kw, _, _ = kernel.shape
  (ph, pw), (dh, dw) = padding, dilation
  back_pad = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
  dx = _depthwise_shift_fwd_only(g, kernel[::-1, ::-1], back_pad, dilation)
  dk = depthwise_kernel_grad(x, g, kernel.shape, padding, dilation)
  return cpu_materialize(dx.astype(x.dtype)), dk.astype(kernel.dtype)


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


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
