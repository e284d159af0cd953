"""What each paired dataset is: where its folders live, how its files pair up, and how results on it are scored.

Every dataset is a pair of folders per split, degraded ``input`` images and clean ``target`` images, paired by
file name (stem). A :class:`DatasetSpec` describes where the authors' folders live under the manual directory,
how their file names pair up and how results on the set are scored (``protocol``/``channel``: the values of
:data:`sparse_restore.metrics.PROTOCOLS` / :data:`~sparse_restore.metrics.CHANNELS`). The builders
(:mod:`sparse_restore.datasets.builders`) turn a spec into a TFDS dataset; the training job reads the protocol
from here (``sparse_restore.datasets.get_spec(name)``).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from sparse_restore.metrics import CHANNELS, PROTOCOLS

SPLITS = ("train", "test")


class DatasetError(ValueError):
  """A dataset's raw folders or prepared files are missing or inconsistent (the message says which and why)."""


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
