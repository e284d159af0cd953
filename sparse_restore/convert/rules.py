"""The contract between the conversion engine and the per-architecture rule tables.

Each architecture module (``sparse_restore/convert/<arch>.py``) defines ``RULES = ArchRules(...)``:

* ``detect_config(state)``: constructor arguments of our network, read off the PyTorch keys and shapes
  (raises :class:`ConversionError` naming the key that is missing or odd).
* ``map_key(torch_key)``: the Flax parameter path (tuple of names) for a PyTorch key, or ``None`` to drop the
  entry on purpose (buffers that we recompute). Keys it does not recognise raise ``KeyError`` and are
  reported as unexpected.
* ``convert_array(torch_key, array)``: the array in Flax layout (transposes, flips).
* ``unwrap(obj)`` (optional): the state dict inside a loaded checkpoint container.

The engine (``engine.py``) flattens, renames, transposes, checks every shape against a freshly initialised tree,
reports missing / unexpected / mis-shaped entries by name, and only then writes anything.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

FlaxPath = Tuple[str, ...]


class ConversionError(ValueError):
  """A checkpoint cannot be converted; the message says which file / key and why."""


@dataclasses.dataclass(frozen=True)
class ArchRules:
  name: str
  detect_config: Callable[[Mapping[str, np.ndarray]], Dict[str, Any]]
  map_key: Callable[[str], Optional[FlaxPath]]
  convert_array: Callable[[str, np.ndarray], np.ndarray]
  unwrap: Optional[Callable[[Any], Mapping[str, Any]]] = None


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch ``Conv2d.weight`` [O, I/groups, kh, kw] -> Flax [kh, kw, I/groups, O]."""
  if w.ndim != 4:
    raise ConversionError(f"expected a 4-d conv weight, got shape {tuple(w.shape)}")
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def conv_transpose_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch ``ConvTranspose2d.weight`` [I, O, kh, kw] -> Flax ``ConvTranspose`` [kh, kw, I, O], spatially flipped
  (for ``transpose_kernel=False``)."""
  if w.ndim != 4:
    raise ConversionError(f"expected a 4-d transposed-conv weight, got shape {tuple(w.shape)}")
  return np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1))[::-1, ::-1])


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch ``Linear.weight`` [out, in] -> Flax ``Dense.kernel`` [in, out]."""
  if w.ndim != 2:
    raise ConversionError(f"expected a 2-d linear weight, got shape {tuple(w.shape)}")
  return np.ascontiguousarray(w.T)
