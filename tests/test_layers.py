"""Shared building blocks (``models/layers.py``) against independent references (lax / torch / numpy)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_restore import models
from sparse_restore.models import layers

# The torch comparisons below pin single layers down; without PyTorch the same layouts (depthwise, dilated and
# grouped convolutions, PixelShuffle/Unshuffle, both LayerNorm kinds) are proven by the stored outputs of the
# authors' networks: tests/test_drsformer.py::test_matches_pytorch_reference and test_ast.py::test_parity_with_reference.
TORCH_REASON = ("PyTorch not installed (optional, see README Installation); the fixture-output parity tests of "
                "test_drsformer.py / test_ast.py cover these layers without it")

# (kernel, padding, dilation, in_channels, out_channels, groups): the convolutions DRSformer uses.
CONV_CASES = {
    "dw1x1": (1, 0, 1, 6, 6, 6),             # MEFC sep_conv_1x1
    "dw3x3": (3, 1, 1, 10, 10, 10),          # TKSA qkv_dwconv, MSFN dwconv3x3
    "dw5x5": (5, 2, 1, 10, 10, 10),          # MSFN dwconv5x5
    "dw7x7": (7, 3, 1, 6, 6, 6),             # MEFC sep_conv_7x7
    "dil3x3": (3, 2, 2, 6, 6, 6),            # MEFC dil_conv_3x3
    "dil5x5": (5, 4, 2, 6, 6, 6),            # MEFC dil_conv_5x5
    "dil7x7": (7, 6, 2, 6, 6, 6),            # MEFC dil_conv_7x7
    "msfn3x3_g2": (3, 1, 1, 10, 5, 5),       # MSFN dwconv3x3_1: 2 inputs per group (odd group count)
    "msfn5x5_g2": (5, 2, 1, 10, 5, 5),       # MSFN dwconv5x5_1
    "dense3x3": (3, 1, 1, 4, 6, 1),          # patch_embed / Downsample / output
    "dense1x1": (1, 0, 1, 7, 5, 1),          # project_in / project_out
}


def _rand(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("impl", ["shift", "xla"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_matches_reference(case, impl):
  k, pad, dil, cin, cout, groups = CONV_CASES[case]
  x = _rand(0, (2, 11, 13, cin))
  kernel = _rand(1, (k, k, cin // groups, cout))
  bias = _rand(2, (cout,))
  conv = layers.Conv2d(cout, k, padding=pad, dilation=dil, groups=groups, conv_impl=impl)
  y = conv.apply({"params": {"kernel": kernel, "bias": bias}}, x)
  want = layers.conv_reference(x, kernel, padding=pad, dilation=dil, groups=groups) + bias
  assert y.shape == (2, 11, 13, cout)
  np.testing.assert_allclose(np.asarray(y), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["dw7x7", "dil5x5", "msfn5x5_g2", "dense3x3"])
def test_conv_reference_matches_torch(case):
  """The lax reference itself agrees with torch.nn.functional.conv2d (kernel layout and grouping)."""
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  k, pad, dil, cin, cout, groups = CONV_CASES[case]
  x = _rand(3, (1, 9, 12, cin))
  kernel = _rand(4, (k, k, cin // groups, cout))
  got = np.asarray(layers.conv_reference(x, kernel, padding=pad, dilation=dil, groups=groups))
  torch_w = torch.from_numpy(np.transpose(kernel, (3, 2, 0, 1)).copy())
  want = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch_w, padding=pad,
                                    dilation=dil, groups=groups).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_matches_torch(r):
  x = _rand(5, (2, 4, 6, 3 * r * r))
  y = _rand(6, (2, 4 * r, 6 * r, 5))
  np.testing.assert_array_equal(np.asarray(layers.pixel_shuffle(layers.pixel_unshuffle(jnp.asarray(y), r), r)), y)
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  torch_out = torch.nn.PixelShuffle(r)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_array_equal(np.asarray(layers.pixel_shuffle(jnp.asarray(x), r)), torch_out.transpose(0, 2, 3, 1))
  torch_out = torch.nn.PixelUnshuffle(r)(torch.from_numpy(y.transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_array_equal(np.asarray(layers.pixel_unshuffle(jnp.asarray(y), r)),
                                torch_out.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_channel_layernorm_matches_torch(kind):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  x = _rand(7, (2, 5, 3, 12)) * 3 + 1.5  # A non-zero mean tells the two kinds apart.
  scale, bias = _rand(8, (12,)), _rand(9, (12,))
  params = {"scale": scale} if kind == "BiasFree" else {"scale": scale, "bias": bias}
  got = np.asarray(layers.ChannelLayerNorm(kind).apply({"params": params}, x))
  t = torch.from_numpy(x)
  if kind == "WithBias":
    want = torch.nn.functional.layer_norm(t, (12,), torch.from_numpy(scale), torch.from_numpy(bias), eps=1e-5)
  else:
    want = t / torch.sqrt(t.var(-1, keepdim=True, unbiased=False) + 1e-5) * torch.from_numpy(scale)
  np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(37, 50), (33, 41), (40, 48), (3, 5)])
def test_pad_to_multiple_and_crop_round_trip(size):
  h, w = size
  x = _rand(10, (1, h, w, 3))
  padded, orig = layers.pad_to_multiple(jnp.asarray(x), 8)
  assert orig == (h, w)
  assert padded.shape[1] % 8 == 0 and padded.shape[2] % 8 == 0
  assert padded.shape[1] - h < 8 and padded.shape[2] - w < 8
  np.testing.assert_array_equal(np.asarray(padded)[:, :h, :w], x)
  if padded.shape[1] - h < h and padded.shape[2] - w < w:  # Reflect padding as the reference test script.
    want = np.pad(x, ((0, 0), (0, padded.shape[1] - h), (0, padded.shape[2] - w), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(np.asarray(padded), want)
  np.testing.assert_array_equal(np.asarray(layers.crop_to(padded, orig)), x)


def _random_params(model, x, seed=0):
  """Random float32 params of the right shapes (``model.init`` of a whole network compiles slowly)."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"]

  def draw(path, a):
    if path[-1].key == "kernel":
      return jnp.asarray(rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1])), jnp.float32)
    return jnp.asarray(rng.uniform(0.1, 2.0, a.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def test_full_tiny_model_shift_and_xla_agree():
  """Every conv kind of DRSformer (TKSA, MSFN, all MEFC experts) through both implementations."""
  cfg = dict(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 4, 8))
  x = jnp.asarray(np.random.default_rng(11).uniform(size=(1, 16, 24, 3)).astype(np.float32))
  shift = models.create("drsformer", conv_impl="shift", **cfg)
  xla = models.create("drsformer", conv_impl="xla", **cfg)
  params = _random_params(shift, x)
  a = np.asarray(jax.jit(shift.apply)({"params": params}, x))
  b = np.asarray(jax.jit(xla.apply)({"params": params}, x))
  assert np.isfinite(a).all()
  assert np.abs(a - np.asarray(x)).max() > 1e-3  # The network does something.
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("case,height", [("dw3x3", 9), ("dw7x7", 9), ("dil5x5", 9), ("msfn3x3_g2", 9),
                                         ("msfn5x5_g2", 9), ("dw5x5", 32), ("dil7x7", 24), ("msfn5x5_g2", 48)])
def test_shift_conv_gradients_match_xla(case, height):
  """The shift path's custom backward (flipped-kernel input gradient; halving-sum kernel gradient, unrolled for
  <= 9 taps and above that looped over taps inside blocks of 16 or 8 rows: heights 32, 24 and 48 cover several
  blocks of each size) equals autodiff of ``lax.conv_general_dilated``."""
  k, pad, dil, cin, cout, groups = CONV_CASES[case]
  x = jnp.asarray(_rand(3, (2, height, 14, cin)))
  kernel = jnp.asarray(_rand(4, (k, k, cin // groups, cout)))
  probe = jnp.asarray(_rand(5, (2, height, 14, cout)))

  def loss(impl):
    conv = layers.Conv2d(cout, k, padding=pad, dilation=dil, groups=groups, use_bias=False, conv_impl=impl)
    return jax.jit(jax.grad(lambda p, v: jnp.sum(conv.apply({"params": p}, v) * probe), argnums=(0, 1)))

  (gk_shift, gx_shift), (gk_xla, gx_xla) = loss("shift")({"kernel": kernel}, x), loss("xla")({"kernel": kernel}, x)
  for got, want in [(gk_shift["kernel"], gk_xla["kernel"]), (gx_shift, gx_xla)]:
    assert float(jnp.abs(want).max()) > 0
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("n", [1, 2, 7, 64, 129])
def test_halving_sum_is_a_sum(n):
  x = _rand(6, (n, 3, 5))
  np.testing.assert_allclose(np.asarray(layers.halving_sum(jnp.asarray(x))), x.astype(np.float64).sum(0),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32])
def test_cpu_materialize_is_the_identity(dtype):
  """Values (including a first element of 0, -0.0 or NaN, which steer the always-true predicate), gradients
  and vmap pass through unchanged."""
  x = np.asarray(_rand(7, (2, 3, 4)) * 10).astype(jnp.dtype(dtype))
  firsts = [0, 5] + ([-0.0, np.nan] if jnp.issubdtype(dtype, jnp.floating) else [-1])
  for first in firsts:
    x.reshape(-1)[0] = first
    y = jax.jit(layers.cpu_materialize)(jnp.asarray(x))
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(y).view(np.uint8), x.view(np.uint8))  # bit for bit, NaN too
  batched = jax.vmap(layers.cpu_materialize)(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(batched).view(np.uint8), x.view(np.uint8))
  if jnp.issubdtype(dtype, jnp.floating):
    g = jax.grad(lambda v: jnp.sum(layers.cpu_materialize(v).astype(jnp.float32) * 3.0))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(g, np.float32), 3.0)


def test_cpu_materialize_computes_a_shared_producer_once():
  """A 25-tap shifted sum read by three consumers is computed by one fused loop once it goes through
  ``cpu_materialize`` (XLA:CPU would otherwise fuse the taps into each consumer)."""
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

  plain, once = program(lambda v: v), program(layers.cpu_materialize)
  for a, b in zip(plain(xp, g), once(xp, g)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert heavy_computations(once) == 1, heavy_computations(once)
  assert heavy_computations(plain) >= 1
