"""Feed-forward networks of the sparse Transformer block: MSFN (DRSformer) and the paper's Table 3 alternatives.

All take and return ``[B, H, W, dim]`` with ``hidden = int(dim * ffn_expansion_factor)`` (the reference's
expression, so 2.66 gives 127 for dim 48). Parameter names mirror the PyTorch modules.

* ``msfn``: mixed-scale FFN (DRSformer): parallel depthwise 3x3 / 5x5 branches with ReLU, cross-mixed halves,
  a second grouped 3x3 / 5x5 stage (two input channels per group), then a 1x1 projection.
* ``gdfn``: gated depthwise FFN (Restormer): ``project_out(gelu(x1) * x2)`` with ``x1, x2 = dwconv(project_in(x))``.
* ``dfn``: depthwise FFN: 1x1 -> depthwise 3x3 -> GELU -> 1x1.
* ``fn``: plain FFN: 1x1 -> GELU -> 1x1.

GELU is the exact (erf) form, as ``torch.nn.functional.gelu``.
"""
from __future__ import annotations

import functools
import flax.linen as nn
import jax
import jax.numpy as jnp

from sparse_restore.models.layers import Conv2d
from sparse_restore.models.policy import Policy

_gelu = functools.partial(jax.nn.gelu, approximate=False)


def hidden_features(dim: int, ffn_expansion_factor: float) -> int:
  """Hidden width of every FFN: ``int(dim * ffn_expansion_factor)``, as in the reference."""
  return int(dim * ffn_expansion_factor)


class _FFNBase(nn.Module):
  """Shared fields of the feed-forward variants."""
  dim: int
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  policy: Policy = Policy()

  def conv(self, features, kernel_size=1, groups=1, name=None):
    """A ``Conv2d`` with 'same' padding and this block's bias and policy."""
    return Conv2d(features, kernel_size, padding=kernel_size // 2, groups=groups, use_bias=self.bias,
                  policy=self.policy, name=name)


class MSFN(_FFNBase):
  """Mixed-scale feed-forward network (DRSformer, Sec. 3.3; reference class ``FeedForward``)."""

  @nn.compact
  def __call__(self, x):
    h = hidden_features(self.dim, self.ffn_expansion_factor)
    x = self.conv(2 * h, name="project_in")(x)
    a3 = nn.relu(self.conv(2 * h, 3, groups=2 * h, name="dwconv3x3")(x))
    a5 = nn.relu(self.conv(2 * h, 5, groups=2 * h, name="dwconv5x5")(x))
    x1 = jnp.concatenate([a3[..., :h], a5[..., :h]], axis=-1)
    x2 = jnp.concatenate([a3[..., h:], a5[..., h:]], axis=-1)
    x1 = nn.relu(self.conv(h, 3, groups=h, name="dwconv3x3_1")(x1))
    x2 = nn.relu(self.conv(h, 5, groups=h, name="dwconv5x5_1")(x2))
    return self.conv(self.dim, name="project_out")(jnp.concatenate([x1, x2], axis=-1))


class GDFN(_FFNBase):
  """Gated depthwise feed-forward network (Restormer, CVPR 2022)."""

  @nn.compact
  def __call__(self, x):
    h = hidden_features(self.dim, self.ffn_expansion_factor)
    x = self.conv(2 * h, name="project_in")(x)
    x = self.conv(2 * h, 3, groups=2 * h, name="dwconv")(x)
    return self.conv(self.dim, name="project_out")(_gelu(x[..., :h]) * x[..., h:])


class DFN(_FFNBase):
  """Depthwise feed-forward network: 1x1, depthwise 3x3, GELU, 1x1 (DRSformer Table 3 'DFN')."""

  @nn.compact
  def __call__(self, x):
    h = hidden_features(self.dim, self.ffn_expansion_factor)
    x = self.conv(h, name="project_in")(x)
    x = _gelu(self.conv(h, 3, groups=h, name="dwconv")(x))
    return self.conv(self.dim, name="project_out")(x)


class FN(_FFNBase):
  """Plain Transformer feed-forward network: 1x1, GELU, 1x1 (DRSformer Table 3 'FN')."""

  @nn.compact
  def __call__(self, x):
    h = hidden_features(self.dim, self.ffn_expansion_factor)
    return self.conv(self.dim, name="project_out")(_gelu(self.conv(h, name="project_in")(x)))


FFN_TYPES = {"msfn": MSFN, "gdfn": GDFN, "dfn": DFN, "fn": FN}


def ffn_class(ffn_type: str):
  """The feed-forward module class for ``ffn_type`` ('msfn' | 'gdfn' | 'dfn' | 'fn')."""
  try:
    return FFN_TYPES[ffn_type]
  except KeyError:
    raise ValueError(f"ffn_type must be one of {sorted(FFN_TYPES)}, got {ffn_type!r}") from None
