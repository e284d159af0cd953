"""Pairing a dataset's ``input`` and ``target`` images by file name, on top of :mod:`sparse_restore.imageio`.

Listing (image extensions, hidden files skipped, natural order) and reading are imageio's; this module adds
what a dataset needs on top: one image per stem, pairing by stem (or by a key with a suffix removed, e.g.
AGAN's ``0_rain`` <-> ``0_clean``), and :class:`~sparse_restore.datasets.specs.DatasetError` messages that name
the folder or file and list what is unpaired.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Dict, List, Sequence, Tuple

from sparse_restore import imageio
from sparse_restore.datasets.specs import DatasetError

_MAX_LISTED = 20  # names listed in an error message before "... and N more"


@dataclasses.dataclass(frozen=True)
class Pair:
  """One input/target pair found on disk; ``name`` is the input's file stem."""

  name: str
  input_path: pathlib.Path
  target_path: pathlib.Path


def _listed(names: Sequence[str]) -> str:
  names = sorted(names, key=imageio.natural_key)
  shown = ", ".join(names[:_MAX_LISTED])
  if len(names) > _MAX_LISTED:
    shown += f", ... and {len(names) - _MAX_LISTED} more"
  return shown


def list_images(folder: pathlib.Path, *, role: str = "") -> Dict[str, pathlib.Path]:
  """Image files of ``folder`` by stem, in natural order (:func:`sparse_restore.imageio.list_images`).

  Raises:
    DatasetError: the folder is missing or holds no image, or two images share a stem (e.g. 1.png and 1.jpg).
  """
  folder = pathlib.Path(folder)
  what = f" ({role})" if role else ""
  if not folder.is_dir():
    raise DatasetError(f"missing folder {folder}{what}")
  images: Dict[str, pathlib.Path] = {}
  for path in map(pathlib.Path, imageio.list_images(str(folder))):
    if path.stem in images:
      raise DatasetError(f"two images with the same name {path.stem!r} in {folder}: {images[path.stem].name} and "
                         f"{path.name}")
    images[path.stem] = path
  if not images:
    raise DatasetError(f"folder {folder}{what} contains no images ({', '.join(imageio.IMAGE_EXTENSIONS)})")
  return images


def _strip(stem: str, suffix: str) -> str:
  return re.sub(f"(?:{suffix})$", "", stem) if suffix else stem


def pair_folders(input_folder: pathlib.Path, target_folder: pathlib.Path, *, input_suffix: str = "",
                 target_suffix: str = "", many_to_one: bool = False) -> List[Pair]:
  """Pairs the images of two folders by file stem, sorted naturally by name (:func:`imageio.natural_key`).

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
  return [Pair(s, inputs[s], targets[matched[s]]) for s in sorted(matched, key=imageio.natural_key)]


def read_image(path: pathlib.Path) -> Tuple[bytes, Tuple[int, int]]:
  """Encoded 8-bit RGB bytes of an image file and its (width, height) (:func:`imageio.read_encoded_rgb8`).

  Raises:
    DatasetError: the file cannot be read or decoded, or has more than 8 bits per channel.
  """
  try:
    return imageio.read_encoded_rgb8(path)
  except imageio.ImageReadError as e:
    # imageio says "<path>: cannot read image (<why>)" or "<path>: <why>"; name the file once, then why.
    reason = str(e).removeprefix(f"{path}: ")
    if reason.startswith("cannot read image (") and reason.endswith(")"):
      reason = reason[len("cannot read image ("):-1]
    raise DatasetError(f"cannot read image {path}: {reason}") from None
