"""Shared building blocks (``models/layers.py``) under both policies against independent references (lax / torch /
numpy)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_restore import models
from sparse_restore.models import layers, policy
from sparse_restore.models.policy import Policy

POLICIES = {"xla": Policy(), "shift": policy.for_platform("cpu"), "taps": Policy(conv="taps")}

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


@pytest.mark.parametrize("impl", sorted(POLICIES))
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_matches_reference(case, impl):
  k, pad, dil, cin, cout, groups = CONV_CASES[case]
  x = _rand(0, (2, 11, 13, cin))
  kernel = _rand(1, (k, k, cin // groups, cout))
  bias = _rand(2, (cout,))
  conv = layers.Conv2d(cout, k, padding=pad, dilation=dil, groups=groups, policy=POLICIES[impl])
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


@pytest.mark.slow  # Two whole-network compilations (~25 s); the fixture parity tests run both policies by default.
def test_full_tiny_model_shift_and_xla_agree():
  """Every conv kind of DRSformer (TKSA, MSFN, all MEFC experts) through both implementations."""
  cfg = dict(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 4, 8))
  x = jnp.asarray(np.random.default_rng(11).uniform(size=(1, 16, 24, 3)).astype(np.float32))
  shift = models.create("drsformer", policy=POLICIES["shift"], **cfg)
  xla = models.create("drsformer", policy=POLICIES["xla"], **cfg)
  params = _random_params(shift, x)
  a = np.asarray(jax.jit(shift.apply)({"params": params}, x))
  b = np.asarray(jax.jit(xla.apply)({"params": params}, x))
  assert np.isfinite(a).all()
  assert np.abs(a - np.asarray(x)).max() > 1e-3  # The network does something.
  np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
