"""XLA:CPU kernels: depthwise convolutions as shifted multiply-adds with a hand-written backward pass.

Selected by ``Policy(conv="shift")`` (the CPU policy, ``models/policy.py``); ``Policy(conv="taps")`` uses the same
forward pass without the CPU guards and with JAX's own backward pass (a portable candidate for accelerators:
elementwise work XLA fuses, nothing for a convolution autotuner to search). The networks never call this module
directly, only through ``layers.Conv2d`` / ``layers.depthwise_conv``. Everything here computes what
``lax.conv_general_dilated`` computes (tests/test_cpu_kernels.py checks values and gradients); the reasons are
XLA:CPU's: its grouped convolution and its reductions over pixel axes run single-threaded and unvectorised,
while elementwise loops over whole arrays vectorise and use every core. Measurements: README "Performance".
"""
from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
from jax import lax

Pair = Tuple[int, int]
KERNEL_GRAD_ROW_BLOCK = 16  # rows per block of the many-tap kernel gradient (see depthwise_kernel_grad)
_UINT_OF_WIDTH = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def materialize(x):
  """Makes XLA:CPU compute ``x`` once into its own buffer (the value is ``x`` itself).

  XLA:CPU fuses a cheap elementwise producer into every consumer, so an array read by several fusions (a
  convolution's output read by the next layer and by the backward pass's ReLU mask, say) is recomputed in each
  of them: with a 25-tap depthwise convolution that is 25 slices and products per consumer. It also removes
  ``optimization_barrier`` before fusion, so a barrier does not stop this. The operand of a conditional is
  always materialised, so ``x`` goes through a ``lax.cond`` whose predicate is true for every value but is not
  known to XLA (``bits(x[0]) | 1 != 0``); the other branch never runs.
  """
  if x.size == 0:
    return x
  first = lax.bitcast_convert_type(x.reshape(-1)[0], _UINT_OF_WIDTH[x.dtype.itemsize])
  return lax.cond((first | 1) != 0, lambda v: v, jnp.zeros_like, x)


def grouped_conv_shift(x, kernel, *, padding: Pair, dilation: Pair, guards: bool = True,
                       custom_backward: bool = True):
  """Grouped convolution (stride 1, one output channel per group) as a sum of shifted multiplies.

  x: [B, H, W, G * m]; kernel: [kh, kw, m, G] (group g reads input channels g*m .. g*m+m-1, as in PyTorch).
  ``guards``: materialise the padded input and shared results (:func:`materialize`); ``custom_backward``: the
  hand-written backward pass (else JAX differentiates the taps).
  """
  kh, kw, m, groups = kernel.shape
  cin = x.shape[-1]
  if cin != groups * m:
    raise ValueError(f"input has {cin} channels, kernel expects {groups} groups of {m}")
  if m > 1:
    # One depthwise pass over all G * m input channels (input channel g*m + j gets kernel[:, :, j, g]), then
    # the m partial results of each group added as explicit slices: faster on XLA:CPU than a reduce over a
    # minor axis of size m or m separate passes over strided channel slices.
    flat = jnp.transpose(kernel, (0, 1, 3, 2)).reshape(kh, kw, 1, groups * m)
    ys = grouped_conv_shift(x, flat, padding=padding, dilation=dilation, guards=guards,
                            custom_backward=custom_backward)
    ys = ys.reshape(*ys.shape[:3], groups, m)
    return sum(ys[..., j] for j in range(m))
  (ph, pw), (dh, dw) = padding, dilation
  if custom_backward and 0 <= ph <= dh * (kh - 1) and 0 <= pw <= dw * (kw - 1):
    return _depthwise_shift(x, kernel, tuple(padding), tuple(dilation), guards)
  return _depthwise_taps(x, kernel, padding, dilation, guards)


def _depthwise_taps(x, kernel, padding: Pair, dilation: Pair, guards: bool = True):
  """The forward pass: one shifted slice times one kernel tap per tap, summed."""
  kh, kw, _, _ = kernel.shape
  (ph, pw), (dh, dw) = padding, dilation
  b, h, w, cin = x.shape
  out_h = h + 2 * ph - dh * (kh - 1)
  out_w = w + 2 * pw - dw * (kw - 1)
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  if guards and (ph or pw):
    # Materialise the padded input: fused into every tap's slice, the pad costs a bounds check per element
    # and per tap and XLA:CPU's loop stops vectorising (and compiles longer).
    xp = lax.optimization_barrier(xp)
  taps = kernel[:, :, 0, :]
  acc = None
  for i in range(kh):
    for j in range(kw):
      window = lax.slice(xp, (0, i * dh, j * dw, 0), (b, i * dh + out_h, j * dw + out_w, cin))
      term = window * taps[i, j]
      acc = term if acc is None else acc + term
  return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_shift(x, kernel, padding, dilation, guards):
  """Depthwise shift convolution whose backward pass is cheap to compile and run on XLA:CPU.

  Input gradient: the same shifted-tap correlation of the output gradient with the flipped kernel. Kernel
  gradient: per tap, the product of the shifted input and the output gradient summed by :func:`halving_sum`
  (XLA:CPU's convolution-based kernel gradient and plain ``jnp.sum`` are both several times slower).
  """
  return _depthwise_taps(x, kernel, padding, dilation, guards)


def _guard(x, guards: bool):
  return materialize(x) if guards else x


def _depthwise_shift_fwd(x, kernel, padding, dilation, guards):
  return _guard(_depthwise_taps(x, kernel, padding, dilation, guards), guards), (x, kernel)


def _depthwise_shift_bwd(padding, dilation, guards, res, g):
  x, kernel = res
  # Materialise the incoming gradient: otherwise XLA may fuse (recompute) its producer into every tap's loop.
  g = _guard(g, guards)
  kh, kw, _, _ = kernel.shape
  (ph, pw), (dh, dw) = padding, dilation
  back_pad = (dh * (kh - 1) - ph, dw * (kw - 1) - pw)
  dx = _depthwise_taps(g, kernel[::-1, ::-1], back_pad, dilation, guards)
  dk = depthwise_kernel_grad(x, g, kernel.shape, padding, dilation)
  return _guard(dx.astype(x.dtype), guards), dk.astype(kernel.dtype)


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


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


def depthwise_kernel_grad(x, g, kernel_shape, padding: Pair, dilation: Pair):
  """Gradient of a depthwise convolution's ``[kh, kw, 1, C]`` kernel: ``sum_pixels shift_ij(x_padded) * g``.

  Up to 9 taps: one product-and-halving-sum per tap over the whole batch. More taps (5x5, 7x7): a loop over
  blocks of :data:`KERNEL_GRAD_ROW_BLOCK` output rows, and inside it a loop over the taps (``lax.scan`` with
  dynamic slices: as fast as unrolled taps on XLA:CPU and several times quicker to compile). Each block of
  the padded input and of ``g`` is read by every tap while it is still in cache; tap-outer loops stream both
  arrays from memory once per tap.
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
