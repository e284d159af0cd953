"""PSNR/SSIM: MATLAB reference values, NumPy vs JAX agreement, edge cases of the protocols."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_restore import imageio
from sparse_restore import metrics

SETS = ("Rain200H", "Rain200L", "SPA-Data", "DID-DDN")

# Tolerances for the float32 JAX path against the float64 reference. Measured on all 12 sample pairs and the
# 6 protocol/channel combinations: max 5.6e-6 dB and 3.5e-7 SSIM.
PSNR_TOL = 1e-4
SSIM_TOL = 1e-6


def _pair(data_dir, name, i):
  base = data_dir / "derain_results_sample" / name
  return (imageio.read_uint8_rgb(str(base / "result" / f"{i}.png")),
          imageio.read_uint8_rgb(str(base / "target" / f"{i}.png")))


def test_matlab_reference_values(data_dir):
  """docs/evaluation.md: the MATLAB scripts' numbers for Rain200H/1.png."""
  res, tgt = _pair(data_dir, "Rain200H", 1)
  p, s = metrics.psnr_ssim(res, tgt, "restormer", "y")
  assert abs(p - 39.271349) < 1e-3 and abs(s - 0.970467) < 1e-5, (p, s)
  p, s = metrics.psnr_ssim(res, tgt, "rcdnet", "y")
  assert abs(p - 39.331564) < 1e-3 and abs(s - 0.971420) < 1e-5, (p, s)
  # Printed to 6 decimals they are exact; the restormer value needs MATLAB's double-precision rounding of a
  # Y that is exactly k + 1/2 (colour 220,208,216 in this image): exact rational rounding gives 39.271316.
  assert f"{metrics.psnr(res, tgt, 'restormer'):.6f}" == "39.271349"
  assert f"{metrics.ssim(res, tgt, 'restormer'):.6f}" == "0.970467"


def test_numpy_and_jax_agree_on_all_samples(data_dir):
  fn = jax.jit(metrics.psnr_ssim_jnp, static_argnums=(2, 3))
  worst_p = worst_s = 0.0
  for name in SETS:
    pairs = [_pair(data_dir, name, i) for i in (1, 2, 3)]
    res = np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0
    tgt = np.stack([p[1] for p in pairs]).astype(np.float32) / 255.0
    for protocol in metrics.PROTOCOLS:
      for channel in metrics.CHANNELS:
        pj, sj = fn(res, tgt, protocol, channel)
        assert pj.shape == (3,) and sj.shape == (3,)
        for k, (a, b) in enumerate(pairs):
          pn, sn = metrics.psnr_ssim(a, b, protocol, channel)
          worst_p = max(worst_p, abs(float(pj[k]) - pn))
          worst_s = max(worst_s, abs(float(sj[k]) - sn))
          assert abs(float(pj[k]) - pn) < PSNR_TOL, (name, k, protocol, channel, float(pj[k]), pn)
          assert abs(float(sj[k]) - sn) < SSIM_TOL, (name, k, protocol, channel, float(sj[k]), sn)
  print(f"max |jax - numpy|: {worst_p:.2e} dB, {worst_s:.2e} SSIM")


def test_protocols_differ_where_they_should(data_dir):
  res, tgt = _pair(data_dir, "Rain200H", 1)
  r = metrics.psnr(res, tgt, "restormer")
  c = metrics.psnr(res, tgt, "rcdnet")
  b = metrics.psnr(res, tgt, "basicsr")
  assert abs(c - b) < 1e-9  # Same unrounded Y; peak 1 on [0,1] == peak 255 on [0,255].
  assert abs(r - c) > 0.01  # Rounding Y to integers matters.
  # RGB: PSNR over all channels together, identical for all protocols on 8-bit images.
  rgb = [metrics.psnr(res, tgt, p, "rgb") for p in metrics.PROTOCOLS]
  assert max(rgb) - min(rgb) < 1e-9
  mse = np.mean((res.astype(np.float64) - tgt) ** 2)
  assert abs(rgb[0] - 10 * math.log10(255.0 ** 2 / mse)) < 1e-9
  # RGB SSIM is the mean of the per-channel SSIMs.
  per_channel = [metrics.ssim(res[..., c], tgt[..., c], "restormer") for c in range(3)]
  assert abs(metrics.ssim(res, tgt, "restormer", "rgb") - np.mean(per_channel)) < 1e-12


def test_rcdnet_downsamples_512_images_by_two(data_dir):
  assert metrics.rcdnet_downsample_factor(512, 512) == 2
  assert metrics.rcdnet_downsample_factor(321, 481) == 1
  assert metrics.rcdnet_downsample_factor(383, 1000) == 1   # 1.496 rounds to 1
  assert metrics.rcdnet_downsample_factor(384, 1000) == 2   # 1.5 rounds half up (MATLAB round)
  assert metrics.rcdnet_downsample_factor(100, 100) == 1
  res, tgt = _pair(data_dir, "DID-DDN", 1)
  assert res.shape == (512, 512, 3)
  y = [metrics._rgb2y_matlab_double(x.astype(np.float64) / 255.0) * 255.0 for x in (res, tgt)]
  # f = 2 on even sides: imfilter 'same' with a 2x2 box then every 2nd pixel == 2x2 block means.
  pooled = [v.reshape(256, 2, 256, 2).mean(axis=(1, 3)) for v in y]
  expected = metrics._ssim_plane_np(*pooled)
  got = metrics.ssim(res, tgt, "rcdnet")
  assert abs(got - expected) < 1e-12
  assert abs(got - metrics.ssim(res, tgt, "basicsr")) > 1e-3  # basicsr does not downsample.
  assert abs(got - 0.923152) < 1e-6
  jx = float(metrics.ssim_jnp(res.astype(np.float32) / 255, tgt.astype(np.float32) / 255, "rcdnet"))
  assert abs(jx - got) < SSIM_TOL


def test_box_downsample_odd_size_matches_symmetric_imfilter():
  rng = np.random.default_rng(0)
  x = rng.random((7, 9))
  # f = 2: kernel centre at (1, 1) (1-based), pad one row/column after, symmetric (edge repeated).
  xp = np.pad(x, ((0, 1), (0, 1)), mode="symmetric")
  same = (xp[:-1, :-1] + xp[1:, :-1] + xp[:-1, 1:] + xp[1:, 1:]) / 4
  np.testing.assert_allclose(metrics.box_downsample_np(x, 2), same[::2, ::2], rtol=0, atol=1e-15)
  # f = 3: centred, one row/column each side.
  xp = np.pad(x, 1, mode="symmetric")
  same = sum(xp[i:i + 7, j:j + 9] for i in range(3) for j in range(3)) / 9
  np.testing.assert_allclose(metrics.box_downsample_np(x, 3), same[::3, ::3], rtol=0, atol=1e-15)
  got = metrics._jnp_box_downsample(jnp.asarray(x[..., None], jnp.float32), 3)[..., 0]
  np.testing.assert_allclose(np.asarray(got), same[::3, ::3], atol=1e-6)


def test_identical_images_give_inf_and_one(data_dir):
  res, _ = _pair(data_dir, "Rain200H", 2)
  f = res.astype(np.float32) / 255.0
  fn = jax.jit(metrics.psnr_ssim_jnp, static_argnums=(2, 3))
  for protocol in metrics.PROTOCOLS:
    for channel in metrics.CHANNELS:
      assert metrics.psnr(res, res, protocol, channel) == math.inf
      assert metrics.ssim(res, res, protocol, channel) == 1.0
      p, s = fn(f, f, protocol, channel)
      assert math.isinf(float(p)) and float(p) > 0
      assert float(s) == 1.0
  assert metrics.summarize([{"psnr": math.inf, "ssim": 1.0}, {"psnr": 30.0, "ssim": 0.5}])["psnr"] == math.inf


def test_restormer_y_ties_match_matlab_double_rounding():
  """All 8-bit colours whose exact Y is k + 1/2: the integer JAX path reproduces the float64 reference."""
  v = np.arange(256, dtype=np.int64)
  g, b = np.meshgrid(v, v, indexing="ij")
  colours = []
  for r in range(256):
    tie = (65481 * r + 128553 * g + 24966 * b + 16 * 255000) % 255000 == 127500
    colours += [(r, gg, bb) for gg, bb in zip(g[tie], b[tie])]
  assert len(colours) == 194
  img = np.array(colours, np.int64).reshape(2, 97, 3)
  exact_half_up = (65481 * img[..., 0] + 128553 * img[..., 1] + 24966 * img[..., 2] + 16 * 255000 + 127500) // 255000
  ref = metrics._rgb2y_matlab_uint8(img.astype(np.float64))
  got = jax.jit(metrics._jnp_planes, static_argnums=(1, 2))(img.astype(np.float32) / 255.0, "restormer", "y")
  np.testing.assert_array_equal(np.asarray(got)[..., 0], ref)
  assert 0 < np.count_nonzero(ref < exact_half_up) < 194  # Both rounding directions occur.
  assert (220 * 256 + 208) * 256 + 216 in set(metrics._restormer_tie_down_codes().tolist())


def test_float_inputs_are_quantised_like_saved_pngs(data_dir):
  res, tgt = _pair(data_dir, "Rain200H", 3)
  rng = np.random.default_rng(1)
  # Float images that round to the same bytes (noise below half a level) score like the bytes.
  noisy = res.astype(np.float64) / 255.0 + rng.uniform(-0.45, 0.45, res.shape) / 255.0
  assert metrics.psnr(noisy, tgt, "restormer") == metrics.psnr(res, tgt, "restormer")
  assert np.array_equal(imageio.to_uint8(noisy.astype(np.float32)), res)


def test_bad_arguments():
  a = np.zeros((16, 16, 3), np.uint8)
  with pytest.raises(ValueError, match="protocol"):
    metrics.psnr(a, a, "matlab")
  with pytest.raises(ValueError, match="channel"):
    metrics.ssim(a, a, "restormer", "cb")
  with pytest.raises(ValueError, match="differ in size"):
    metrics.psnr(a, np.zeros((16, 17, 3), np.uint8))
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(np.zeros((8, 30, 3), np.uint8), np.zeros((8, 30, 3), np.uint8))
  # The protocol of a benchmark is its dataset spec's (the one table of them).
  from sparse_restore import datasets
  assert datasets.get_spec("rain200h").protocol == "restormer"
  assert datasets.get_spec("ddn").protocol == "rcdnet"
