"""Whole-image restoration with a trained network: padding, tiling with smooth blending, self-ensemble.

Used by the inference CLI (:mod:`sparse_restore.infer`) and by evaluation during training.

:func:`restore_image` takes ``apply_fn`` (NHWC float32 batch -> same shape; see :func:`make_apply_fn`) and an
``HxWx3`` float32 image and returns the restored ``HxWx3`` float32 image (not clipped):

* **Padding.** Inputs are reflect-padded at the bottom/right to a multiple of the network's factor
  (``multiple``: 8 for DRSformer's three 2x downsamplings) and the output is cropped back, so any size works.
  A pad as large as the side falls back to symmetric padding (as in ``models.layers.pad_to_multiple``).
* **Tiling** (``tile=N``). The image is cut into tiles of one fixed shape, so the network compiles **once**:
  the tile size is rounded up to the multiple (and shrunk to the padded image where that is smaller) and the
  overlap is rounded up to the multiple too, so every tile starts on the network's down-sampling grid. Tiles
  step by ``tile - overlap``; the last tile of a row/column is placed flush with the padded border (so the
  image is padded exactly as without tiling, and that tile overlaps its neighbour by at least ``overlap``).
  Each tile's output is weighted by a separable window that is 1 inside and, across every edge shared with a
  neighbour, is 0 on the outer quarter of the overlap (the pixels a finite receptive field sees past the tile
  edge), rises as a raised cosine across the middle half and is 1 on the inner quarter; weighted outputs and
  weights are accumulated on the host in float32 and divided. For a network whose receptive-field radius is
  at most ``overlap / 4`` the result equals the untiled one to float32 rounding (tested: ~1e-7). Tiles run
  ``batch`` at a time (the last batch is padded with repeats so its shape does not change). Memory: only the
  input, the padded input, one float32 accumulator and one weight plane live on the host (about 40 bytes per
  pixel: ~0.5 GB for a 4000x3000 photo), plus one batch of tiles on the device.
* **Self-ensemble** (``ensemble=True``): the average of the 8 dihedral transforms (4 rotations x optional
  flip) of each tile / image, each output transformed back. Transposed tiles have a second shape, so at most
  two compilations.

Tiled vs untiled for DRSformer: its channel attention (TKSA) normalises q and k over all pixels of its input
and MEFC pools globally, so a tile sees different statistics than the whole image and tiling changes the
output slightly. Measured (tests/test_restore.py: tiny random-weight DRSformer dim 8, blocks (1,1,1,1), 96x80
image, tile 48, overlap 16): max |tiled - untiled| 1.4e-2, mean 2.4e-3 on outputs spanning about [-0.1, 1.05]
(the test bounds them by 5e-2 / 1e-2). Report full-image numbers; treat tiled results as approximate.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

ApplyFn = Callable[[Any], Any]


class InsufficientMemoryError(MemoryError):
  """The network does not fit in memory for this input size; the message suggests tiling."""


# ----------------------------------------------------------------------------------------------------------
# Padding and dihedral transforms (NumPy, host side)
# ----------------------------------------------------------------------------------------------------------


def round_up(n: int, multiple: int) -> int:
  """Smallest multiple of ``multiple`` that is >= ``n``."""
  multiple = max(1, int(multiple))
  return -(-int(n) // multiple) * multiple


def pad_bottom_right(img: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pads ``HxWxC`` (or ``NxHxWxC``) ``img`` at the bottom/right to ``height x width``: reflect, or symmetric
  where the pad reaches the side length."""
  h, w = img.shape[-3], img.shape[-2]
  ph, pw = height - h, width - w
  if ph < 0 or pw < 0:
    raise ValueError(f"cannot pad {h}x{w} to the smaller {height}x{width}")
  if ph == 0 and pw == 0:
    return img
  mode = "reflect" if (ph < h and pw < w) else "symmetric"
  pad = [(0, 0)] * (img.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
  return np.pad(img, pad, mode=mode)


def pad_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
  """Reflect-pads ``HxWxC`` ``img`` at the bottom/right so both sides are multiples of ``multiple``."""
  return pad_bottom_right(img, round_up(img.shape[-3], multiple), round_up(img.shape[-2], multiple))


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
  """Transform ``k`` (0..7) of the dihedral group on the H, W axes of an ``NHWC`` array:
  ``k % 4`` counter-clockwise quarter turns, then a left-right flip if ``k >= 4``."""
  y = np.rot90(x, k % 4, axes=(1, 2))
  return y[:, :, ::-1] if k >= 4 else y


def inverse_dihedral(y: np.ndarray, k: int) -> np.ndarray:
  """Inverse of :func:`dihedral` ``k``."""
  if k >= 4:
    y = y[:, :, ::-1]
  return np.rot90(y, -(k % 4), axes=(1, 2))


# ----------------------------------------------------------------------------------------------------------
# Tile plan and blending windows
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """Where the tiles of one image go. All tiles are ``tile_h x tile_w``; the image is padded to
  ``padded_h x padded_w``; ``ys``/``xs`` are the tile origins along each axis (all pairs are used)."""
  height: int
  width: int
  tile_h: int
  tile_w: int
  overlap: int
  padded_h: int
  padded_w: int
  ys: Tuple[int, ...]
  xs: Tuple[int, ...]

  @property
  def positions(self) -> List[Tuple[int, int]]:
    return [(y, x) for y in self.ys for x in self.xs]

  @property
  def count(self) -> int:
    return len(self.ys) * len(self.xs)


def _axis_plan(size: int, tile: Optional[int], overlap: int, multiple: int) -> Tuple[int, int, Tuple[int, ...]]:
  full = round_up(size, multiple)
  if tile is None or tile >= full:
    return full, full, (0,)
  # Regular steps, then one last tile flush with the padded border (it overlaps its neighbour by >= overlap).
  starts = list(range(0, full - tile, tile - overlap)) + [full - tile]
  return tile, full, tuple(starts)


def plan_tiles(height: int, width: int, multiple: int, tile: Optional[int] = None, overlap: int = 32) -> TilePlan:
  """The tiling of a ``height x width`` image (``tile=None``: one tile, the image padded to the multiple).

  ``tile`` and ``overlap`` are rounded up to ``multiple``; the overlap must stay below the tile size.
  """
  multiple = max(1, int(multiple))
  if tile is not None:
    if tile <= 0:
      raise ValueError(f"tile size must be positive, got {tile}")
    tile = round_up(tile, multiple)
    overlap = round_up(max(0, int(overlap)), multiple)
    if overlap >= tile:
      raise ValueError(f"tile overlap {overlap} (rounded to a multiple of {multiple}) must be smaller than "
                       f"the tile size {tile}")
  else:
    overlap = 0
  th, ph, ys = _axis_plan(height, tile, overlap, multiple)
  tw, pw, xs = _axis_plan(width, tile, overlap, multiple)
  return TilePlan(height, width, th, tw, overlap, ph, pw, ys, xs)


def _ramp(overlap: int) -> np.ndarray:
  """Rising edge over an overlap: 0 on the outer quarter, raised cosine across the middle half, 1 on the inner
  quarter; ``r[j] + r[overlap - 1 - j] == 1``."""
  q = overlap // 4
  width = overlap - 2 * q
  j = np.arange(overlap, dtype=np.float64)
  r = 0.5 - 0.5 * np.cos(np.pi * (j - q + 0.5) / width)
  return np.where(j < q, 0.0, np.where(j >= overlap - q, 1.0, r))


def axis_window(length: int, overlap: int, rise: bool, fall: bool) -> np.ndarray:
  """1-D blending window: 1, with :func:`_ramp` rising over the first ``overlap`` samples (``rise``) and
  falling over the last ones (``fall``)."""
  w = np.ones(length, dtype=np.float64)
  if overlap > 0:
    r = _ramp(overlap)
    if rise:
      w[:overlap] *= r
    if fall:
      w[length - overlap:] *= r[::-1]
  return w.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Running the network
# ----------------------------------------------------------------------------------------------------------


def is_out_of_memory(err: BaseException) -> bool:
  """True for allocation failures raised by XLA (``RESOURCE_EXHAUSTED``) or Python (``MemoryError``)."""
  if isinstance(err, MemoryError):
    return True
  text = f"{type(err).__name__}: {err}"
  return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM when allocating"))


def available_memory_bytes(device=None) -> Optional[int]:
  """Free memory of ``device`` (an accelerator's free bytes, or on CPU the host's available RAM plus what this
  process's allocator holds free, see :mod:`sparse_restore.host_memory`)."""
  import jax
  device = device or jax.local_devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return None
  from sparse_restore import host_memory
  retained = host_memory.retained_free_bytes()  # freed by XLA, kept by malloc for this process
  try:
    import psutil
    return int(psutil.virtual_memory().available) + retained
  except ImportError:
    try:
      with open("/proc/meminfo") as f:
        for line in f:
          if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 + retained
    except OSError:
      pass
  return None


def _memory_message(shape, needed: Optional[int], available: Optional[int]) -> str:
  n, h, w = shape[0], shape[1], shape[2]
  amount = ""
  if needed is not None and available is not None:
    amount = f" (needs about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available)"
  return (f"not enough memory to run the network on a {n}x{h}x{w} input{amount}; "
          f"restore in tiles instead, e.g. --tile 512 (library: tile=512)")


def _tiled_memory_message(err: InsufficientMemoryError, tile: int, batch: int) -> str:
  """The message for a tiled run: suggest fewer tiles per call, then smaller tiles."""
  text = str(err).split("; restore in tiles")[0]
  if batch > 1:
    hint = "use --batch 1 (library: batch=1)"
  else:
    hint = f"use smaller tiles, e.g. --tile {max(16, tile // 2)}"
  return f"{text}; {hint}"


class JitApply:
  """A jitted ``x -> module.apply({'params': params}, x, train=False)`` on NHWC float32 batches (output
  float32).

  One executable is compiled per input shape and reused. :meth:`estimate_bytes` reports what XLA's buffer
  assignment says the executable needs (arguments + outputs + temporaries), before anything is run;
  :meth:`check_fits` turns that into :class:`InsufficientMemoryError` when it exceeds the free memory.
  """

  def __init__(self, module, params, dtype=None):
    import jax
    import jax.numpy as jnp
    if dtype is not None:
      module = module.clone(policy=module.policy.replace(dtype=dtype))
    self.module = module
    self.params = jax.device_put(params)
    self._jit = jax.jit(lambda p, x: module.apply({"params": p}, x, train=False).astype(jnp.float32))
    self._compiled: Dict[Tuple[int, ...], Any] = {}
    self._checked = set()
    self.size_multiple = model_multiple(module)

  def compiled(self, shape):
    """The executable for inputs of ``shape`` (compiled on first use)."""
    import jax
    import jax.numpy as jnp
    shape = tuple(int(s) for s in shape)
    if shape not in self._compiled:
      self._compiled[shape] = self._jit.lower(self.params, jax.ShapeDtypeStruct(shape, jnp.float32)).compile()
    return self._compiled[shape]

  def estimate_bytes(self, shape) -> Optional[int]:
    """Bytes the executable for ``shape`` needs according to XLA (None where the backend does not say)."""
    try:
      stats = self.compiled(shape).memory_analysis()
    except Exception as e:  # Compiling itself can run out of memory.
      if is_out_of_memory(e):
        raise InsufficientMemoryError(_memory_message(shape, None, None)) from None
      raise
    if stats is None:
      return None
    return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
               - stats.alias_size_in_bytes)

  def check_fits(self, shape, headroom: float = 0.9) -> None:
    """Raises :class:`InsufficientMemoryError` if the estimate exceeds ``headroom`` x the free memory
    (checked once per shape)."""
    shape = tuple(int(s) for s in shape)
    if shape in self._checked:
      return
    needed = self.estimate_bytes(shape)
    available = available_memory_bytes()
    if needed is not None and available is not None and needed > headroom * available:
      raise InsufficientMemoryError(_memory_message(shape, needed, available))
    self._checked.add(shape)

  def __call__(self, x):
    import jax.numpy as jnp
    x = jnp.asarray(x, jnp.float32)
    return self.compiled(x.shape)(self.params, x)


def model_multiple(module) -> int:
  """The size factor inputs are padded to: ``size_multiple`` (and ``pad_multiple`` if the model defines one,
  for networks that pad internally but prefer inputs padded by the caller)."""
  m = int(getattr(module, "size_multiple", 1) or 1)
  p = getattr(module, "pad_multiple", None)
  if p:
    m = m * int(p) // math.gcd(m, int(p))
  return m


def make_apply_fn(module, params, dtype=None) -> JitApply:
  """A jitted apply function for :func:`restore_image` from a Flax ``module`` and its ``params``.

  ``dtype`` (e.g. ``"bfloat16"``) replaces the compute dtype of the module's policy; params stay as given
  (float32) and the output is float32.
  """
  return JitApply(module, params, dtype)


def _oom_guard(shape):
  """Context translating out-of-memory errors (raised at dispatch or at read-back) into a clear message."""
  import contextlib

  @contextlib.contextmanager
  def guard():
    try:
      yield
    except InsufficientMemoryError:
      raise
    except Exception as e:
      if is_out_of_memory(e):
        raise InsufficientMemoryError(_memory_message(shape, None, None)) from None
      raise

  return guard()


def _dispatch(apply_fn: ApplyFn, chunk: np.ndarray, batch: int, check: bool):
  """Starts ``apply_fn`` on ``chunk`` padded with copies of its last item to exactly ``batch`` items (one
  shape, one compilation); returns the (possibly still running) result."""
  k = chunk.shape[0]
  if k < batch:
    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - k, axis=0)], axis=0)
  chunk = np.ascontiguousarray(chunk, dtype=np.float32)
  with _oom_guard(chunk.shape):
    if check and hasattr(apply_fn, "check_fits"):
      apply_fn.check_fits(chunk.shape)
    return apply_fn(chunk)


def _collect(result, k: int, shape) -> np.ndarray:
  """The first ``k`` outputs of a dispatched batch as float32 NumPy (waits for the computation)."""
  with _oom_guard(shape):
    out = np.asarray(result)[:k].astype(np.float32, copy=False)
  if out.shape[1:] != tuple(shape[1:]):
    raise ValueError(f"apply_fn changed the shape: {tuple(shape)} -> {out.shape}")
  return out


def _run_fixed(apply_fn: ApplyFn, x: np.ndarray, batch: int, check: bool) -> np.ndarray:
  """Runs ``apply_fn`` over ``x`` (``NHWC``) in batches of exactly ``batch``, dispatching the next batch
  before reading back the previous one."""
  outs: List[np.ndarray] = []
  pending = None
  for i in range(0, x.shape[0], batch):
    chunk = x[i:i + batch]
    result = _dispatch(apply_fn, chunk, batch, check)
    if pending is not None:
      outs.append(_collect(*pending))
    pending = (result, chunk.shape[0], (batch,) + chunk.shape[1:])
  outs.append(_collect(*pending))
  return np.concatenate(outs, axis=0)


def _apply_tiles(apply_fn: ApplyFn, tiles: np.ndarray, batch: int, ensemble: bool, check: bool) -> np.ndarray:
  """Network outputs for ``tiles`` (``NHWC``), optionally averaged over the 8 dihedral transforms."""
  if not ensemble:
    return _run_fixed(apply_fn, tiles, batch, check)
  n = tiles.shape[0]
  acc = np.zeros(tiles.shape, dtype=np.float64)  # Exact sum of 8 float32 values: the mean of equal ones is exact.
  groups = {0: [0, 2, 4, 6], 1: [1, 3, 5, 7]}  # Same output orientation (odd k transposes H and W).
  for ks in groups.values():
    stacked = np.concatenate([dihedral(tiles, k) for k in ks], axis=0)
    out = _run_fixed(apply_fn, stacked, min(batch, stacked.shape[0]), check)
    for j, k in enumerate(ks):
      acc += inverse_dihedral(out[j * n:(j + 1) * n], k)
  return (acc / 8.0).astype(np.float32)


def restore_image(apply_fn: ApplyFn, img: np.ndarray, *, multiple: int, tile: Optional[int] = None,
                  overlap: int = 32, batch: int = 4, ensemble: bool = False, check_memory: bool = True,
                  progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
  """Restores an ``HxWx3`` float32 image with ``apply_fn`` (NHWC float32 -> same shape); returns ``HxWx3``.

  Args:
    apply_fn: the network (e.g. :func:`make_apply_fn`); with a ``check_fits(shape)`` method (as
      :class:`JitApply` has) the memory each input shape needs is checked before it runs.
    img: the image, float32 in [0, 1].
    multiple: spatial factor the network needs (``model_multiple(module)``).
    tile: tile size (rounded up to ``multiple``), or None for the whole image at once.
    overlap: overlap of neighbouring tiles in pixels (rounded up to ``multiple``).
    batch: tiles per network call (and transforms per call with ``ensemble``).
    ensemble: average over the 8 flips/rotations.
    check_memory: pre-check memory (raises :class:`InsufficientMemoryError` with a suggestion to tile).
    progress: called with the number of tiles finished after each batch.
  """
  img = np.asarray(img, dtype=np.float32)
  if img.ndim != 3:
    raise ValueError(f"expected an HxWxC image, got shape {img.shape}")
  h, w = img.shape[:2]
  batch = max(1, int(batch))
  plan = plan_tiles(h, w, multiple, tile, overlap)
  if tile is None:
    return _restore(apply_fn, img, plan, batch, ensemble, check_memory, progress)
  try:
    return _restore(apply_fn, img, plan, batch, ensemble, check_memory, progress)
  except InsufficientMemoryError as e:
    raise InsufficientMemoryError(_tiled_memory_message(e, plan.tile_h, min(batch, plan.count))) from None


def _restore(apply_fn, img, plan: TilePlan, batch: int, ensemble: bool, check_memory: bool, progress):
  h, w = img.shape[:2]
  padded = pad_bottom_right(img, plan.padded_h, plan.padded_w)
  if plan.count == 1:
    out = _apply_tiles(apply_fn, padded[None], 1 if not ensemble else batch, ensemble, check_memory)[0]
    if progress:
      progress(1)
    return np.ascontiguousarray(out[:h, :w])

  acc = np.zeros(padded.shape, dtype=np.float32)
  wsum = np.zeros(padded.shape[:2], dtype=np.float32)
  wy = {i: axis_window(plan.tile_h, plan.overlap, i > 0, i < len(plan.ys) - 1) for i in range(len(plan.ys))}
  wx = {j: axis_window(plan.tile_w, plan.overlap, j > 0, j < len(plan.xs) - 1) for j in range(len(plan.xs))}
  index = [(i, j) for i in range(len(plan.ys)) for j in range(len(plan.xs))]
  step = min(batch, len(index))

  def accumulate(part, outs):
    for (i, j), o in zip(part, outs):
      y0, x0 = plan.ys[i], plan.xs[j]
      win = np.outer(wy[i], wx[j])
      acc[y0:y0 + plan.tile_h, x0:x0 + plan.tile_w] += o * win[..., None]
      wsum[y0:y0 + plan.tile_h, x0:x0 + plan.tile_w] += win
    if progress:
      progress(len(part))

  pending = None  # Without ensemble, the next batch is dispatched before the previous one is blended.
  for start in range(0, len(index), step):
    part = index[start:start + step]
    tiles = np.stack([padded[plan.ys[i]:plan.ys[i] + plan.tile_h, plan.xs[j]:plan.xs[j] + plan.tile_w]
                      for i, j in part])
    if ensemble:
      accumulate(part, _apply_tiles(apply_fn, tiles, step, True, check_memory))
      continue
    result = _dispatch(apply_fn, tiles, step, check_memory)
    if pending is not None:
      accumulate(pending[0], _collect(*pending[1:]))
    pending = (part, result, len(part), (step,) + tiles.shape[1:])
  if pending is not None:
    accumulate(pending[0], _collect(*pending[1:]))
  if not np.all(wsum[:h, :w] > 0):  # Cannot happen with the plans above; guards future edits.
    raise AssertionError("tile blending left pixels without weight")
  out = acc[:h, :w]
  out /= wsum[:h, :w, None]
  return np.ascontiguousarray(out)
