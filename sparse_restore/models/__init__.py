"""Model registry: configs pick a network by name.

    model = models.create("drsformer", dim=48, use_mefc=True)
    params = model.init(rng, jnp.zeros((1, 64, 64, 3)))["params"]

Every registered network takes NHWC float images in [0, 1] and returns an image of the same shape.
It exposes a class attribute ``size_multiple`` (spatial sizes the network accepts are multiples of it).
"""
from __future__ import annotations

from typing import Callable, Dict, Type

import flax.linen as nn

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
  """Class decorator adding a network to the registry under ``name``."""

  def wrap(cls):
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = cls
    return cls

  return wrap


def names():
  """Sorted names of all registered networks."""
  _import_all()
  return sorted(_REGISTRY)


def get(name: str) -> Type[nn.Module]:
  """The network class registered as ``name``."""
  _import_all()
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}") from None


def create(name: str, **kwargs) -> nn.Module:
  """Builds the network ``name`` with constructor arguments ``kwargs``."""
  cls = get(name)
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise ValueError(f"bad arguments for model {name!r}: {e}") from None


def _import_all():
  # Imported lazily so that `import sparse_restore.models` stays cheap and cycle-free.
  from sparse_restore.models import drsformer  # noqa: F401
  try:
    from sparse_restore.models import ast  # noqa: F401
  except ImportError as e:  # pragma: no cover - only while AST is being written
    if "sparse_restore.models.ast" not in str(e) and "ast" not in str(e):
      raise
