"""Paired image-restoration datasets as TFDS builders (array_record, readable by grain without TensorFlow), and
their registry.

    from sparse_restore import datasets
    builder = datasets.get_builder('rain200h', data_dir='~/tfds', manual_dir='~/data/Rain200H').build()
    source = builder.as_data_source('test')            # random access: source[i] -> dict of numpy arrays
    datasets.get_spec('rain200h').protocol, .channel   # 'restormer', 'y': how results on the set are scored

Registered names: 'rain200h', 'rain200l', 'did', 'ddn', 'spa', 'agan', 'densehaze' (raw folders downloaded by
hand, see each builder's MANUAL_DOWNLOAD_INSTRUCTIONS or data/README.md) and 'synthetic_rain' (generated offline
from scikit-image's sample photos). The same builders can be built with the TFDS CLI: ``tfds build
data/rain200h --manual_dir ...`` (the CLI needs TensorFlow).

Modules: :mod:`~sparse_restore.datasets.specs` (what each dataset is: folders, pairing, protocol),
:mod:`~sparse_restore.datasets.folders` (pairing files by name, on :mod:`sparse_restore.imageio`),
:mod:`~sparse_restore.datasets.builders` (the TFDS builders), :mod:`~sparse_restore.datasets.synthetic_rain`
(the offline demo set); the registry below maps names to builders.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Type

from sparse_restore.datasets import builders, folders, specs  # noqa: F401
from sparse_restore.datasets.builders import (  # noqa: F401
    Agan,
    Ddn,
    Densehaze,
    Did,
    PairedImageBuilder,
    Rain200h,
    Rain200l,
    RestorationBuilder,
    Spa,
)
from sparse_restore.datasets.folders import Pair, pair_folders, read_image  # noqa: F401
from sparse_restore.datasets.specs import SPECS, DatasetError, DatasetSpec  # noqa: F401
from sparse_restore.datasets.synthetic_rain import SyntheticRain, synthesize_rain  # noqa: F401

_BUILDERS: Dict[str, Type[RestorationBuilder]] = {}


def register(cls: Type[RestorationBuilder]) -> Type[RestorationBuilder]:
  """Adds a builder class to the registry under ``cls.SPEC.name``."""
  name = cls.SPEC.name
  if name in _BUILDERS and _BUILDERS[name] is not cls:
    raise ValueError(f"dataset {name!r} is registered twice")
  _BUILDERS[name] = cls
  return cls


for _cls in builders.PAIRED_BUILDERS + (SyntheticRain,):
  register(_cls)


def names() -> List[str]:
  """Sorted names of all registered datasets."""
  return sorted(_BUILDERS)


def builder_class(name: str) -> Type[RestorationBuilder]:
  """The builder class registered as ``name``."""
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
