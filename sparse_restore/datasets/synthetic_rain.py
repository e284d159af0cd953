"""Synthetic rain streaks (NumPy only) and the offline ``synthetic_rain`` demo dataset.

Rain model: sparse random impulses ("drops") are smeared by a streak kernel, a line segment of a given length
and angle with a Gaussian cross-section of a given width, fading towards both ends. The resulting layer, scaled
by a brightness, is blended onto the clean image with a screen blend ``1 - (1 - clean) * (1 - rain)`` (or
clipped addition). One to three layers with related angles give the depth/variety of real heavy rain.
Everything is deterministic given a seed.

    rainy, params = synthesize_rain(clean_float_rgb, seed=0)

Demo dataset: random square crops of scikit-image's bundled photographs (no download), resized to small tiles,
each with its own rain. The test split is cut from photographs never used for training.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from sparse_restore import imageio
from sparse_restore.datasets import builders, specs

SeedLike = Union[int, Sequence[int], np.random.Generator]


@dataclasses.dataclass(frozen=True)
class RainLayerParams:
  """One layer of rain streaks.

  Attributes:
    density: probability that a pixel seeds a streak.
    angle: streak direction in degrees from vertical (positive leans to the right going down).
    length: streak length in pixels.
    width: Gaussian sigma of the streak cross-section in pixels (also blurs the streak).
    brightness: peak intensity of an isolated streak, in [0, 1].
  """

  density: float
  angle: float
  length: float
  width: float
  brightness: float


# Ranges the random parameters are drawn from (uniform).
DENSITY_RANGE = (0.001, 0.006)
ANGLE_RANGE = (-35.0, 35.0)
LENGTH_RANGE = (8.0, 32.0)
WIDTH_RANGE = (0.45, 1.3)
BRIGHTNESS_RANGE = (0.3, 0.8)


def _rng(seed: SeedLike) -> np.random.Generator:
  return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def sample_rain_params(seed: SeedLike, *, num_layers: Optional[int] = None) -> List[RainLayerParams]:
  """Random rain: one to three layers sharing a main direction (each within +-10 degrees of it).

  Later layers are sparser, shorter, thinner and dimmer ("farther away").
  """
  rng = _rng(seed)
  n = int(rng.integers(1, 4)) if num_layers is None else int(num_layers)
  base_angle = rng.uniform(*ANGLE_RANGE)
  layers = []
  for i in range(n):
    far = 1.0 if i == 0 else rng.uniform(0.5, 0.9)
    layers.append(RainLayerParams(
        density=float(rng.uniform(*DENSITY_RANGE) * far),
        angle=float(np.clip(base_angle + (0.0 if i == 0 else rng.uniform(-10.0, 10.0)), -60.0, 60.0)),
        length=float(rng.uniform(*LENGTH_RANGE) * far),
        width=float(max(WIDTH_RANGE[0], rng.uniform(*WIDTH_RANGE) * far)),
        brightness=float(rng.uniform(*BRIGHTNESS_RANGE) * far),
    ))
  return layers


def streak_kernel(length: float, width: float, angle: float) -> np.ndarray:
  """A float32 [K, K] streak (peak 1): a segment of ``length`` px at ``angle`` degrees from vertical.

  Pixel values fall off as a Gaussian (sigma ``width``) of the distance to the segment; the last third of the
  streak fades out at both ends.
  """
  theta = np.deg2rad(angle)
  direction = np.array([np.cos(theta), np.sin(theta)])  # (dy, dx): down and to the right for angle > 0
  half = max(length, 1.0) / 2.0
  radius = int(np.ceil(half + 3.0 * width)) + 1
  yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1].astype(np.float64)
  t = yy * direction[0] + xx * direction[1]  # position along the streak
  t_clip = np.clip(t, -half, half)
  dist2 = (yy - t_clip * direction[0]) ** 2 + (xx - t_clip * direction[1]) ** 2
  fade = np.clip((1.0 - np.abs(t_clip) / half) * 3.0, 0.0, 1.0)
  kernel = np.exp(-dist2 / (2.0 * width ** 2)) * (0.25 + 0.75 * fade)
  return (kernel / kernel.max()).astype(np.float32)


def rain_layer(shape: Tuple[int, int], params: RainLayerParams, seed: SeedLike) -> np.ndarray:
  """A float32 [H, W] streak layer in [0, 1] (circular convolution of random impulses with the streak kernel)."""
  rng = _rng(seed)
  h, w = shape
  drops = (rng.random((h, w)) < params.density) * rng.uniform(0.6, 1.0, size=(h, w))
  kernel = streak_kernel(params.length, params.width, params.angle)
  k = kernel.shape[0]
  if k > min(h, w):  # streaks longer than the image: crop the kernel around its centre
    c, r = k // 2, min(h, w) // 2
    kernel = kernel[c - r:c + r + 1, c - r:c + r + 1] if min(h, w) % 2 else kernel[c - r:c + r, c - r:c + r]
    k = kernel.shape[0]
  padded = np.zeros((h, w), np.float64)
  padded[:k, :k] = kernel
  padded = np.roll(padded, (-(k // 2), -(k // 2)), axis=(0, 1))  # centre the kernel at (0, 0)
  streaks = np.fft.irfft2(np.fft.rfft2(drops) * np.fft.rfft2(padded), s=(h, w))
  return (np.clip(streaks, 0.0, 1.0) * params.brightness).astype(np.float32)


def blend(clean: np.ndarray, rain: np.ndarray, mode: str = "screen") -> np.ndarray:
  """Blends a [H, W] rain layer onto a float [H, W, C] image in [0, 1]: 'screen' or 'add' (clipped)."""
  r = rain[..., None] if rain.ndim == clean.ndim - 1 else rain
  if mode == "screen":
    out = 1.0 - (1.0 - clean) * (1.0 - r)
  elif mode == "add":
    out = clean + r
  else:
    raise ValueError(f"unknown blend mode {mode!r}; use 'screen' or 'add'")
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def synthesize_rain(clean: np.ndarray, seed: SeedLike, *, params: Optional[Sequence[RainLayerParams]] = None,
                    mode: str = "screen") -> Tuple[np.ndarray, List[RainLayerParams]]:
  """Adds random rain to ``clean`` (float [H, W, 3] in [0, 1]); returns (rainy float32, layer parameters).

  The same seed (and parameters) always give the same result.
  """
  clean = np.asarray(clean, np.float32)
  if clean.ndim != 3:
    raise ValueError(f"expected an [H, W, C] image, got shape {clean.shape}")
  rng = _rng(seed)
  layers = list(params) if params is not None else sample_rain_params(rng)
  rain = np.zeros(clean.shape[:2], np.float32)
  for p in layers:
    layer = rain_layer(clean.shape[:2], p, rng)
    rain = 1.0 - (1.0 - rain) * (1.0 - layer)  # layers combine like light (screen)
  return blend(clean, rain, mode), layers


# ---------------------------------------------------------------------------------------------------------------
# Demo dataset
# ---------------------------------------------------------------------------------------------------------------

# scikit-image photographs shipped inside its wheel (checked to load with the network disabled, scikit-image 0.26).
TRAIN_SOURCES = ("astronaut", "rocket", "stereo_motorcycle", "immunohistochemistry", "hubble_deep_field", "brick",
                 "grass", "gravel")
TEST_SOURCES = ("chelsea", "coffee", "camera")  # held out: never used for training tiles


def source_image(name: str) -> np.ndarray:
  """A bundled scikit-image photograph as uint8 [H, W, 3] (grey images repeated over channels)."""
  from skimage import data as skdata  # pylint: disable=g-import-not-at-top  (only the demo needs scikit-image)
  img = getattr(skdata, name)()
  if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity): the left view only
    img = img[0]
  img = np.asarray(img)
  if img.dtype != np.uint8:
    raise specs.DatasetError(f"skimage.data.{name} is {img.dtype}, expected uint8")
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  return np.ascontiguousarray(img[..., :3])


def random_tile(image: np.ndarray, size: int, seed: SeedLike) -> np.ndarray:
  """A random square crop of ``image`` (side between ``size`` and 90% of the short side, at most 2.5x size),
  resized to ``size`` x ``size`` (bicubic) and flipped left-right with probability 1/2."""
  rng = _rng(seed)
  h, w = image.shape[:2]
  short = min(h, w)
  hi = max(size, min(int(0.9 * short), int(2.5 * size)))
  side = int(rng.integers(min(size, short), hi + 1)) if hi > size else min(size, short)
  top = int(rng.integers(0, h - side + 1))
  left = int(rng.integers(0, w - side + 1))
  crop = image[top:top + side, left:left + side]
  if side != size:
    crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))
  if rng.random() < 0.5:
    crop = crop[:, ::-1]
  return np.ascontiguousarray(crop)


def make_pair(sources: Dict[str, np.ndarray], index: int, *, size: int, seed: Sequence[int]
              ) -> Tuple[np.ndarray, np.ndarray, str]:
  """Sample ``index`` of a split: (rainy uint8, clean uint8, source name); sources cycle with the index."""
  rng = np.random.default_rng(list(seed) + [index])
  names = sorted(sources)
  src = names[index % len(names)]
  clean = random_tile(sources[src], size, rng)
  rainy, _ = synthesize_rain(clean.astype(np.float32) / 255.0, rng)
  rainy = np.clip(np.round(rainy * 255.0), 0, 255).astype(np.uint8)
  return rainy, clean, src


class SyntheticRain(builders.RestorationBuilder):
  """Offline demo deraining set: rainy/clean tiles from scikit-image photos ('restormer' protocol on Y).

  Train: ``TRAIN_EXAMPLES`` tiles of ``TRAIN_TILE`` px from :data:`TRAIN_SOURCES`; test: ``TEST_EXAMPLES`` tiles of
  ``TEST_TILE`` px from the held-out :data:`TEST_SOURCES`. Names are '<split>_<index>_<source>'.
  """

  name = "synthetic_rain"
  SPEC = specs.SYNTHETIC_RAIN
  SEED = 20240611
  TRAIN_EXAMPLES = 384
  TEST_EXAMPLES = 48
  TRAIN_TILE = 144
  TEST_TILE = 128

  def _split_generators(self, dl_manager):
    del dl_manager  # generated, nothing to download
    return {
        "train": self._generate_examples("train", TRAIN_SOURCES, self.TRAIN_EXAMPLES, self.TRAIN_TILE),
        "test": self._generate_examples("test", TEST_SOURCES, self.TEST_EXAMPLES, self.TEST_TILE),
    }

  def _generate_examples(self, split: str, source_names: Sequence[str], count: int, size: int
                         ) -> Iterator[Tuple[str, dict]]:
    sources = {n: source_image(n) for n in source_names}
    split_id = specs.SPLITS.index(split)
    width = len(str(count - 1))
    for i in range(count):
      rainy, clean, src = make_pair(sources, i, size=size, seed=(self.SEED, split_id))
      name = f"{split}_{i:0{width}d}_{src}"
      yield name, {"input": imageio.encode_png(rainy, compress_level=1),
                   "target": imageio.encode_png(clean, compress_level=1), "name": name}
