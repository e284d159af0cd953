"""Top-k sparse self-attention (TKSA) of DRSformer, and its dense-softmax special case (Restormer's MDTA).

Attention runs across channels (a ``c_head x c_head`` matrix per head), so its cost is linear in pixel count.
The JAX formulation computes exactly what the reference computes, but differently:

* The L2 normalisation of q and k along the pixels is applied to the small Gram matrix
  (``q.k / (max(|q|, eps) * max(|k|, eps))``) instead of to the full feature maps.
* q, k, v stay in the NHWC layout ``[B, N, heads, c_head]`` (N = H*W); ``q k^T`` and ``attn v`` are batched
  matrix products contracting / producing the pixel axis directly (with one head, plain ``[B, N, C]``
  products), so the output lands in NHWC without explicit transposes of full-size tensors.
* One ``lax.top_k`` with ``k = max(k_r)`` gives all thresholds; ``mask_r = attn >= (k_r-th largest of the row)``
  replaces the reference's scatter (identical except on exact ties). Masks carry no gradient, as in the reference.
* The row maximum is in every mask, so one ``exp(attn - max)`` serves all masked softmaxes, and
  ``sum_r w_r softmax_r(attn) @ v == (sum_r w_r softmax_r(attn)) @ v`` needs a single product with v.
"""
from __future__ import annotations

import fractions
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from sparse_restore.models import layers
from sparse_restore.models.layers import Conv2d
from sparse_restore.models.policy import Policy

DEFAULT_TOPK_RATIOS: Tuple[float, ...] = (1 / 2, 2 / 3, 3 / 4, 4 / 5)
NORM_EPS = 1e-12  # F.normalize's eps


def topk_counts(channels: int, ratios: Sequence[float]) -> Tuple[int, ...]:
  """Entries kept per attention row for each ratio: ``int(channels * r)`` as the reference computes it.

  The reference writes ``int(C/2)``, ``int(C*2/3)``, ``int(C*3/4)``, ``int(C*4/5)``; for an integer ``C`` these
  are ``floor(C * p / q)`` with the ratio as the fraction ``p/q``. Ratios given as floats (``2/3``) are turned
  back into that fraction first, so ``C * 0.666...`` rounding down past an integer cannot change ``k``.
  """
  counts = []
  for r in ratios:
    frac = fractions.Fraction(r).limit_denominator(1000)
    if not 0 < frac <= 1:
      raise ValueError(f"TKSA top-k ratios must be in (0, 1], got {r!r}")
    k = (channels * frac.numerator) // frac.denominator
    if k < 1:
      raise ValueError(f"TKSA: {channels} channels per head keep int({channels} * {r}) = 0 entries per row; "
                       "use fewer heads or larger top-k ratios")
    counts.append(k)
  return tuple(counts)


class TKSA(nn.Module):
  """Top-k sparse attention (DRSformer, CVPR 2023, Sec. 3.2); ``topk_ratios=()`` gives dense MDTA (Restormer).

  Input and output ``[B, H, W, dim]``. Parameters mirror the reference: ``temperature [heads, 1, 1]``,
  ``qkv`` (1x1), ``qkv_dwconv`` (depthwise 3x3), ``project_out`` (1x1), and one scalar weight ``attn{i}``
  (shape ``[1]``, init 0.2) per top-k ratio.
  """
  dim: int
  num_heads: int
  bias: bool = False
  topk_ratios: Optional[Sequence[float]] = DEFAULT_TOPK_RATIOS
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    heads = self.num_heads
    if c != self.dim or c % heads:
      raise ValueError(f"TKSA: input has {c} channels; expected dim={self.dim} divisible by {heads} heads")
    ch = c // heads
    ratios = tuple(self.topk_ratios or ())
    counts = topk_counts(ch, ratios) if ratios else ()

    temperature = self.param("temperature", nn.initializers.ones, (heads, 1, 1), jnp.float32)
    qkv = Conv2d(3 * c, 1, use_bias=self.bias, policy=self.policy, name="qkv")(x)
    qkv = Conv2d(3 * c, 3, padding=1, groups=3 * c, use_bias=self.bias, policy=self.policy, name="qkv_dwconv")(qkv)
    qkv = qkv.reshape(b, h * w, 3, heads, ch)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, ch]

    # Cosine similarity of channels (per head) times the temperature, in float32.
    if heads == 1:
      gram = jnp.einsum("bnc,bnd->bcd", q[:, :, 0], k[:, :, 0], preferred_element_type=jnp.float32)[:, None]
    else:
      gram = jnp.einsum("bnhi,bnhj->bhij", q, k, preferred_element_type=jnp.float32)
    q_norm = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(q.astype(jnp.float32)), axis=1)), NORM_EPS)
    k_norm = jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(k.astype(jnp.float32)), axis=1)), NORM_EPS)
    attn = gram / (q_norm[..., :, None] * k_norm[..., None, :]) * temperature

    if counts:
      weights = self._sparse_weights(attn, counts)
    else:
      weights = nn.softmax(attn, axis=-1)

    weights = weights.astype(v.dtype)
    if heads == 1:
      out = jnp.einsum("bnd,bcd->bnc", v[:, :, 0], weights[:, 0])
    else:
      out = jnp.einsum("bhij,bnhj->bnhi", weights, v)
    out = out.reshape(b, h, w, c)
    return Conv2d(c, 1, use_bias=self.bias, policy=self.policy, name="project_out")(out)

  def _sparse_weights(self, attn, counts):
    """``sum_r attn_r * softmax(attn restricted to the k_r largest entries of each row)``, float32."""
    fixed = lax.stop_gradient(attn)
    top_values, _ = layers.top_k(fixed, max(counts), self.policy)
    e = jnp.exp(attn - top_values[..., :1])  # The row maximum is kept by every mask.
    combined = jnp.zeros_like(attn)
    for i, k in enumerate(counts):
      scale = self.param(f"attn{i + 1}", nn.initializers.constant(0.2), (1,), jnp.float32)
      kept = jnp.where(fixed >= top_values[..., k - 1:k], e, 0.0)
      combined = combined + kept * (scale / jnp.sum(kept, axis=-1, keepdims=True))
    return combined
