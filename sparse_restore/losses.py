"""Pixel losses for restoration training, computed in float32 and averaged over every pixel and channel.

* ``l1``: ``mean(|x - y|)`` (DRSformer / BasicSR ``L1Loss``, reduction mean).
* ``charbonnier``: ``mean(sqrt((x - y)^2 + eps^2))`` with ``eps = 1e-3`` (AST's ``CharbonnierLoss``).
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

LOSSES = ("l1", "charbonnier")


def l1(pred, target):
  """Mean absolute error."""
  return jnp.mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def charbonnier(pred, target, eps: float = 1e-3):
  """Mean of ``sqrt(diff^2 + eps^2)`` (a smooth L1)."""
  diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(jnp.sqrt(diff * diff + eps * eps))


def get(name: str, *, charbonnier_eps: float = 1e-3) -> Callable:
  """The loss function ``(pred, target) -> scalar`` called ``name``."""
  if name == "l1":
    return l1
  if name == "charbonnier":
    return lambda pred, target: charbonnier(pred, target, eps=charbonnier_eps)
  raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
