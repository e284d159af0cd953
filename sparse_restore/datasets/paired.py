"""Paired restoration datasets as TFDS builders (array_record), plus the dataset registry.

Every dataset is a pair of folders per split, degraded ``input`` images and clean ``target`` images, paired by
file name (stem). A :class:`DatasetSpec` describes where the authors' folders live under the manual directory,
how their file names pair up and how results on the set are scored (``protocol``/``channel``, read by the
training config). :class:`PairedImageBuilder` turns such folders into a TFDS dataset with features
``{'input': Image, 'target': Image, 'name': Text}`` and splits ``train``/``test``, written as ``array_record``
so that ``tfds.data_source``/``builder.as_data_source`` (and grain) can read it by index. Building and reading
need no TensorFlow: images go in as encoded bytes (the original PNG/JPEG bytes when they are 8-bit RGB, else a
lossless PNG re-encode by Pillow) and come out decoded by Pillow.

    builder = get_builder('rain200h', data_dir='/data/tfds', manual_dir='/data/Rain200H')
    builder.build()                       # idempotent: no-op when already prepared
    train = builder.as_data_source('train')
    train[0]   # {'input': uint8[H, W, 3], 'target': uint8[H, W, 3], 'name': b'1'}

Problems with the raw folders raise :class:`DatasetError` naming the path and what is wrong.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import os
import pathlib
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Type

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.core import utils as tfds_utils

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PROTOCOLS = ("restormer", "rcdnet", "basicsr")
CHANNELS = ("y", "rgb")
SPLITS = ("train", "test")
_MAX_LISTED = 20  # names listed in an error message before "... and N more"


class DatasetError(ValueError):
  """A dataset's raw folders or prepared files are missing or inconsistent (the message says which and why)."""


# ---------------------------------------------------------------------------------------------------------------
# Dataset definitions
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a paired dataset looks like on disk and how it is scored.

  Attributes:
    name: registry name (also the TFDS dataset name and folder under ``data_dir``).
    title: human-readable name.
    protocol: evaluation protocol for this set ('restormer', 'rcdnet' or 'basicsr'; see docs/evaluation.md).
    channel: channel the metrics are computed on ('y' for the Y of YCbCr, 'rgb').
    split_dirs: per split ('train', 'test'), candidate folders relative to the manual directory; the first
      that exists is used (e.g. ``('test_a',)`` for AGAN, or ``('train', 'train/Rain200H')`` to also accept the
      authors' ``Datasets/train/Rain200H`` layout with the manual directory pointing at ``Datasets``).
    input_dir: name of the degraded-image folder inside a split folder.
    target_dir: name of the clean-image folder inside a split folder.
    input_suffix: regular expression removed from the end of an input stem to get its pairing key when no target
      has the same stem (e.g. '_rain' for AGAN's ``0_rain.png``); '' for none.
    target_suffix: the same for target stems (e.g. '_clean' for AGAN's ``0_clean.png``).
    many_to_one: whether several inputs may share one target (DDN: 14 rainy versions per clean image).
    sizes: published number of pairs per split (documentation; a different count is not an error).
    description: one paragraph for the TFDS info.
    homepage: where the data comes from.
  """

  name: str
  title: str
  protocol: str
  channel: str
  split_dirs: Dict[str, Tuple[str, ...]] = dataclasses.field(
      default_factory=lambda: {"train": ("train",), "test": ("test",)})
  input_dir: str = "input"
  target_dir: str = "target"
  input_suffix: str = ""
  target_suffix: str = ""
  many_to_one: bool = False
  sizes: Dict[str, int] = dataclasses.field(default_factory=dict)
  description: str = ""
  homepage: str = ""

  def __post_init__(self):
    if self.protocol not in PROTOCOLS:
      raise ValueError(f"dataset {self.name!r}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
    if self.channel not in CHANNELS:
      raise ValueError(f"dataset {self.name!r}: channel must be one of {CHANNELS}, got {self.channel!r}")

  def layout(self) -> str:
    """The expected folder layout under the manual directory, as text."""
    lines = []
    for split in SPLITS:
      for d in self.split_dirs.get(split, ()):
        lines.append(f"  <manual_dir>/{d}/{self.input_dir}/*.png    degraded {split} images")
        lines.append(f"  <manual_dir>/{d}/{self.target_dir}/*.png   clean {split} images (paired by file name)")
        break
    return "\n".join(lines)

  def manual_download_instructions(self) -> str:
    """Text for ``MANUAL_DOWNLOAD_INSTRUCTIONS``: where to get the data and where to put it."""
    alt = []
    for split in SPLITS:
      dirs = self.split_dirs.get(split, ())
      if len(dirs) > 1:
        alt.append(f"{split}: " + " or ".join(f"<manual_dir>/{d}/" for d in dirs))
    alt_text = ("\nAccepted split folders (first existing wins): " + "; ".join(alt)) if alt else ""
    pairing = "Pairs are matched by file name without extension (stem)"
    if self.input_suffix or self.target_suffix:
      pairing += (f"; when no target has an input's stem, the suffixes {self.input_suffix!r} (input) and "
                  f"{self.target_suffix!r} (target) are removed before matching")
    if self.many_to_one:
      pairing += "; several inputs may share one target"
    sizes = ", ".join(f"{k} {v:,}" for k, v in self.sizes.items())
    return (
        f"Download {self.title} (links in the README of {self.homepage or 'the authors'}) and unpack it so that\n"
        f"{self.layout()}\n"
        f"{alt_text}\n{pairing}. Published pair counts: {sizes or 'n/a'}.\n"
        f"Then build with: tfds build data/{self.name} --manual_dir <manual_dir> --data_dir <data_dir>\n"
        f"or sparse_restore.datasets.get_builder({self.name!r}, data_dir=..., manual_dir=...).build()"
    ).replace("\n\n", "\n")




def _derain_splits(folder: str) -> Dict[str, Tuple[str, ...]]:
  """Split folders of the DRSformer sets: <manual>/train or the authors' <Datasets>/train/<folder>."""
  return {"train": ("train", f"train/{folder}"), "test": ("test", f"test/{folder}")}


_DRSFORMER_HOME = "https://github.com/cschenxiang/DRSformer"

SPECS: Dict[str, DatasetSpec] = {}


def _add_spec(spec: DatasetSpec) -> DatasetSpec:
  SPECS[spec.name] = spec
  return spec


RAIN200H = _add_spec(DatasetSpec(
    name="rain200h", title="Rain200H", protocol="restormer", channel="y",
    split_dirs=_derain_splits("Rain200H"), sizes={"train": 1800, "test": 200},
    description="Rain200H (Yang et al. 2017, heavy synthetic rain streaks), as distributed by the DRSformer authors.",
    homepage=_DRSFORMER_HOME))
RAIN200L = _add_spec(DatasetSpec(
    name="rain200l", title="Rain200L", protocol="restormer", channel="y",
    split_dirs=_derain_splits("Rain200L"), sizes={"train": 1800, "test": 200},
    description="Rain200L (Yang et al. 2017, light synthetic rain streaks), as distributed by the DRSformer authors.",
    homepage=_DRSFORMER_HOME))
DID = _add_spec(DatasetSpec(
    name="did", title="DID-Data", protocol="rcdnet", channel="y",
    split_dirs=_derain_splits("DID-Data"), sizes={"train": 12000, "test": 1200},
    description="DID-Data (Zhang & Patel 2018, DID-MDN; three rain densities), as distributed by the DRSformer "
                "authors.",
    homepage=_DRSFORMER_HOME))
DDN = _add_spec(DatasetSpec(
    name="ddn", title="DDN-Data", protocol="rcdnet", channel="y",
    split_dirs=_derain_splits("DDN-Data"), input_suffix=r"_\d+", many_to_one=True,
    sizes={"train": 12600, "test": 1400},
    description="DDN-Data (Fu et al. 2017, 14 rain types per clean image), as distributed by the DRSformer authors. "
                "Inputs named like the targets pair directly; original-style names '<id>_<k>' pair with '<id>'.",
    homepage=_DRSFORMER_HOME))
SPA = _add_spec(DatasetSpec(
    name="spa", title="SPA-Data", protocol="restormer", channel="y",
    split_dirs=_derain_splits("SPA-Data"), sizes={"train": 638492, "test": 1000},
    description="SPA-Data (Wang et al. 2019, real rain with pseudo ground truth), fully paired as distributed by the "
                "DRSformer authors.",
    homepage=_DRSFORMER_HOME))
AGAN = _add_spec(DatasetSpec(
    name="agan", title="AGAN-Data (raindrop)", protocol="basicsr", channel="rgb",
    split_dirs={"train": ("train",), "test": ("test_a",)}, input_dir="data", target_dir="gt",
    input_suffix=r"_rain", target_suffix=r"_clean", sizes={"train": 861, "test": 58},
    description="AGAN-Data raindrop removal (Qian et al. 2018), layout used by AST: train/ and test_a/ with data/ "
                "(raindrop) and gt/ (clean). AST scores it with skimage PSNR/SSIM on RGB; here protocol 'basicsr' "
                "on RGB (same PSNR up to 8-bit rounding; SSIM uses the 11x11 Gaussian window, not skimage's 7x7).",
    homepage="https://github.com/joshyZhou/AST"))
DENSEHAZE = _add_spec(DatasetSpec(
    name="densehaze", title="Dense-Haze", protocol="basicsr", channel="rgb",
    split_dirs={"train": ("train_dense",), "test": ("valid_dense",)}, input_dir="input", target_dir="gt",
    input_suffix=r"_hazy", target_suffix=r"_(?:GT|gt)",
    description="Dense-Haze (NTIRE 2019 dehazing; 1600x1200 hazy/clear pairs), layout used by AST: train_dense/ "
                "and valid_dense/ with input/ and gt/. AST scores it with skimage PSNR/SSIM on RGB; here protocol "
                "'basicsr' on RGB.",
    homepage="https://github.com/joshyZhou/AST"))
SYNTHETIC_RAIN = _add_spec(DatasetSpec(
    name="synthetic_rain", title="Synthetic rain demo", protocol="restormer", channel="y",
    split_dirs={}, sizes={},
    description="Demo set generated offline: crops of scikit-image's bundled photos with synthetic rain streaks; "
                "the test split uses different source photos than the train split.",
    homepage="https://scikit-image.org/docs/stable/api/skimage.data.html"))


# ---------------------------------------------------------------------------------------------------------------
# Folder scanning and pairing
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
  """One input/target pair found on disk; ``name`` is the input's file stem."""

  name: str
  input_path: pathlib.Path
  target_path: pathlib.Path


def natural_key(text: str):
  """Sort key that orders '2' before '10' (numbers compared as numbers)."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def _listed(names: Sequence[str]) -> str:
  names = sorted(names, key=natural_key)
  shown = ", ".join(names[:_MAX_LISTED])
  if len(names) > _MAX_LISTED:
    shown += f", ... and {len(names) - _MAX_LISTED} more"
  return shown


def list_images(folder: pathlib.Path, *, role: str = "") -> Dict[str, pathlib.Path]:
  """Image files of ``folder`` by stem (hidden and non-image files are ignored).

  Raises:
    DatasetError: the folder is missing or holds no image, or two images share a stem (e.g. 1.png and 1.jpg).
  """
  what = f" ({role})" if role else ""
  if not folder.is_dir():
    raise DatasetError(f"missing folder {folder}{what}")
  images: Dict[str, pathlib.Path] = {}
  for p in folder.iterdir():
    if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS or not p.is_file():
      continue
    if p.stem in images:
      raise DatasetError(f"two images with the same name {p.stem!r} in {folder}: {images[p.stem].name} and {p.name}")
    images[p.stem] = p
  if not images:
    raise DatasetError(f"folder {folder}{what} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
  return images


def _strip(stem: str, suffix: str) -> str:
  return re.sub(f"(?:{suffix})$", "", stem) if suffix else stem


def pair_folders(input_folder: pathlib.Path, target_folder: pathlib.Path, *, input_suffix: str = "",
                 target_suffix: str = "", many_to_one: bool = False) -> List[Pair]:
  """Pairs the images of two folders by file stem, sorted naturally by name.

  An input pairs with the target of the same stem; inputs left over pair by key (the stem without
  ``input_suffix``) with targets whose stem without ``target_suffix`` is that key.

  Raises:
    DatasetError: listing inputs without a target and targets without an input, or a target claimed by several
      inputs when ``many_to_one`` is False, or two targets with the same key.
  """
  inputs = list_images(input_folder, role="inputs")
  targets = list_images(target_folder, role="targets")
  matched: Dict[str, str] = {s: s for s in inputs if s in targets}
  rest_inputs = [s for s in inputs if s not in matched]
  if rest_inputs and (input_suffix or target_suffix or many_to_one):
    used = set(matched.values())
    candidates = targets if many_to_one else [t for t in targets if t not in used]
    by_key: Dict[str, str] = {}
    for t in candidates:
      key = _strip(t, target_suffix)
      if key in by_key and by_key[key] != t:
        raise DatasetError(f"targets {by_key[key]!r} and {t!r} in {target_folder} both pair with key {key!r}")
      by_key.setdefault(key, t)
    for s in rest_inputs:
      key = _strip(s, input_suffix)
      if key in by_key:
        matched[s] = by_key[key]
  missing_targets = [s for s in inputs if s not in matched]
  used_targets = set(matched.values())
  missing_inputs = [t for t in targets if t not in used_targets]
  if missing_targets or missing_inputs:
    msg = [f"unpaired files between {input_folder} and {target_folder}:"]
    if missing_targets:
      msg.append(f"  {len(missing_targets)} in {input_folder.name}/ but not in {target_folder.name}/: "
                 f"{_listed(missing_targets)}")
    if missing_inputs:
      msg.append(f"  {len(missing_inputs)} in {target_folder.name}/ but not in {input_folder.name}/: "
                 f"{_listed(missing_inputs)}")
    msg.append("  (pairs are matched by file name without extension)")
    raise DatasetError("\n".join(msg))
  if not many_to_one and len(used_targets) != len(matched):
    counts: Dict[str, List[str]] = {}
    for s, t in matched.items():
      counts.setdefault(t, []).append(s)
    shared = {t: v for t, v in counts.items() if len(v) > 1}
    t, v = next(iter(shared.items()))
    raise DatasetError(f"target {t!r} in {target_folder} pairs with several inputs ({_listed(v)})")
  return [Pair(s, inputs[s], targets[matched[s]]) for s in sorted(matched, key=natural_key)]


def read_image(path: pathlib.Path) -> Tuple[bytes, Tuple[int, int]]:
  """Encoded 8-bit RGB bytes of an image file and its (width, height).

  The file's own bytes are kept when it is an 8-bit RGB PNG or JPEG (exact round trip); other modes (grey,
  palette, RGBA: alpha dropped) are converted to RGB and re-encoded as PNG.

  Raises:
    DatasetError: the file cannot be read or decoded, or has more than 8 bits per channel.
  """
  try:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      fmt, mode, size = img.format, img.mode, img.size
      if mode in ("I", "I;16", "I;16B", "I;16L", "F") or mode.startswith("I;16"):
        raise DatasetError(f"unsupported image {path}: mode {mode} (only 8-bit images are supported)")
      if mode == "RGB" and fmt in ("PNG", "JPEG"):
        return data, size
      buf = io.BytesIO()
      img.convert("RGB").save(buf, format="PNG")
      return buf.getvalue(), size
  except DatasetError:
    raise
  except Image.UnidentifiedImageError:
    raise DatasetError(f"cannot read image {path}: not a recognised image file (unknown format, truncated or "
                       f"corrupt)") from None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files.
    raise DatasetError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def encode_png(array: np.ndarray, *, compress_level: int = 6) -> bytes:
  """PNG bytes of a uint8 [H, W, 3] array (Pillow, no TensorFlow)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG", compress_level=compress_level)
  return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# TFDS builders
# ---------------------------------------------------------------------------------------------------------------


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
  SPEC = RAIN200H


class Rain200l(PairedImageBuilder):
  """Rain200L (light rain, 1,800/200 pairs; 'restormer' protocol on Y)."""

  name = "rain200l"
  SPEC = RAIN200L


class Did(PairedImageBuilder):
  """DID-Data (12,000/1,200 pairs; 'rcdnet' protocol on Y)."""

  name = "did"
  SPEC = DID


class Ddn(PairedImageBuilder):
  """DDN-Data (12,600/1,400 pairs; 'rcdnet' protocol on Y)."""

  name = "ddn"
  SPEC = DDN


class Spa(PairedImageBuilder):
  """SPA-Data (638,492/1,000 pairs; 'restormer' protocol on Y)."""

  name = "spa"
  SPEC = SPA


class Agan(PairedImageBuilder):
  """AGAN-Data raindrop removal (train/ and test_a/ with data/ and gt/; 'basicsr' protocol on RGB)."""

  name = "agan"
  SPEC = AGAN


class Densehaze(PairedImageBuilder):
  """Dense-Haze (train_dense/ and valid_dense/ with input/ and gt/; 'basicsr' protocol on RGB)."""

  name = "densehaze"
  SPEC = DENSEHAZE


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

_BUILDERS: Dict[str, Type[RestorationBuilder]] = {}


def register(cls: Type[RestorationBuilder]) -> Type[RestorationBuilder]:
  """Adds a builder class to the registry under ``cls.SPEC.name``."""
  name = cls.SPEC.name
  if name in _BUILDERS and _BUILDERS[name] is not cls:
    raise ValueError(f"dataset {name!r} is registered twice")
  _BUILDERS[name] = cls
  return cls


for _cls in (Rain200h, Rain200l, Did, Ddn, Spa, Agan, Densehaze):
  register(_cls)


def names() -> List[str]:
  """Sorted names of all registered datasets."""
  _import_all()
  return sorted(_BUILDERS)


def builder_class(name: str) -> Type[RestorationBuilder]:
  """The builder class registered as ``name``."""
  _import_all()
  try:
    return _BUILDERS[name]
  except KeyError:
    raise DatasetError(f"unknown dataset {name!r}; registered datasets: {', '.join(sorted(_BUILDERS))}") from None


def get_spec(name: str) -> DatasetSpec:
  """The :class:`DatasetSpec` (protocol, channel, layout) of dataset ``name``."""
  return builder_class(name).SPEC


def get_builder(name: str, *, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                file_format: Optional[str] = None) -> RestorationBuilder:
  """A builder for dataset ``name``.

  Args:
    name: registry name ('rain200h', 'rain200l', 'did', 'ddn', 'spa', 'agan', 'densehaze', 'synthetic_rain').
    data_dir: TFDS data directory (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    manual_dir: folder with the raw split folders, used by ``builder.build()``.
    file_format: record format; default 'array_record' (needed for random access by grain).
  """
  cls = builder_class(name)
  builder = cls(data_dir=os.path.expanduser(os.fspath(data_dir)) if data_dir else None, file_format=file_format)
  builder.manual_dir = os.path.expanduser(os.fspath(manual_dir)) if manual_dir else None
  return builder


def _import_all():
  # The synthetic demo builder lives in its own module (it imports this one).
  from sparse_restore.datasets import synthetic_rain  # noqa: F401  pylint: disable=g-import-not-at-top
