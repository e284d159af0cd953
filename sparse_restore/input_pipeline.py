"""Input pipeline: grain over TFDS array_record data sources (no TensorFlow needed).

    data_config = input_pipeline.resolve_data_config(config.data, workdir)  # data_dir '' -> <workdir>/tfds
    builder = input_pipeline.prepare(data_config)                          # builds the data once
    train_ds = input_pipeline.train_dataset(data_config, global_batch_size=16, seed=0,
                                            process_index=jax.process_index(), process_count=jax.process_count())
    it = iter(train_ds); batch = next(it)          # {'input': f32[B, P, P, 3], 'target': f32[B, P, P, 3]} in [0, 1]
    state = it.get_state(); ...; it.set_state(state)   # checkpoint/resume the exact stream
    for ex in input_pipeline.eval_dataset(data_config):   # {'name': str, 'input': f32[H, W, 3], 'target': ...}
      ...

``data_config`` (an ``ml_collections.ConfigDict``; see :func:`default_data_config`) fields:
  name: registry name of the dataset ('rain200h', 'rain200l', 'did', 'ddn', 'spa', 'agan', 'densehaze',
    'synthetic_rain'); ``sparse_restore.datasets.get_spec(name)`` gives its evaluation protocol and channel.
  data_dir: TFDS data directory holding the prepared array_record files. The jobs (training, evaluate mode)
    resolve '' to ``<workdir>/tfds`` once, with :func:`resolve_data_config`, and pass the resolved copy on; the
    functions here take ``data_dir`` as given ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
  manual_dir: folder with the authors' raw split folders (e.g. ``train/input``, ``train/target``, ``test/...``),
    needed only the first time a manually downloaded dataset is prepared; ignored for 'synthetic_rain'.
  train_split: TFDS split to train on ('train'; TFDS slicing such as 'train[:90%]' works).
  eval_split: split :func:`eval_dataset` reads by default ('test').
  patch_size: side of the square training crops (the same crop is taken from input and target). Images smaller
    than the patch are first padded at the bottom/right by mirror reflection that repeats the edge pixel (numpy
    'symmetric' = OpenCV BORDER_REFLECT, what BasicSR's ``padding`` does).
  random_flip: random vertical and horizontal flips (each with probability 1/2).
  random_rot90: random rotation by k * 90 degrees, k uniform in 0..3 (with random_flip this draws uniformly from
    the 8 flips/rotations of a square, like the reference ``random_augmentation``).
  num_workers: grain worker processes (0 = decode and augment in the main process with threads). The batches do
    not depend on it: randomness is seeded per element index.
  prefetch_buffer_size: batches read ahead by threads in each process (0 = no read-ahead).
  max_eval_images: images :func:`eval_dataset` yields by default (0 = all).

Training batches: ``MapDataset.source(split)[process_index::process_count]`` (each process a disjoint shard,
taken before shuffling) ``.seed(seed).shuffle().repeat()`` (reshuffled every epoch) ``.random_map(crop/flip/
rot90).batch(global_batch_size // process_count, drop_remainder=True)`` then ``to_iter_dataset`` and
``mp_prefetch`` when ``num_workers > 0``. Programs that use workers must guard their entry point with
``if __name__ == '__main__':`` (workers are spawned and re-import the main module); grain reads absl flags, so
outside ``absl.app`` the flags are marked parsed with their defaults.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import os
from typing import Any, Dict, Optional

import grain
import ml_collections
import numpy as np
from absl import flags

from sparse_restore import datasets

Batch = Dict[str, np.ndarray]


def default_data_config() -> ml_collections.ConfigDict:
  """The data fields with their defaults (the reference DRSformer recipe: 128 px patches, flips + rotations)."""
  return ml_collections.ConfigDict(dict(
      name="synthetic_rain",
      data_dir="",
      manual_dir="",
      train_split="train",
      eval_split="test",
      patch_size=128,
      random_flip=True,
      random_rot90=True,
      num_workers=0,
      prefetch_buffer_size=2,
      max_eval_images=0,
  ))


def _get(cfg, key, default):
  try:
    value = cfg[key]
  except (KeyError, AttributeError):
    return default
  return default if value is None else value


def resolve_data_config(data_config, workdir: str) -> ml_collections.ConfigDict:
  """An unlocked copy of ``data_config`` whose ``data_dir`` is a path: '' -> ``<workdir>/tfds``, '~' expanded.

  The one place ``data_dir`` is resolved; the jobs call it once at their start and pass the copy on (nothing is
  written back into the caller's config).
  """
  data = ml_collections.ConfigDict(data_config.to_dict())
  d = _get(data, "data_dir", "")
  data.data_dir = os.path.expanduser(os.fspath(d)) if d else os.path.join(os.fspath(workdir), "tfds")
  return data


def _data_dir(data_config) -> Optional[str]:
  d = _get(data_config, "data_dir", "")
  return os.path.expanduser(os.fspath(d)) if d else None  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets


def _builder(data_config) -> datasets.RestorationBuilder:
  """The prepared builder named by ``data_config``; a clear error when it has not been prepared."""
  name = _get(data_config, "name", "")
  builder = datasets.get_builder(name, data_dir=_data_dir(data_config),
                                 manual_dir=_get(data_config, "manual_dir", "") or None)
  if not builder.is_prepared():
    raise datasets.DatasetError(
        f"dataset {name!r} is not prepared in {builder.data_dir}; call "
        f"input_pipeline.prepare(data_config) first, or build it with "
        f"`tfds build data/{name} --manual_dir <raw folders> --data_dir {builder.data_dir_root}`")
  return builder


def is_prepared(data_config) -> bool:
  """Whether the array_record files of ``data_config.name`` already exist in ``data_config.data_dir``."""
  return datasets.get_builder(_get(data_config, "name", ""), data_dir=_data_dir(data_config),
                              manual_dir=_get(data_config, "manual_dir", "") or None).is_prepared()


def prepare(data_config) -> datasets.RestorationBuilder:
  """Makes sure the array_record files of ``data_config.name`` exist in ``data_config.data_dir`` and returns the
  builder.

  Builds them from ``data_config.manual_dir`` (or generates 'synthetic_rain') the first time; afterwards it only
  checks that they are there.
  """
  builder = datasets.get_builder(_get(data_config, "name", ""), data_dir=_data_dir(data_config),
                                 manual_dir=_get(data_config, "manual_dir", "") or None)
  return builder.build()


def prepare_on_all_processes(data_config) -> None:
  """:func:`prepare` in a (possibly multi-process) job: process 0 builds first, the others wait for it at a
  barrier and then only find the data built (the build is idempotent)."""
  import jax
  from sparse_restore import sharding
  if jax.process_index() == 0:
    prepare(data_config)
  if jax.process_count() > 1:
    sharding.wait_for_all_processes("sparse_restore:data_prepared")
    if jax.process_index() > 0:
      prepare(data_config)


@dataclasses.dataclass(frozen=True)
class PairedRandomPatch:
  """Grain random map: the same random crop (and flips/rotation) of input and target, as float32 in [0, 1]."""

  patch_size: int
  random_flip: bool = True
  random_rot90: bool = False

  def __call__(self, example: Dict[str, Any], rng: np.random.Generator) -> Batch:
    x, y = example["input"], example["target"]
    if x.shape != y.shape:
      raise datasets.DatasetError(f"example {_name(example)!r}: input shape {x.shape} != target shape {y.shape}")
    p = self.patch_size
    h, w = x.shape[:2]
    if h < p or w < p:  # mirror-pad bottom/right up to the patch (BasicSR `padding`, cv2.BORDER_REFLECT)
      pad = ((0, max(0, p - h)), (0, max(0, p - w)), (0, 0))
      x, y = np.pad(x, pad, mode="symmetric"), np.pad(y, pad, mode="symmetric")
      h, w = x.shape[:2]
    top = int(rng.integers(0, h - p + 1))
    left = int(rng.integers(0, w - p + 1))
    x, y = x[top:top + p, left:left + p], y[top:top + p, left:left + p]
    if self.random_flip:
      if rng.random() < 0.5:
        x, y = x[::-1], y[::-1]
      if rng.random() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    if self.random_rot90:
      k = int(rng.integers(0, 4))
      x, y = np.rot90(x, k), np.rot90(y, k)
    return {"input": to_float(x), "target": to_float(y)}


def _name(example) -> str:
  name = example.get("name", b"?")
  return name.decode() if isinstance(name, bytes) else str(name)


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 [..., C] -> contiguous float32 in [0, 1]."""
  return np.ascontiguousarray(image, dtype=np.float32) / np.float32(255.0)


def train_dataset(data_config, *, global_batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Infinite stream of random training patches for this process.

  Yields dicts ``{'input': float32[B, P, P, C], 'target': same}`` in [0, 1] with
  ``B = global_batch_size // process_count`` and ``P = data_config.patch_size``. The stream depends only on the
  data, ``seed``, the patch/augmentation settings and the process shard (not on ``num_workers``); ``iter(ds)``
  supports ``get_state()``/``set_state()``.
  """
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of process_count "
                     f"{process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  patch = int(_get(data_config, "patch_size", 128))
  if patch <= 0:
    raise ValueError(f"patch_size must be positive, got {patch}")
  builder = _builder(data_config)
  split = _get(data_config, "train_split", "train")
  source = builder.as_data_source(split)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if len(ds) == 0:
    raise datasets.DatasetError(f"{builder.name} split {split!r} has {len(source)} examples: none left for process "
                                f"{process_index} of {process_count}")
  ds = ds.seed(seed).shuffle().repeat()
  ds = ds.random_map(PairedRandomPatch(patch, bool(_get(data_config, "random_flip", True)),
                                       bool(_get(data_config, "random_rot90", False))))
  ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
  buffer = int(_get(data_config, "prefetch_buffer_size", 2))
  read = grain.ReadOptions(num_threads=min(buffer, 8) if buffer > 0 else 0, prefetch_buffer_size=max(buffer, 1))
  it_ds = ds.to_iter_dataset(read)
  workers = int(_get(data_config, "num_workers", 0))
  if workers > 0:
    if not flags.FLAGS.is_parsed():  # outside absl.app (tests, notebooks): grain reads its flags' defaults
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it_ds


class EvalImages(collections.abc.Sequence):
  """Full evaluation images, read lazily: ``ds[i] -> {'name': str, 'input': f32[H, W, C], 'target': ...}``."""

  def __init__(self, source, size: int):
    self._source = source
    self._size = size

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(self._size))]
    if index < 0:
      index += self._size
    if not 0 <= index < self._size:
      raise IndexError(f"index {index} out of range for {self._size} images")
    ex = self._source[index]
    return {"name": _name(ex), "input": to_float(ex["input"]), "target": to_float(ex["target"])}


def eval_dataset(data_config, *, split: Optional[str] = None, max_images: Optional[int] = None) -> EvalImages:
  """Full-size evaluation pairs (no crops), in the dataset's stored order (file names sorted naturally).

  Args:
    data_config: the data config.
    split: split to read (default ``data_config.eval_split``, normally 'test').
    max_images: at most this many images (default ``data_config.max_eval_images``; 0 or less = all).
  """
  builder = _builder(data_config)
  source = builder.as_data_source(split or _get(data_config, "eval_split", "test"))
  limit = int(max_images if max_images is not None else _get(data_config, "max_eval_images", 0))
  size = len(source) if limit <= 0 else min(limit, len(source))
  return EvalImages(source, size)
