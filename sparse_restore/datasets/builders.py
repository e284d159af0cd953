"""TFDS builders of the paired datasets: array_record, read by grain / ``tfds.data_source`` without TensorFlow.

:class:`PairedImageBuilder` turns the folders a :class:`~sparse_restore.datasets.DatasetSpec` describes
into a TFDS dataset with features ``{'input': Image, 'target': Image, 'name': Text}`` and splits
``train``/``test``, written as ``array_record`` so that ``tfds.data_source``/``builder.as_data_source`` (and
grain) can read it by index. Building and reading need no TensorFlow: images go in as encoded bytes (the
original PNG/JPEG bytes when they are 8-bit RGB, else a lossless PNG re-encode, see
:func:`sparse_restore.imageio.read_encoded_rgb8`) and come out decoded by Pillow.

    builder = sparse_restore.datasets.get_builder('rain200h', data_dir='/data/tfds', manual_dir='/data/Rain200H')
    builder.build()                       # idempotent: no-op when already prepared
    train = builder.as_data_source('train')
    train[0]   # {'input': uint8[H, W, 3], 'target': uint8[H, W, 3], 'name': b'1'}

Problems with the raw folders raise :class:`~sparse_restore.datasets.specs.DatasetError` naming the path and
what is wrong. The registry (names -> builders) is in ``sparse_restore/datasets/__init__.py``.
"""
from __future__ import annotations

import inspect
import os
import pathlib
from typing import Dict, Iterator, List, Optional, Tuple

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from sparse_restore.datasets import specs
from sparse_restore.datasets.folders import Pair, pair_folders, read_image
from sparse_restore.datasets.specs import SPLITS, DatasetError, DatasetSpec


class RestorationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of every builder here: features, array_record default, ``build()`` and the attached spec.

  Records are stored in generation order (names sorted naturally), so index ``i`` of a split is stable.
  """

  SPEC: DatasetSpec
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or "array_record", **kwargs)
    self.manual_dir: Optional[str] = None

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> Optional[epath.Path]:
    """The file defining the class (TFDS 4.9.10's own lookup needs the py<3.9 backport importlib_resources)."""
    try:
      return epath.Path(inspect.getfile(cls))
    except (TypeError, OSError):
      return None

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.SPEC
    return tfds.core.DatasetInfo(
        builder=self,
        description=spec.description,
        features=tfds.features.FeaturesDict({
            "input": tfds.features.Image(shape=(None, None, 3)),
            "target": tfds.features.Image(shape=(None, None, 3)),
            "name": tfds.features.Text(),
        }),
        homepage=spec.homepage or None,
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(protocol=spec.protocol, channel=spec.channel),
    )

  @property
  def spec(self) -> DatasetSpec:
    """The :class:`DatasetSpec` of this dataset (protocol, channel, layout)."""
    return self.SPEC

  def build(self, manual_dir: Optional[str] = None) -> "RestorationBuilder":
    """Prepares the dataset under ``data_dir`` unless it already is there; returns ``self``.

    Args:
      manual_dir: folder holding the raw split folders (default: the ``manual_dir`` given to ``get_builder``).
    """
    if not self.is_prepared():
      manual_dir = manual_dir or self.manual_dir
      config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir else None)
      self.download_and_prepare(download_config=config)
    return self


class PairedImageBuilder(RestorationBuilder, skip_registration=True):
  """Builder for a dataset of paired folders described by ``SPEC`` (see :class:`DatasetSpec`)."""

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    if "SPEC" in cls.__dict__:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls.SPEC.manual_download_instructions()

  def split_folders(self, manual_dir: pathlib.Path) -> Dict[str, pathlib.Path]:
    """The folder of each split under ``manual_dir``.

    Raises:
      DatasetError: naming the expected path and its contents when a split folder or its input/target folder
        is missing.
    """
    spec = self.SPEC
    if not manual_dir.is_dir():
      raise DatasetError(f"{spec.title}: manual directory {manual_dir} does not exist (give the folder of the raw "
                         f"images: manual_dir=..., config.data.manual_dir, or tfds build --manual_dir); expected "
                         f"layout:\n{spec.layout()}")
    out = {}
    for split in SPLITS:
      candidates = [manual_dir / d for d in spec.split_dirs[split]]
      found = [c for c in candidates if (c / spec.input_dir).is_dir() or (c / spec.target_dir).is_dir()]
      if not found:
        tried = " or ".join(str(c) for c in candidates)
        raise DatasetError(
            f"{spec.title}: missing {split} split folder {tried}: it should contain {spec.input_dir}/ (degraded "
            f"{split} images) and {spec.target_dir}/ (clean images, paired by file name); expected layout:\n"
            f"{spec.layout()}")
      folder = found[0]
      for sub, what in ((spec.input_dir, "degraded"), (spec.target_dir, "clean")):
        if not (folder / sub).is_dir():
          raise DatasetError(f"{spec.title}: missing folder {folder / sub} with the {what} {split} images "
                             f"(*.png); expected layout:\n{spec.layout()}")
      out[split] = folder
    return out

  def pairs(self, manual_dir) -> Dict[str, List[Pair]]:
    """All pairs per split found under ``manual_dir`` (checks folders and pairing, reads no pixels)."""
    spec = self.SPEC
    folders = self.split_folders(pathlib.Path(manual_dir))
    return {split: pair_folders(folder / spec.input_dir, folder / spec.target_dir, input_suffix=spec.input_suffix,
                                target_suffix=spec.target_suffix, many_to_one=spec.many_to_one)
            for split, folder in folders.items()}

  def _split_generators(self, dl_manager):
    manual_dir = dl_manager._manual_dir  # pylint: disable=protected-access  (the public property asserts)
    if not manual_dir:
      raise DatasetError(f"{self.SPEC.title} needs a manual directory (--manual_dir / manual_dir=...):\n"
                         f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    pairs = self.pairs(pathlib.Path(os.fspath(manual_dir)))  # every split checked before anything is written
    return {split: self._generate_examples(split, p) for split, p in pairs.items()}

  def _generate_examples(self, split: str, pairs: List[Pair]) -> Iterator[Tuple[str, dict]]:
    for pair in pairs:
      input_bytes, input_size = read_image(pair.input_path)
      target_bytes, target_size = read_image(pair.target_path)
      if input_size != target_size:
        raise DatasetError(
            f"{self.SPEC.title} {split} pair {pair.name!r}: input {pair.input_path} is "
            f"{input_size[0]}x{input_size[1]} (WxH) but target {pair.target_path} is "
            f"{target_size[0]}x{target_size[1]}")
      yield pair.name, {"input": input_bytes, "target": target_bytes, "name": pair.name}


class Rain200h(PairedImageBuilder):
  """Rain200H (heavy rain, 1,800/200 pairs; 'restormer' protocol on Y)."""

  name = "rain200h"
  SPEC = specs.RAIN200H


class Rain200l(PairedImageBuilder):
  """Rain200L (light rain, 1,800/200 pairs; 'restormer' protocol on Y)."""

  name = "rain200l"
  SPEC = specs.RAIN200L


class Did(PairedImageBuilder):
  """DID-Data (12,000/1,200 pairs; 'rcdnet' protocol on Y)."""

  name = "did"
  SPEC = specs.DID


class Ddn(PairedImageBuilder):
  """DDN-Data (12,600/1,400 pairs; 'rcdnet' protocol on Y)."""

  name = "ddn"
  SPEC = specs.DDN


class Spa(PairedImageBuilder):
  """SPA-Data (638,492/1,000 pairs; 'restormer' protocol on Y)."""

  name = "spa"
  SPEC = specs.SPA


class Agan(PairedImageBuilder):
  """AGAN-Data raindrop removal (train/ and test_a/ with data/ and gt/; 'basicsr' protocol on RGB)."""

  name = "agan"
  SPEC = specs.AGAN


class Densehaze(PairedImageBuilder):
  """Dense-Haze (train_dense/ and valid_dense/ with input/ and gt/; 'basicsr' protocol on RGB)."""

  name = "densehaze"
  SPEC = specs.DENSEHAZE


# The builders of the raw-folder datasets, in the order of data/README.md's table.
PAIRED_BUILDERS = (Rain200h, Rain200l, Did, Ddn, Spa, Agan, Densehaze)
