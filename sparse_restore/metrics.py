"""PSNR and SSIM exactly as the deraining papers' MATLAB scripts compute them, in NumPy and in jit-able JAX.

Three protocols (see ``docs/evaluation.md`` of the project notes):

``"restormer"``
  Restormer's ``evaluate_PSNR_SSIM.m`` (Rain200L/H, SPA-Data). Images are 8-bit. ``channel="y"``: MATLAB
  ``rgb2ycbcr`` on uint8, i.e. ``Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)`` rounded half away
  from zero to an integer, evaluated in double like MATLAB's ``imlincomb`` (``T1 R + T2 G + T3 B + 16`` with
  ``T = weights / 255``; at the 194 colours whose exact Y is k + 1/2 the double rounding error decides, and the
  published value for Rain200H/1.png depends on one of them); PSNR ``20 log10(255 / rmse)``; SSIM (Wang 2004,
  Gaussian 11x11, sigma 1.5,
  ``'valid'`` window, L = 255) on those integers.
  ``channel="rgb"``: the 8-bit R, G, B values themselves; PSNR over all three channels together (one MSE over
  H x W x 3 values), SSIM = mean over the three channels of the per-channel SSIM.

``"rcdnet"``
  RCDNet's ``Performance_evaluation`` (DID-Data, DDN-Data). ``channel="y"``: ``im2double`` then
  ``rgb2ycbcr`` on doubles, an *unrounded* Y in [16/255, 235/255]; PSNR with peak 1 (``10 log10(1 / mse)``);
  SSIM of ``Y * 255`` with Wang's 2009 automatic downsampling: ``f = max(1, round(min(H, W) / 256))``; for
  f > 1 a box f x f filter (``imfilter(..., 'symmetric', 'same')``) and every f-th pixel starting at the
  first, then the 11/1.5 Gaussian ``'valid'`` SSIM. ``channel="rgb"``: R, G, B in [0, 1]; PSNR (peak 1) over
  all channels together, SSIM = mean over channels of the downsampled SSIM of each channel * 255.

``"basicsr"``
  What BasicSR-style training code logs: unrounded Y in [16, 235] from float images, PSNR with peak 255,
  11/1.5 Gaussian ``'valid'`` SSIM, no downsampling. ``channel="rgb"``: R, G, B * 255 unrounded; PSNR over all
  channels together, SSIM = mean over channels.

Two implementations:

* :func:`psnr` / :func:`ssim` / :func:`psnr_ssim` -- the NumPy reference in float64 following the MATLAB
  procedure step by step. Inputs are uint8 arrays (the exact values MATLAB's ``imread`` gives; use
  ``imageio.read_uint8_rgb``) or float arrays in [0, 1] (quantised with ``round(x * 255)`` for "restormer",
  the value a saved PNG would hold; used as they are by the other protocols).
* :func:`psnr_jnp` / :func:`ssim_jnp` -- ``jax.numpy`` versions for evaluation inside training: float images
  in [0, 1], shape ``[..., H, W, 3]``, one value per image (leading axes kept). Shapes are static, so they
  ``jax.jit``. They run in float32 and agree with the reference to ~1e-5 dB / ~1e-7 SSIM (tested to 1e-4 dB
  and 1e-6): the restormer Y is computed with exact integer arithmetic plus a table of the 100 tie colours
  that MATLAB's double arithmetic rounds down, PSNR works on differences (the Y offset cancels) and SSIM
  statistics are computed on mean-centred planes to avoid float32 cancellation.

Identical images: PSNR is ``inf`` (MATLAB gives ``Inf`` too; :func:`summarize` keeps it, and the evaluate CLI
prints/writes it as ``inf``); SSIM is exactly 1.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, Tuple

import numpy as np

# The scoring protocols and channels (described above). Which one a dataset uses is its spec's choice
# (sparse_restore/datasets/specs.py), validated against these.
PROTOCOLS = ("restormer", "rcdnet", "basicsr")
CHANNELS = ("y", "rgb")

# BT.601 luma weights of MATLAB's rgb2ycbcr (Poynton eq. 9.6), Y offset 16.
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
# The same weights times 1000 (integers) for the exact uint8 path: Y * 255000 = sum(w_i * c_i) + 16 * 255000.
_Y_WEIGHTS_INT = (65481, 128553, 24966)

_SSIM_K = (0.01, 0.03)
_SSIM_L = 255.0
_WIN_SIZE = 11
_WIN_SIGMA = 1.5


def _check(protocol: str, channel: str):
  if protocol not in PROTOCOLS:
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
  if channel not in CHANNELS:
    raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")


def rcdnet_downsample_factor(height: int, width: int) -> int:
  """Wang 2009's automatic downsampling factor ``max(1, round(min(H, W) / 256))`` (MATLAB round: half up)."""
  return max(1, int(math.floor(min(height, width) / 256.0 + 0.5)))


def gaussian_window_1d(size: int = _WIN_SIZE, sigma: float = _WIN_SIGMA) -> np.ndarray:
  """1-D factor of ``fspecial('gaussian', size, sigma)``: the 2-D window is ``outer(g, g)`` (sums to 1)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return g / g.sum()


# ----------------------------------------------------------------------------------------------------------
# NumPy reference (float64)
# ----------------------------------------------------------------------------------------------------------


def _matlab_round(x):
  """MATLAB ``round``: half away from zero."""
  return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _as_uint8_values(img) -> np.ndarray:
  """float64 values 0..255 of an 8-bit image (uint8 as is; floats in [0, 1] quantised like a saved PNG)."""
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img.astype(np.float64)
  if np.issubdtype(img.dtype, np.integer):
    raise TypeError(f"integer images must be uint8, got {img.dtype}")
  return _matlab_round(np.clip(img.astype(np.float64), 0.0, 1.0) * 255.0)


def _as_unit_float(img) -> np.ndarray:
  """float64 values in [0, 1] (MATLAB ``im2double``)."""
  img = np.asarray(img)
  if img.dtype == np.uint8:
    return img.astype(np.float64) / 255.0
  if np.issubdtype(img.dtype, np.integer):
    raise TypeError(f"integer images must be uint8, got {img.dtype}")
  return img.astype(np.float64)


def _rgb2y_matlab_uint8(rgb255: np.ndarray) -> np.ndarray:
  """``rgb2ycbcr`` on uint8 (imlincomb in double, then rounded half away from zero to uint8): Y in 16..235."""
  r, g, b = rgb255[..., 0], rgb255[..., 1], rgb255[..., 2]
  t = [w / 255.0 for w in _Y_WEIGHTS]
  y = t[0] * r + t[1] * g + t[2] * b + _Y_OFFSET
  return np.clip(_matlab_round(y), 0.0, 255.0)


def _rgb2y_matlab_double(rgb01: np.ndarray) -> np.ndarray:
  """``rgb2ycbcr`` on doubles in [0, 1]: unrounded Y in [16/255, 235/255]."""
  r, g, b = rgb01[..., 0], rgb01[..., 1], rgb01[..., 2]
  t = [w / 255.0 for w in _Y_WEIGHTS]
  return t[0] * r + t[1] * g + t[2] * b + _Y_OFFSET / 255.0


def _planes(img, protocol: str, channel: str) -> Tuple[np.ndarray, float]:
  """The planes [C, H, W] (C = 1 or 3) that the protocol compares, and its PSNR peak.

  SSIM always sees these planes on a 0..255 scale (``planes * 255 / peak``).
  A 2-D input is taken as the single channel already (MATLAB's scripts skip rgb2ycbcr then).
  """
  arr = np.asarray(img)
  if arr.ndim == 2:
    arr = arr[..., None]
    single = True
  elif arr.ndim == 3 and arr.shape[-1] == 3:
    single = False
  else:
    raise ValueError(f"expected an HxWx3 (or HxW) image, got shape {arr.shape}")
  if protocol == "restormer":
    v = _as_uint8_values(arr)
    planes = v if single or channel == "rgb" else _rgb2y_matlab_uint8(v)[..., None]
    peak = 255.0
  elif protocol == "rcdnet":
    v = _as_unit_float(arr)
    planes = v if single or channel == "rgb" else _rgb2y_matlab_double(v)[..., None]
    peak = 1.0
  else:  # basicsr
    v = _as_unit_float(arr)
    planes = (v if single or channel == "rgb" else _rgb2y_matlab_double(v)[..., None]) * 255.0
    peak = 255.0
  return np.moveaxis(planes, -1, 0), peak


def _check_pair(a, b):
  if np.shape(a) != np.shape(b):
    raise ValueError(f"images differ in size: {np.shape(a)} vs {np.shape(b)}")


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
  """MATLAB ``filter2(outer(g, g), x, 'valid')`` for a symmetric separable window (float64)."""
  k = g.size
  h, w = x.shape
  rows = np.zeros((h - k + 1, w), dtype=np.float64)
  for i in range(k):
    rows += g[i] * x[i:i + h - k + 1, :]
  out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
  for j in range(k):
    out += g[j] * rows[:, j:j + w - k + 1]
  return out


def _ssim_plane_np(x: np.ndarray, y: np.ndarray) -> float:
  """Wang et al. 2004 ``SSIM_index`` (default K, 11x11 Gaussian 1.5, L = 255) on two float64 planes."""
  if min(x.shape) < _WIN_SIZE:
    raise ValueError(f"SSIM needs images of at least {_WIN_SIZE}x{_WIN_SIZE} pixels, got {x.shape}")
  c1 = (_SSIM_K[0] * _SSIM_L) ** 2
  c2 = (_SSIM_K[1] * _SSIM_L) ** 2
  g = gaussian_window_1d()
  mu1 = _filter_valid(x, g)
  mu2 = _filter_valid(y, g)
  mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
  s1 = _filter_valid(x * x, g) - mu1_sq
  s2 = _filter_valid(y * y, g) - mu2_sq
  s12 = _filter_valid(x * y, g) - mu1_mu2
  ssim_map = ((2 * mu1_mu2 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
  return float(ssim_map.mean())


def box_downsample_np(x: np.ndarray, f: int) -> np.ndarray:
  """``imfilter(x, ones(f)/f^2, 'symmetric', 'same')`` then ``x(1:f:end, 1:f:end)`` (float64 plane)."""
  if f <= 1:
    return x
  # imfilter correlates with the kernel's centre at floor((f + 1) / 2) (1-based): before = floor((f - 1) / 2).
  before = (f - 1) // 2
  after = f - 1 - before
  xp = np.pad(x, ((before, after), (before, after)), mode="symmetric")
  h, w = x.shape
  acc = np.zeros_like(x)
  for i in range(f):
    for j in range(f):
      acc += xp[i:i + h, j:j + w]
  acc /= f * f
  return acc[::f, ::f]


def psnr(a, b, protocol: str = "restormer", channel: str = "y") -> float:
  """PSNR (dB) of image ``a`` against ``b`` under ``protocol``; NumPy float64 reference (see module doc).

  Returns ``inf`` for identical images.
  """
  _check(protocol, channel)
  _check_pair(a, b)
  pa, peak = _planes(a, protocol, channel)
  pb, _ = _planes(b, protocol, channel)
  mse = float(np.mean((pa - pb) ** 2))
  if mse == 0.0:
    return math.inf
  return 10.0 * math.log10(peak * peak / mse)


def ssim(a, b, protocol: str = "restormer", channel: str = "y") -> float:
  """SSIM of ``a`` against ``b`` under ``protocol`` (mean over channels for ``channel="rgb"``); NumPy float64."""
  _check(protocol, channel)
  _check_pair(a, b)
  pa, peak = _planes(a, protocol, channel)
  pb, _ = _planes(b, protocol, channel)
  scale = 255.0 / peak
  values = []
  for x, y in zip(pa, pb):
    x, y = x * scale, y * scale
    if protocol == "rcdnet":
      f = rcdnet_downsample_factor(*x.shape)
      x, y = box_downsample_np(x, f), box_downsample_np(y, f)
    values.append(_ssim_plane_np(x, y))
  return float(np.mean(values))


def psnr_ssim(a, b, protocol: str = "restormer", channel: str = "y") -> Tuple[float, float]:
  """``(psnr(a, b), ssim(a, b))`` under the same protocol."""
  return psnr(a, b, protocol, channel), ssim(a, b, protocol, channel)


def summarize(records) -> Dict[str, float]:
  """Mean PSNR/SSIM over records with ``psnr``/``ssim`` keys (a mean with an ``inf`` PSNR is ``inf``)."""
  records = list(records)
  if not records:
    return {"psnr": math.nan, "ssim": math.nan, "count": 0}
  return {"psnr": float(np.mean([r["psnr"] for r in records])),
          "ssim": float(np.mean([r["ssim"] for r in records])), "count": len(records)}


# ----------------------------------------------------------------------------------------------------------
# JAX versions (float32, jit-able, batched over leading axes)
# ----------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _restormer_tie_down_codes() -> np.ndarray:
  """Sorted codes ``(R * 256 + G) * 256 + B`` of the 8-bit colours whose exact Y is k + 1/2 but whose MATLAB
  double computation (:func:`_rgb2y_matlab_uint8`) rounds to k. Lets the integer JAX path match it bit for bit.
  (Rain200H/1.png of the reference sample contains one of them; the reference value needs it rounded down.)
  """
  v = np.arange(256, dtype=np.int64)
  g, b = np.meshgrid(v, v, indexing="ij")
  codes = []
  for r in range(256):
    n = _Y_WEIGHTS_INT[0] * r + _Y_WEIGHTS_INT[1] * g + _Y_WEIGHTS_INT[2] * b + int(_Y_OFFSET) * 255000
    tie = n % 255000 == 127500
    if not tie.any():
      continue
    rgb = np.stack([np.full(int(tie.sum()), r), g[tie], b[tie]], axis=-1).astype(np.float64)
    down = _rgb2y_matlab_uint8(rgb) < (n[tie] + 127500) // 255000
    codes.extend(((r * 256 + g[tie][down]) * 256 + b[tie][down]).tolist())
  return np.asarray(sorted(codes), dtype=np.int32)


def _jnp():
  import jax.numpy as jnp  # Imported lazily: the NumPy reference and the evaluate CLI do not need JAX.
  return jnp


def _jnp_planes(img, protocol: str, channel: str):
  """Planes ``[..., H, W, C]`` on the 0..255 scale (float32), and for the restormer Y an exact integer path."""
  jnp = _jnp()
  img = jnp.asarray(img, jnp.float32)
  if img.shape[-1] != 3 or img.ndim < 3:
    raise ValueError(f"expected images [..., H, W, 3], got shape {img.shape}")
  if protocol == "restormer":
    # The 8-bit value a saved PNG holds: round half up (jnp.round would round half to even).
    q = jnp.floor(jnp.clip(img, 0.0, 1.0) * 255.0 + 0.5)
    if channel == "rgb":
      return q
    qi = q.astype(jnp.int32)
    n = (_Y_WEIGHTS_INT[0] * qi[..., 0] + _Y_WEIGHTS_INT[1] * qi[..., 1] + _Y_WEIGHTS_INT[2] * qi[..., 2]
         + int(_Y_OFFSET) * 255000)
    y = (n + 127500) // 255000  # Exact round-half-up of n / 255000 (n >= 0; fits in int32).
    # MATLAB computes in double: at the 194 colours where Y is exactly k + 1/2, float error rounds some down.
    table = jnp.asarray(_restormer_tie_down_codes())
    code = (qi[..., 0] * 256 + qi[..., 1]) * 256 + qi[..., 2]
    pos = jnp.clip(jnp.searchsorted(table, code), 0, table.size - 1)
    down = (n % 255000 == 127500) & (table[pos] == code)
    return (y - down.astype(jnp.int32)).astype(jnp.float32)[..., None]
  x255 = img * 255.0
  if channel == "rgb":
    return x255
  y = (_Y_WEIGHTS[0] * img[..., 0] + _Y_WEIGHTS[1] * img[..., 1] + _Y_WEIGHTS[2] * img[..., 2]) + _Y_OFFSET
  return y[..., None]


def _jnp_diff_planes(a, b, protocol: str, channel: str):
  """``planes(a) - planes(b)`` on the 0..255 scale, computed without the Y offset (more precise in float32)."""
  jnp = _jnp()
  if protocol == "restormer":
    return _jnp_planes(a, protocol, channel) - _jnp_planes(b, protocol, channel)
  d = jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)
  if channel == "rgb":
    return d * 255.0
  return (_Y_WEIGHTS[0] * d[..., 0] + _Y_WEIGHTS[1] * d[..., 1] + _Y_WEIGHTS[2] * d[..., 2])[..., None]


def psnr_jnp(a, b, protocol: str = "restormer", channel: str = "y"):
  """PSNR (dB) per image of float images ``a``, ``b`` in [0, 1], shape ``[..., H, W, 3]``; jit-able.

  Same definitions as :func:`psnr` (the rcdnet peak of 1 on [0, 1] planes equals peak 255 on 0..255 planes).
  Identical images give ``inf``.
  """
  _check(protocol, channel)
  jnp = _jnp()
  d = _jnp_diff_planes(a, b, protocol, channel)
  mse = _mean_hwc(jnp.square(d))
  return 10.0 * jnp.log10(255.0 * 255.0 / mse)


def _mean_hwc(x):
  """Mean over the last three axes, in stages (channels, then columns, then rows) for float32 accuracy."""
  jnp = _jnp()
  return jnp.mean(jnp.mean(jnp.mean(x, axis=-1), axis=-1), axis=-1)


_FILTER_BLOCK = 64


def _jnp_valid_filter_axis(x, g: np.ndarray, axis: int):
  """'valid' correlation of ``x`` with the 1-D window ``g`` along ``axis``, as one batched matrix product.

  The output is cut into blocks of ``_FILTER_BLOCK`` samples; each block is a fixed banded
  ``(B, B + k - 1)`` matrix times the overlapping input slab it needs (HIGHEST precision, so no TF32/bf16
  passes on GPU/TPU). Products with the band's zeros add exactly nothing, so this is the k-tap sum; matrix
  units run it far faster than XLA:CPU's shifted adds or single-channel convolutions.
  """
  jnp = _jnp()
  from jax import lax
  k = g.size
  n = x.shape[axis]
  out = n - k + 1
  b = min(_FILTER_BLOCK, out)
  nb = -(-out // b)
  x = jnp.moveaxis(x, axis, 0)
  need = nb * b + k - 1
  if need > n:
    x = jnp.pad(x, [(0, need - n)] + [(0, 0)] * (x.ndim - 1))
  slabs = jnp.stack([lax.slice_in_dim(x, i * b, i * b + b + k - 1, axis=0) for i in range(nb)])
  band = np.zeros((b, b + k - 1), dtype=np.float32)
  for j in range(k):
    band[np.arange(b), np.arange(b) + j] = g[j]
  y = jnp.einsum("ot,nt...->no...", jnp.asarray(band), slabs, precision=lax.Precision.HIGHEST)
  y = y.reshape((nb * b,) + y.shape[2:])[:out]
  return jnp.moveaxis(y, 0, axis)


def _jnp_gaussian_stats(planes, g: np.ndarray):
  """MATLAB ``filter2(outer(g, g), ., 'valid')`` of each plane of ``planes`` ``[..., H, W, C]``."""
  y = _jnp_valid_filter_axis(planes, g, planes.ndim - 3)
  return _jnp_valid_filter_axis(y, g, planes.ndim - 2)


def _jnp_box_downsample(x, f: int):
  """:func:`box_downsample_np` for ``x`` of shape ``[..., H, W, C]``."""
  if f <= 1:
    return x
  jnp = _jnp()
  before = (f - 1) // 2
  after = f - 1 - before
  nd = x.ndim
  pad = [(0, 0)] * (nd - 3) + [(before, after), (before, after), (0, 0)]
  xp = jnp.pad(x, pad, mode="symmetric")
  h, w = x.shape[-3], x.shape[-2]
  acc = None
  for i in range(f):
    for j in range(f):
      term = xp[..., i:i + h, j:j + w, :]
      acc = term if acc is None else acc + term
  acc = acc / float(f * f)
  return acc[..., ::f, ::f, :]


def ssim_jnp(a, b, protocol: str = "restormer", channel: str = "y"):
  """SSIM per image of float images ``a``, ``b`` in [0, 1], shape ``[..., H, W, 3]``; jit-able.

  Same definitions as :func:`ssim` (mean over channels for "rgb"). Local statistics are computed on planes
  shifted by one constant per image and channel (the mean of both planes), which leaves the variances and
  covariance unchanged and keeps float32 cancellation in ``E[x^2] - mu^2`` small; the means are shifted back
  for the luminance term.
  """
  _check(protocol, channel)
  jnp = _jnp()
  x = _jnp_planes(a, protocol, channel)
  y = _jnp_planes(b, protocol, channel)
  if min(x.shape[-3], x.shape[-2]) < _WIN_SIZE:
    raise ValueError(f"SSIM needs images of at least {_WIN_SIZE}x{_WIN_SIZE} pixels, got {x.shape}")
  if protocol == "rcdnet":
    f = rcdnet_downsample_factor(x.shape[-3], x.shape[-2])
    x, y = _jnp_box_downsample(x, f), _jnp_box_downsample(y, f)
  c1 = (_SSIM_K[0] * _SSIM_L) ** 2
  c2 = (_SSIM_K[1] * _SSIM_L) ** 2
  g = gaussian_window_1d()
  shift = 0.5 * (jnp.mean(x, axis=(-3, -2), keepdims=True) + jnp.mean(y, axis=(-3, -2), keepdims=True))
  xc, yc = x - shift, y - shift
  # The five local statistics in one filtering pass (stacked on the channel axis).
  stats = _jnp_gaussian_stats(jnp.concatenate([xc, yc, xc * xc, yc * yc, xc * yc], axis=-1), g)
  m1, m2, e11, e22, e12 = jnp.split(stats, 5, axis=-1)
  s1 = e11 - m1 * m1
  s2 = e22 - m2 * m2
  s12 = e12 - m1 * m2
  mu1, mu2 = m1 + shift, m2 + shift
  ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s1 + s2 + c2))
  # Mean over the map per channel, then over channels (equal map sizes, so one mean is the same); averaging
  # ``map - 1`` in stages keeps the float32 summation error small.
  return 1.0 + _mean_hwc(ssim_map - 1.0)


def psnr_ssim_jnp(a, b, protocol: str = "restormer", channel: str = "y"):
  """``(psnr_jnp(a, b), ssim_jnp(a, b))``; jit-able."""
  return psnr_jnp(a, b, protocol, channel), ssim_jnp(a, b, protocol, channel)
