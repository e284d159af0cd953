"""FRFN: the feature refinement feed-forward network of AST (Zhou et al., CVPR 2024), and Uformer's LeFF.

Both work on NHWC images (B, H, W, C); the reference's token sequences (B, H*W, C) in row-major order are the
same data, so per-token linear layers act on the last axis directly.

FRFN ("enhance and ease"):
  1. a 3x3 full convolution (no bias) on the first C//4 channels, the rest passed through (partial conv);
  2. ``linear1``: C -> 2 * hidden, then exact (erf) GELU on all of it;
  3. split into halves x1, x2; x1 -> depthwise 3x3 conv (bias) -> GELU;
  4. gate ``x1 * x2`` -> ``linear2``: hidden -> C.
LeFF (Uformer, used by AST checkpoints built with ``token_mlp='leff'``): linear1 (C -> hidden) + GELU,
depthwise 3x3 + GELU, linear2 (hidden -> C).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparse_restore.models.assa import LayerParams, dense_init, resolve_chunk_bytes
from sparse_restore.models.layers import Conv2d, conv_reference, cpu_barrier, grouped_conv_shift, resolve_conv_impl

Dtype = Any


def chunk_rows(height: int, row_bytes: int, budget: int, min_rows: int = 8) -> int:
  """Rows per chunk: the largest divisor R of ``height`` (R >= ``min_rows``) whose (R + 2)-row intermediate fits
  in ``budget`` bytes (the smallest such divisor if none fits); ``height`` (no chunking) when the whole image
  fits, when ``budget`` is 0, or when no divisor gives at least two chunks."""
  if budget <= 0 or height * row_bytes <= budget:
    return height
  cands = [r for r in range(min_rows, height // 2 + 1) if height % r == 0]
  if not cands:
    return height
  fitting = [r for r in cands if (r + 2) * row_bytes <= budget]
  return max(fitting) if fitting else min(cands)



def gelu(x):
  """PyTorch ``nn.GELU()``: the exact form ``x/2 * (1 + erf(x/sqrt(2)))`` (Flax/JAX default to the tanh
  approximation).

  Same function as ``jax.nn.gelu(x, approximate=False)``, written with ``erf`` as PyTorch does: JAX's version
  goes through ``erfc``, which XLA:CPU expands into several separately materialised full-size temporaries,
  while ``erf`` is emitted inline and fuses with its neighbours (one pass over memory).
  """
  return 0.5 * x * (1.0 + lax.erf(x * np.float32(1.0 / np.sqrt(2.0))).astype(x.dtype))


def _depthwise(x, kernel, padding, conv_impl):
  """Depthwise 3x3 conv (one output per channel) with the implementation ``conv_impl`` of ``layers.Conv2d``."""
  if resolve_conv_impl(conv_impl) == "shift":
    return grouped_conv_shift(x, kernel, padding=padding)
  return conv_reference(x, kernel, padding=padding, groups=x.shape[-1])


class FRFN(nn.Module):
  """Feature refinement feed-forward network.

  Attributes:
    dim: channels C of input and output.
    hidden_dim: width of the gated branch (4C in AST).
    conv_impl: implementation of the depthwise conv (see ``layers.Conv2d``).
    dtype: compute dtype (params stay float32).
    chunk_bytes: memory budget of the 2*hidden-channel intermediate. Larger images are processed in chunks of
      rows (``lax.map``; each chunk recomputes the conv half of ``linear1`` on one halo row above and below),
      which keeps the working set small: same result, less peak memory, and on CPU ~2x less time for an
      isolated FRFN on a 256x256 grid (~10% for the whole AST_B at 512x512, none at 256x256).
      None = auto (``assa.resolve_chunk_bytes``: 4 MiB on CPU, off elsewhere); 0 = off.

  Params: ``partial_conv3`` (3x3, C//4 -> C//4, no bias), ``linear1`` (C -> 2*hidden), ``dwconv`` (3x3 depthwise
  on hidden channels), ``linear2`` (hidden -> C).
  """
  dim: int
  hidden_dim: int
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None
  chunk_bytes: Optional[int] = None

  @nn.compact
  def __call__(self, x):
    if self.dtype is not None:
      x = x.astype(self.dtype)
    dim_conv, hd = self.dim // 4, self.hidden_dim
    x1 = Conv2d(dim_conv, 3, padding=1, use_bias=False, conv_impl=self.conv_impl, dtype=self.dtype,
                name="partial_conv3")(x[..., :dim_conv])
    x = jnp.concatenate([x1, x[..., dim_conv:].astype(x1.dtype)], axis=-1)
    w1, b1 = LayerParams((self.dim, 2 * hd), dense_init, name="linear1")()
    wd, bd = LayerParams((3, 3, 1, hd), nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                     name="dwconv")()
    w2, b2 = LayerParams((hd, self.dim), dense_init, name="linear2")()
    dt = x.dtype
    w1, b1, wd, bd, w2, b2 = (a.astype(dt) for a in (w1, b1, wd, bd, w2, b2))

    # linear1's two output halves as separate products (x_1 feeds the conv, x_2 the gate).
    w1a, w1b, b1a, b1b = w1[:, :hd], w1[:, hd:], b1[:hd], b1[hd:]

    def gated(rows, row_valid=None):
      """linear1 -> GELU -> split -> dwconv(x_1) -> GELU -> gate -> linear2. With ``row_valid`` (a halo row on
      each side), rows outside the image are zeroed and the conv pads only along W."""
      h1 = gelu(jnp.dot(rows, w1a) + b1a)
      if row_valid is None:
        h2 = gelu(jnp.dot(rows, w1b) + b1b)
        pads = ((0, 0), (1, 1), (1, 1), (0, 0))
      else:
        h2 = gelu(jnp.dot(rows[:, 1:-1], w1b) + b1b)
        h1 = h1 * row_valid[None, :, None, None].astype(dt)
        pads = ((0, 0), (0, 0), (1, 1), (0, 0))
      # The barrier makes XLA materialise the padded activations once; fused into the 9 conv taps, the GELU
      # and padding would be recomputed per tap (measured 5-10x slower on CPU).
      h1 = _depthwise(cpu_barrier(jnp.pad(h1, pads)), wd, (0, 0), self.conv_impl)
      return jnp.dot(gelu(h1 + bd) * h2, w2) + b2

    b, height, width, c = x.shape
    rows = chunk_rows(height, width * 2 * hd * jnp.dtype(dt).itemsize, resolve_chunk_bytes(self.chunk_bytes))
    if rows == height:
      return gated(x)
    n = height // rows
    xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))

    # Row validity of every chunk's rows (halo rows outside the image are zeroed), a constant.
    global_row = np.arange(n)[:, None] * rows - 1 + np.arange(rows + 2)[None, :]
    valid = ((global_row >= 0) & (global_row < height)).astype(np.float32)

    def chunk(args):
      j, row_valid = args
      return gated(lax.dynamic_slice_in_dim(xp, j * rows, rows + 2, axis=1), row_valid)

    out = lax.map(chunk, (jnp.arange(n), jnp.asarray(valid)))  # (n, B, rows, W, C)
    return jnp.transpose(out, (1, 0, 2, 3, 4)).reshape(b, height, width, c)


class LeFF(nn.Module):
  """Locally-enhanced feed-forward network (Uformer); AST's constructor default ``token_mlp='leff'``.

  Params: ``linear1`` (C -> hidden), ``dwconv`` (3x3 depthwise), ``linear2`` (hidden -> C).
  """
  dim: int
  hidden_dim: int
  conv_impl: str = "auto"
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x):
    x = gelu(nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=dense_init, name="linear1")(x))
    x = cpu_barrier(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))  # see FRFN
    x = gelu(Conv2d(self.hidden_dim, 3, padding=0, groups=self.hidden_dim, conv_impl=self.conv_impl,
                    dtype=self.dtype, name="dwconv")(x))
    return nn.Dense(self.dim, dtype=self.dtype, kernel_init=dense_init, name="linear2")(x)
