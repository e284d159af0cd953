"""ASSA: the adaptive sparse self-attention of AST (Zhou et al., CVPR 2024), on non-overlapping windows.

Window attention with a learned relative-position bias (as in Swin/Uformer). The scores feed two branches:
a dense softmax branch and an unnormalised squared-ReLU branch (sparse: negative scores are dropped), mixed
by ``softmax(w)`` of a learned 2-vector ``w``. Shifted windows use the Swin region mask (-100 between tokens
that came from different image regions), added to the scores before both branches.

Helpers here (window partition / reverse, relative-position index, shift-region ids and masks) work on NHWC
images with explicit H and W, so non-square images are handled. Indices and region ids are small NumPy
constants computed from static shapes at trace time; the (nW, N, N) mask itself is built in-graph from the ids
(``shifted_window_mask`` is its NumPy twin), so no image-sized constant is embedded in the program.
Also the small helpers shared by AST's layers: ``dense_init``, ``LayerParams``, ``largest_divisor``.
"""
from __future__ import annotations

from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparse_restore.models.policy import Policy


# PyTorch's Linear init in AST (`trunc_normal_(std=.02)` truncated at +-2 absolute, i.e. +-100 std): a normal.
dense_init = nn.initializers.normal(stddev=0.02)
MASK_VALUE = -100.0


def relative_position_index(win_size: int) -> np.ndarray:
  """(N, N) int32 index into the ((2ws-1)^2, heads) bias table, N = ws^2 (Swin/Uformer layout).

  Entry (i, j) encodes the offset of token i from token j inside a window (tokens row-major):
  ``(dh + ws - 1) * (2ws - 1) + (dw + ws - 1)``.
  """
  ws = int(win_size)
  rows, cols = np.divmod(np.arange(ws * ws), ws)
  dh = rows[:, None] - rows[None, :] + ws - 1
  dw = cols[:, None] - cols[None, :] + ws - 1
  return (dh * (2 * ws - 1) + dw).astype(np.int32)


def _region_1d(n: int, win_size: int, shift: int) -> np.ndarray:
  """Region of each coordinate along one axis of a cyclically shifted image: 0 (body), 1, 2 (wrapped strips)."""
  pos = np.arange(n)
  return (pos >= n - win_size).astype(np.int32) + (pos >= n - shift).astype(np.int32)


def shift_region_ids(height: int, width: int, win_size: int, shift: int) -> np.ndarray:
  """(nW, N) region id of every token of every window of the rolled image (windows row-major).

  Two tokens of one window may attend to each other only when their ids agree.
  """
  ids = 3 * _region_1d(height, win_size, shift)[:, None] + _region_1d(width, win_size, shift)[None, :]
  ids = ids.reshape(height // win_size, win_size, width // win_size, win_size).transpose(0, 2, 1, 3)
  return ids.reshape(-1, win_size * win_size)


def shifted_window_mask(height: int, width: int, win_size: int, shift: int) -> np.ndarray:
  """(nW, N, N) float32 additive mask for shifted windows: 0 within a region, -100 across regions."""
  ids = shift_region_ids(height, width, win_size, shift)
  return np.where(ids[:, :, None] != ids[:, None, :], MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x, win_size: int):
  """(B, H, W, C) -> (B * nW, ws * ws, C); windows ordered batch, window-row, window-column."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // win_size, win_size, w // win_size, win_size, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(-1, win_size * win_size, c)


def window_reverse(windows, win_size: int, height: int, width: int):
  """Inverse of :func:`window_partition`: (B * nW, ws * ws, C) -> (B, H, W, C)."""
  c = windows.shape[-1]
  nh, nw = height // win_size, width // win_size
  x = windows.reshape(-1, nh, nw, win_size, win_size, c)
  x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
  return x.reshape(-1, height, width, c)


def largest_divisor(n: int, fits) -> int:
  """The largest divisor d of n with ``fits(d)`` (1 if none)."""
  return max([d for d in range(1, n + 1) if n % d == 0 and fits(d)], default=1)


class LayerParams(nn.Module):
  """Creates one layer's ``kernel`` (and ``bias``) under the layer's own name and returns them, so the layer can
  be applied as a pure function (inside ``lax.map``) while keeping the checkpoint's parameter names."""
  kernel_shape: Tuple[int, ...]
  kernel_init: Any = dense_init
  use_bias: bool = True

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", self.kernel_init, self.kernel_shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.kernel_shape[-1],), jnp.float32) if self.use_bias else None
    return kernel, bias


class LinearProjection(nn.Module):
  """Parameters of the query and key/value projections, ``to_q`` (C -> C) and ``to_kv`` (C -> 2C).

  Channel ``head * d + j`` of a projection is element j of that head; ``to_kv``'s first C outputs are the keys,
  the last C the values (as in the reference). Returns ((wq, bq), (wkv, bkv)).
  """
  dim: int
  use_bias: bool = True

  @nn.compact
  def __call__(self):
    return (LayerParams((self.dim, self.dim), use_bias=self.use_bias, name="to_q")(),
            LayerParams((self.dim, 2 * self.dim), use_bias=self.use_bias, name="to_kv")())


def _linear(x, kernel, bias):
  y = jnp.dot(x, kernel)
  return y if bias is None else y + bias


class ASSA(nn.Module):
  """Adaptive sparse self-attention on windows (``WindowAttention_sparse`` of the reference).

  Attributes:
    dim: channels C (= heads * head_dim).
    num_heads: attention heads h.
    win_size: window side ws (N = ws^2 tokens per window).
    qkv_bias: biases in ``to_q`` / ``to_kv``.
    policy: ``policy.dtype`` is the compute dtype of the projections and of ``A @ v``; the score path (scores,
      bias, mask, softmax, squared ReLU, branch mixing) always runs in float32. When the float32 scores of all
      windows exceed half of ``policy.chunk_bytes`` (if not 0), the windows are processed in chunks whose scores
      fit, with ``lax.map`` (same result, far less memory traffic on CPU).

  Params: ``qkv/to_q``, ``qkv/to_kv``, ``proj`` (Dense kernels/biases), ``relative_position_bias_table``
  ((2ws-1)^2, h), ``w`` (2,).
  """
  dim: int
  num_heads: int
  win_size: int
  qkv_bias: bool = True
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, windows, region_ids=None):
    """windows: (B * nW, N, C) in :func:`window_partition` order. region_ids: None, or (nW, N) ids of a shifted
    window layout (:func:`shift_region_ids`): scores between tokens of different regions get -100."""
    bsz, n, c = windows.shape
    ws, h = self.win_size, self.num_heads
    d = c // h
    if n != ws * ws or c != self.dim or c % h:
      raise ValueError(f"ASSA: windows of shape {windows.shape} do not fit dim={self.dim}, heads={h}, win={ws}")
    table = self.param("relative_position_bias_table", dense_init, ((2 * ws - 1) ** 2, h), jnp.float32)
    w = self.param("w", nn.initializers.ones, (2,), jnp.float32)
    (wq, bq), (wkv, bkv) = LinearProjection(self.dim, self.qkv_bias, name="qkv")()
    wp, bp = LayerParams((self.dim, self.dim), name="proj")()
    dt = self.policy.compute_dtype or jnp.result_type(windows.dtype, jnp.float32)
    windows = windows.astype(dt)
    wq, bq, wkv, bkv, wp, bp = (None if a is None else a.astype(dt) for a in (wq, bq, wkv, bkv, wp, bp))

    # One constant-index gather per call: (N*N, h) -> (h, N, N).
    bias = jnp.transpose(jnp.take(table, relative_position_index(ws).reshape(-1), axis=0).reshape(n, n, h),
                         (2, 0, 1))
    mix = jax.nn.softmax(w)

    def attend(x, ids):
      """x: (b, N, C) windows; ids: (b, N) region ids or None -> (b, N, C)."""
      b = x.shape[0]
      q = _linear(x, wq, bq).reshape(b, n, h, d).transpose(0, 2, 1, 3) * jnp.asarray(d ** -0.5, dt)
      kv = _linear(x, wkv, bkv).reshape(b, n, 2, h, d).transpose(2, 0, 3, 1, 4)
      scores = jnp.matmul(q, jnp.swapaxes(kv[0], -1, -2), preferred_element_type=jnp.float32) + bias
      if ids is not None:
        mask = jnp.where(ids[:, :, None] != ids[:, None, :], jnp.float32(MASK_VALUE), jnp.float32(0.0))
        scores = scores + mask[:, None]
      soft = jax.nn.softmax(scores, axis=-1)
      attn = mix[0] * soft + mix[1] * jnp.square(jnp.maximum(scores, 0.0))
      out = jnp.matmul(attn.astype(dt), kv[1]).transpose(0, 2, 1, 3).reshape(b, n, c)
      return _linear(out, wp, bp)

    n_w = bsz if region_ids is None else region_ids.shape[0]
    if bsz % n_w:
      raise ValueError(f"ASSA: {bsz} windows are not a whole number of {n_w}-window images")
    budget = self.policy.chunk_bytes // 2
    per = largest_divisor(n_w, lambda k: k * h * n * n * 4 <= budget) if budget > 0 else n_w
    if per == bsz:
      return attend(windows, None if region_ids is None else jnp.asarray(region_ids))
    chunks = windows.reshape(bsz // per, per, n, c)
    if region_ids is None:
      out = lax.map(lambda xc: attend(xc, None), chunks)
    else:
      # Chunk k covers windows k*per .. of image k // (nW / per); its ids are block k % (nW / per).
      ids = jnp.asarray(region_ids).reshape(n_w // per, per, n)
      which = np.arange(bsz // per) % (n_w // per)
      out = lax.map(lambda a: attend(a[0], ids[a[1]]), (chunks, jnp.asarray(which)))
    return out.reshape(bsz, n, c)
