"""Model registry: configs pick a network by name.

    model = models.create("drsformer", dim=48, use_mefc=True,
                          policy=models.policy.for_platform(jax.default_backend()))  # default: GPU/TPU's
    params = models.init_params(model, jax.random.key(0))     # or models.abstract_params(model): shapes only
    out = model.apply({"params": params}, images, train=False)

Every registered network takes NHWC float images in [0, 1] and returns an image of the same shape; its
``__call__`` takes a ``train`` keyword (AST: drop-path when True; DRSformer ignores it). It exposes a class
attribute ``size_multiple`` (spatial sizes the network accepts are multiples of it).
"""
from __future__ import annotations

from typing import Callable, Dict, Type

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def init_params(module: nn.Module, rng, channels: int = 3):
  """Freshly initialised parameters of ``module`` (traced on a zero image of its size multiple, at least 8 px:
  the parameters do not depend on the image size)."""
  side = max(int(getattr(module, "size_multiple", 8)), 8)
  x = jnp.zeros((1, side, side, channels), jnp.float32)
  return module.init({"params": rng, "dropout": rng}, x, train=False)["params"]


def abstract_params(module: nn.Module, channels: int = 3):
  """Shapes and dtypes (``jax.ShapeDtypeStruct``) of ``module``'s parameters: :func:`init_params` under
  ``jax.eval_shape``, nothing allocated or compiled."""
  return jax.eval_shape(lambda: init_params(module, jax.random.key(0), channels))


def _import_all():
  # Imported lazily so that `import sparse_restore.models` stays cheap and cycle-free. No ImportError is caught:
  # a network module that fails to import is an error, never a silently shorter registry.
  from sparse_restore.models import ast, drsformer  # noqa: F401
