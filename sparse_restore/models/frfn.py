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

import functools


import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparse_restore.models import layers
from sparse_restore.models.assa import LayerParams, dense_init
from sparse_restore.models.layers import Conv2d
from sparse_restore.models.policy import Policy



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


class FRFN(nn.Module):
  """Feature refinement feed-forward network.

  Attributes:
    dim: channels C of input and output.
    hidden_dim: width of the gated branch (4C in AST).
    policy: compute dtype and depthwise-conv implementation. When the 2*hidden-channel intermediate exceeds
      ``policy.chunk_bytes`` (if not 0), it is processed in chunks of rows (``lax.map``; each chunk recomputes
      the conv half of ``linear1`` on one halo row above and below): same result, a working set that stays
      in cache, less peak memory.

  Params: ``partial_conv3`` (3x3, C//4 -> C//4, no bias), ``linear1`` (C -> 2*hidden), ``dwconv`` (3x3 depthwise
  on hidden channels), ``linear2`` (hidden -> C).
  """
  dim: int
  hidden_dim: int
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    if self.policy.compute_dtype is not None:
      x = x.astype(self.policy.compute_dtype)
    dim_conv, hd = self.dim // 4, self.hidden_dim
    x1 = Conv2d(dim_conv, 3, padding=1, use_bias=False, policy=self.policy,
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
        pad_rows = 1
      else:
        h2 = gelu(jnp.dot(rows[:, 1:-1], w1b) + b1b)
        h1 = h1 * row_valid[None, :, None, None].astype(dt)
        pad_rows = 0
      h1 = layers.depthwise_conv(h1, wd, self.policy, padding=(pad_rows, 1))
      return jnp.dot(gelu(h1 + bd) * h2, w2) + b2

    b, height, width, c = x.shape
    rows = chunk_rows(height, width * 2 * hd * jnp.dtype(dt).itemsize, self.policy.chunk_bytes)
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
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, dtype=self.policy.compute_dtype, kernel_init=dense_init)
    x = gelu(dense(self.hidden_dim, name="linear1")(x))
    x = gelu(Conv2d(self.hidden_dim, 3, padding=1, groups=self.hidden_dim, policy=self.policy, name="dwconv")(x))
    return dense(self.dim, name="linear2")(x)
