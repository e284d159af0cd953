"""Padding, tiling with blending, self-ensemble and memory checks of sparse_restore.restore."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_restore import restore
from sparse_restore.models.policy import Policy


class LocalNet(nn.Module):
  """Three 3x3 convolutions: receptive-field radius 3, no global statistics. Called like the registry's networks
  (``train`` keyword, ignored)."""
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x, train: bool = False):
    dtype = self.policy.compute_dtype
    h = jnp.tanh(nn.Conv(8, (3, 3), dtype=dtype)(x))
    h = jnp.tanh(nn.Conv(8, (3, 3), dtype=dtype)(h))
    return x + nn.Conv(3, (3, 3), dtype=dtype)(h)


class Recorder:
  """Wraps an apply_fn and records the input shapes it is called with."""

  def __init__(self, fn):
    self.fn, self.shapes = fn, []

  def __call__(self, x):
    self.shapes.append(tuple(x.shape))
    return self.fn(x)


def random_params(module, shape, seed=0):
  """Random, sensibly scaled parameters from the abstract tree (no init compilation): kernels ~ PyTorch's
  default U(+-1/sqrt(fan_in)), norm scales ~1, DRSformer temperatures / top-k weights near their inits."""
  abstract = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape, jnp.float32)))["params"]
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      bound = 1.0 / np.sqrt(np.prod(a.shape[:-1]))
      return rng.uniform(-bound, bound, a.shape).astype(np.float32)
    lo, hi = {"bias": (-0.05, 0.05), "scale": (0.8, 1.2), "temperature": (0.5, 1.5)}.get(name, (0.1, 0.3))
    return rng.uniform(lo, hi, a.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


@pytest.fixture(scope="module")
def local_fn():
  m = LocalNet()
  params = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
  return restore.make_apply_fn(m, params)


def _image(h, w, seed=0):
  return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_odd_size_round_trips_exactly():
  img = _image(33, 47)
  seen = Recorder(lambda x: x)
  out = restore.restore_image(seen, img, multiple=8)
  assert seen.shapes == [(1, 40, 48, 3)]
  assert out.shape == img.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out, img)
  # Reflect padding at the bottom/right: row 33 mirrors row 31.
  padded = restore.pad_to_multiple(img, 8)
  np.testing.assert_array_equal(padded[33, :47], img[31])
  np.testing.assert_array_equal(padded[:33, 47], img[:, 45])
  # Tiny images (pad >= side) fall back to symmetric padding.
  tiny = _image(3, 2)
  np.testing.assert_array_equal(restore.restore_image(lambda x: x, tiny, multiple=8), tiny)
  # Tiled identity: weights divide out (float32 rounding only).
  np.testing.assert_allclose(restore.restore_image(lambda x: x, img, multiple=8, tile=16, overlap=8), img,
                             rtol=0, atol=1e-6)


def test_ensemble_of_identity_is_identity():
  img = _image(33, 47, 1)
  seen = Recorder(lambda x: x)
  out = restore.restore_image(seen, img, multiple=8, ensemble=True, batch=4)
  np.testing.assert_array_equal(out, img)
  assert sorted(set(seen.shapes)) == [(4, 40, 48, 3), (4, 48, 40, 3)]  # 4 upright + 4 transposed.


def test_ensemble_averages_the_eight_transforms():
  """f adds 1 to the first row it sees: each image edge is 'first row' under 2 of the 8 transforms."""
  def top_bump(x):
    y = np.array(x)
    y[:, 0] += 1.0
    return y
  img = _image(16, 24, 2)
  out = restore.restore_image(top_bump, img, multiple=8, ensemble=True)
  edge = np.zeros((16, 24), np.float32)
  edge[0] += 0.25
  edge[-1] += 0.25
  edge[:, 0] += 0.25
  edge[:, -1] += 0.25
  np.testing.assert_allclose(out, img + edge[..., None], atol=1e-6)
  for k in range(8):
    x = img[None]
    np.testing.assert_array_equal(restore.inverse_dihedral(restore.dihedral(x, k), k), x)
  assert len({restore.dihedral(img[None], k).tobytes() for k in range(8)}) == 8


def test_tile_plan():
  plan = restore.plan_tiles(70, 93, 8, tile=30, overlap=10)
  assert (plan.tile_h, plan.tile_w, plan.overlap) == (32, 32, 16)  # Rounded up to the multiple.
  assert (plan.padded_h, plan.padded_w) == (72, 96)                 # Same padding as without tiles.
  assert plan.ys == (0, 16, 32, 40) and plan.xs == (0, 16, 32, 48, 64)
  for starts, size in ((plan.ys, plan.padded_h), (plan.xs, plan.padded_w)):
    assert all(s % 8 == 0 for s in starts) and starts[-1] + 32 == size
  small = restore.plan_tiles(20, 300, 8, tile=64, overlap=16)
  assert (small.tile_h, small.tile_w, small.count) == (24, 64, 6)
  assert restore.plan_tiles(20, 30, 8).count == 1
  with pytest.raises(ValueError, match="smaller than the tile"):
    restore.plan_tiles(100, 100, 8, tile=16, overlap=16)
  w = restore.axis_window(32, 16, True, True)
  assert w[:4].max() == 0 and w[-4:].max() == 0 and np.all(w[16:16] == 1)
  ramp = restore.axis_window(32, 16, True, False)[:16]
  np.testing.assert_allclose(ramp + ramp[::-1], 1.0, atol=1e-7)  # Rise + fall of neighbours sum to 1.


@pytest.mark.parametrize("tile,overlap,batch,size", [(32, 16, 3, (70, 93)), (40, 16, 4, (64, 96)),
                                                     (24, 16, 1, (33, 47))])
def test_tiled_equals_untiled_for_a_local_network(local_fn, tile, overlap, batch, size):
  img = _image(*size, seed=tile)
  full = restore.restore_image(local_fn, img, multiple=8)
  seen = Recorder(local_fn)
  tiled = restore.restore_image(seen, img, multiple=8, tile=tile, overlap=overlap, batch=batch)
  np.testing.assert_allclose(tiled, full, rtol=0, atol=1e-5)
  plan = restore.plan_tiles(*size, 8, tile, overlap)
  assert len(set(seen.shapes)) == 1  # One compilation for every tile (the last batch is padded).
  assert seen.shapes[0][0] == min(batch, plan.count)


def test_tiled_ensemble_matches_untiled_ensemble(local_fn):
  img = _image(40, 56, 3)
  full = restore.restore_image(local_fn, img, multiple=8, ensemble=True)
  tiled = restore.restore_image(local_fn, img, multiple=8, tile=24, overlap=16, batch=2, ensemble=True)
  np.testing.assert_allclose(tiled, full, rtol=0, atol=1e-5)


def test_progress_and_batches(local_fn):
  done = []
  img = _image(48, 48, 4)
  restore.restore_image(local_fn, img, multiple=8, tile=24, overlap=8, batch=3, progress=done.append)
  assert sum(done) == restore.plan_tiles(48, 48, 8, 24, 8).count == 9 and done == [3, 3, 3]


def test_memory_precheck_suggests_tiling(local_fn, monkeypatch):
  est = local_fn.estimate_bytes((1, 64, 64, 3))
  assert est is not None and est > 64 * 64 * 3 * 4
  monkeypatch.setattr(restore, "available_memory_bytes", lambda device=None: 1000)
  with pytest.raises(restore.InsufficientMemoryError, match="--tile 512"):
    restore.restore_image(local_fn, _image(64, 64), multiple=8)


def test_out_of_memory_at_run_time_is_translated():
  def oom(x):
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes.")
  with pytest.raises(restore.InsufficientMemoryError, match="tile"):
    restore.restore_image(oom, _image(16, 16), multiple=8)
  assert not restore.is_out_of_memory(ValueError("shapes differ"))


def test_make_apply_fn_bfloat16():
  m = LocalNet()
  params = m.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 8, 3)))["params"]
  img = _image(16, 24, 6)
  f32 = restore.restore_image(restore.make_apply_fn(m, params), img, multiple=8)
  bf = restore.make_apply_fn(m, params, jnp.bfloat16)
  assert bf.module.policy.compute_dtype == jnp.bfloat16
  b16 = restore.restore_image(bf, img, multiple=8)
  assert b16.dtype == np.float32
  assert 0 < np.abs(b16 - f32).max() < 5e-2


def test_model_multiple_uses_pad_multiple():
  class A:
    size_multiple = 8

  class B:
    size_multiple = 1
    pad_multiple = 128

  assert restore.model_multiple(A()) == 8 and restore.model_multiple(B()) == 128
  assert restore.model_multiple(object()) == 1


# Tiled vs whole-image DRSformer (global channel statistics in TKSA, global pooling in MEFC): measured with
# this tiny random-weight network (dim 8, blocks (1,1,1,1), heads (1,1,1,1), 96x80 image, tile 48, overlap 16):
# max |diff| 1.4e-2, mean 2.4e-3 (outputs span about [-0.1, 1.05]). Bound below with a margin.
DRSFORMER_TILE_MAX = 0.05
DRSFORMER_TILE_MEAN = 0.01


def test_drsformer_tiled_close_to_untiled():
  from sparse_restore import models
  # The portable policy (XLA convolutions) compiles ~3x faster on CPU than the CPU policy's shift kernels.
  module = models.create("drsformer", dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 1, 1, 1))
  assert restore.model_multiple(module) == 8
  params = random_params(module, (1, 16, 16, 3))
  fn = restore.make_apply_fn(module, params)
  img = _image(96, 80, 5)
  full = restore.restore_image(fn, img, multiple=8)
  tiled = restore.restore_image(fn, img, multiple=8, tile=48, overlap=16, batch=4)
  diff = np.abs(tiled - full)
  print(f"DRSformer tiny tiled vs untiled: max {diff.max():.3e} mean {diff.mean():.3e}")
  assert diff.max() < DRSFORMER_TILE_MAX and diff.mean() < DRSFORMER_TILE_MEAN
  assert diff.max() > 1e-6  # Global statistics do change the output.


def test_memory_message_when_already_tiled(local_fn, monkeypatch):
  monkeypatch.setattr(restore, "available_memory_bytes", lambda device=None: 1000)
  with pytest.raises(restore.InsufficientMemoryError, match="--batch 1"):
    restore.restore_image(local_fn, _image(64, 64), multiple=8, tile=32, overlap=8, batch=2)
  with pytest.raises(restore.InsufficientMemoryError, match="--tile 16"):
    restore.restore_image(local_fn, _image(64, 64), multiple=8, tile=32, overlap=8, batch=1)
