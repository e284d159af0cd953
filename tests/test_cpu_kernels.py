"""The XLA:CPU kernels (``models/cpu_kernels.py``): values and gradients of ``lax.conv_general_dilated``, and the
materialising conditional's identity and effect."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_restore.models import cpu_kernels, layers

# (kernel, padding, dilation, in_channels, out_channels): the depthwise / grouped convolutions DRSformer uses.
CONV_CASES = {
    "dw3x3": (3, 1, 1, 10, 10), "dw5x5": (5, 2, 1, 10, 10), "dw7x7": (7, 3, 1, 6, 6),
    "dil5x5": (5, 4, 2, 6, 6), "dil7x7": (7, 6, 2, 6, 6),
    "msfn3x3_g2": (3, 1, 1, 10, 5), "msfn5x5_g2": (5, 2, 1, 10, 5),  # 2 inputs per group (odd group count)
}


def _rand(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("case,height", [("dw3x3", 9), ("dw7x7", 9), ("dil5x5", 9), ("msfn3x3_g2", 9),
                                         ("msfn5x5_g2", 9), ("dw5x5", 32), ("dil7x7", 24), ("msfn5x5_g2", 48)])
def test_shift_conv_gradients_match_xla(case, height):
  """The shift path's custom backward (flipped-kernel input gradient; halving-sum kernel gradient, unrolled for
  <= 9 taps and above that looped over taps inside blocks of 16 or 8 rows: heights 32, 24 and 48 cover several
  blocks of each size) and JAX's autodiff of the same taps (``Policy(conv="taps")``) equal autodiff of
  ``lax.conv_general_dilated``."""
  k, pad, dil, cin, cout = CONV_CASES[case]
  x = jnp.asarray(_rand(3, (2, height, 14, cin)))
  kernel = jnp.asarray(_rand(4, (k, k, cin // cout, cout)))
  probe = jnp.asarray(_rand(5, (2, height, 14, cout)))

  def grads(conv):
    return jax.jit(jax.grad(lambda k, v: jnp.sum(conv(v, k) * probe), argnums=(0, 1)))(kernel, x)

  shift = lambda v, k: cpu_kernels.grouped_conv_shift(v, k, padding=(pad, pad), dilation=(dil, dil))
  taps = lambda v, k: cpu_kernels.grouped_conv_shift(v, k, padding=(pad, pad), dilation=(dil, dil), guards=False,
                                                     custom_backward=False)  # Policy(conv="taps")
  xla = lambda v, k: layers.conv_reference(v, k, padding=pad, dilation=dil, groups=cout)
  (gk_shift, gx_shift), (gk_taps, gx_taps), (gk_xla, gx_xla) = grads(shift), grads(taps), grads(xla)
  for got, want in [(gk_shift, gk_xla), (gx_shift, gx_xla), (gk_taps, gk_xla), (gx_taps, gx_xla)]:
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("n", [1, 2, 7, 64, 129])
def test_halving_sum_is_a_sum(n):
  x = _rand(6, (n, 3, 5))
  np.testing.assert_allclose(np.asarray(cpu_kernels.halving_sum(jnp.asarray(x))), x.astype(np.float64).sum(0),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32])
def test_materialize_is_the_identity(dtype):
  """Values (including a first element of 0, -0.0 or NaN, which steer the always-true predicate), gradients
  and vmap pass through unchanged."""
  x = np.asarray(_rand(7, (2, 3, 4)) * 10).astype(jnp.dtype(dtype))
  firsts = [0, 5] + ([-0.0, np.nan] if jnp.issubdtype(dtype, jnp.floating) else [-1])
  for first in firsts:
    x.reshape(-1)[0] = first
    y = jax.jit(cpu_kernels.materialize)(jnp.asarray(x))
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(y).view(np.uint8), x.view(np.uint8))  # bit for bit, NaN too
  batched = jax.vmap(cpu_kernels.materialize)(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(batched).view(np.uint8), x.view(np.uint8))
  if jnp.issubdtype(dtype, jnp.floating):
    g = jax.grad(lambda v: jnp.sum(cpu_kernels.materialize(v).astype(jnp.float32) * 3.0))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(g, np.float32), 3.0)


def test_materialize_computes_a_shared_producer_once():
  """A 25-tap shifted sum read by three consumers is computed by one fused loop once it goes through
  ``materialize`` (XLA:CPU would otherwise fuse the taps into each consumer)."""
  xp = jnp.asarray(_rand(8, (1, 20, 20, 8)))
  g = jnp.asarray(_rand(9, (1, 16, 16, 8)))

  def program(materialize):
    def f(xp, g):
      y = sum(xp[:, i:i + 16, j:j + 16] * (i + 5 * j + 1.0) for i in range(5) for j in range(5))
      y = materialize(y)
      return jnp.maximum(y, 0), jnp.where(y > 0, g, 0.0) * 2, jnp.pad(jnp.where(y > 0, g, 0.0), 2)
    return jax.jit(f)

  def heavy_computations(fn):
    text = fn.lower(xp, g).compile().as_text()
    return sum(1 for comp in text.split("\n\n") if comp.count(" slice(") >= 25)

  plain, once = program(lambda v: v), program(cpu_kernels.materialize)
  for a, b in zip(plain(xp, g), once(xp, g)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert heavy_computations(once) == 1, heavy_computations(once)
  assert heavy_computations(plain) >= 1
