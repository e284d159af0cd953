"""Checks a training/evaluation config before any work: every problem, each naming its field.

:func:`validate_config` runs first in ``train.train_and_evaluate`` and ``model_eval.evaluate_checkpoint``, before
the workdir is touched, a dataset is built or anything is compiled, so that a bad value (``model.dim=0``, a
negative batch size, a NaN learning rate, ...) fails in seconds with a message naming the field instead of
minutes later (or as a ZeroDivisionError deep inside the network). The network is checked by constructing it and
tracing its initialisation abstractly (``jax.eval_shape``: nothing is allocated or compiled), so any argument the
network itself refuses is reported as a problem of ``config.model``.
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Any, List, Optional

from sparse_restore import schedules


class ConfigError(ValueError):
  """The config has invalid values; ``problems`` lists each one as ``config.<field>: <what is wrong>``."""

  def __init__(self, problems: List[str]):
    self.problems = list(problems)
    super().__init__("invalid config: " + "; ".join(self.problems))


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


class _Checker:
  def __init__(self, config):
    self.config = config
    self.problems: List[str] = []

  def problem(self, field: str, message: str):
    self.problems.append(f"config.{field}: {message}")

  def get(self, field: str, default: Any = None):
    node = self.config
    for part in field.split("."):
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError):
        return default
    return node

  def integer(self, field: str, *, minimum: Optional[int] = None, allow_none: bool = False):
    value = self.get(field)
    if value is None and allow_none:
      return None
    if not _is_int(value):
      self.problem(field, f"must be an integer, got {value!r}")
      return None
    if minimum is not None and value < minimum:
      self.problem(field, f"must be >= {minimum}, got {value}")
      return None
    return int(value)

  def number(self, field: str, *, positive: bool = False, nonnegative: bool = False,
             below: Optional[float] = None, allow_none: bool = False):
    value = self.get(field)
    if value is None and allow_none:
      return None
    if not _is_number(value):
      self.problem(field, f"must be a number, got {value!r}")
      return None
    value = float(value)
    if not math.isfinite(value):
      self.problem(field, f"must be finite, got {value}")
      return None
    if positive and value <= 0:
      self.problem(field, f"must be > 0, got {value:g}")
      return None
    if nonnegative and value < 0:
      self.problem(field, f"must be >= 0, got {value:g}")
      return None
    if below is not None and value >= below:
      self.problem(field, f"must be < {below:g}, got {value:g}")
      return None
    return value

  def choice(self, field: str, choices):
    value = self.get(field)
    if value not in tuple(choices):
      self.problem(field, f"must be one of {list(choices)}, got {value!r}")
      return None
    return value


def _check_model(c: _Checker, platform: Optional[str]):
  """Model fields: plain range checks per field, then the network's own checks (construction + abstract init)."""
  from sparse_restore import models, train
  name = c.get("model.name")
  if name not in models.names():
    c.problem("model.name", f"unknown network {name!r}; registered: {models.names()}")
    return None
  before = len(c.problems)
  for key, value in train.model_kwargs(c.config).items():
    field = f"model.{key}"
    values = value if isinstance(value, (tuple, list)) else (value,)
    for i, v in enumerate(values):
      where = field if values is not value else f"{field}[{i}]"
      if _is_int(v) and v < 1:  # widths, depths, heads, sizes, expert counts: all at least 1
        c.problem(where, f"must be >= 1, got {v}")
      elif _is_number(v) and not _is_int(v):
        if not math.isfinite(v):
          c.problem(where, f"must be finite, got {v}")
        elif key.endswith("_rate") and not 0 <= v < 1:  # drop-path / dropout probabilities
          c.problem(where, f"must be in [0, 1), got {v:g}")
        elif not key.endswith("_rate") and v <= 0:  # expansion factors, top-k ratios
          c.problem(where, f"must be > 0, got {v:g}")
  if len(c.problems) > before:
    return None
  try:
    module = train.create_model(c.config, platform or "cpu", train=True)
    models.abstract_params(module)
  except Exception as e:  # The network's own argument checks, or what a bad combination of values breaks.
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    c.problem("model", f"{name} cannot be built from these arguments ({type(e).__name__}: {message})")
    return None
  return module


def _check_stages(c: _Checker, module, num_devices: Optional[int]):
  """Steps, batch, patch and schedule of every stage (the top-level fields are the one stage without
  ``config.stages``), each problem under the field that set the value."""
  multi = bool(c.get("stages"))
  if not multi and c.integer("num_train_steps", minimum=1) is None:
    return
  try:
    stages = schedules.resolve_stages(c.config)
  except (ValueError, TypeError, KeyError) as e:
    if not (not multi and "unknown schedule" in str(e)):  # a bad top-level schedule is reported as config.schedule
      c.problem("stages" if multi else "num_train_steps", str(e))
    return
  multiple = int(getattr(module, "size_multiple", 1) or 1) if module is not None else 1
  entries = list(c.get("stages") or ())
  for stage in stages:
    explicit = dict(entries[stage.index]) if multi else {}

    def field(key, top):
      return f"stages[{stage.index}].{key}" if key in explicit else top

    if stage.batch_size < 1:
      c.problem(field("batch_size", "batch_size"), f"must be >= 1, got {stage.batch_size}")
    elif num_devices and stage.batch_size % num_devices:
      c.problem(field("batch_size", "batch_size"), f"the global batch {stage.batch_size} does not split over the "
                f"{num_devices} devices; choose a multiple of {num_devices}")
    if stage.patch_size < 1:
      c.problem(field("patch_size", "data.patch_size"), f"must be >= 1, got {stage.patch_size}")
    elif stage.patch_size % multiple:
      c.problem(field("patch_size", "data.patch_size"), f"{stage.patch_size} is not a multiple of "
                f"{multiple}, which {c.get('model.name')} needs")
    if not math.isfinite(stage.lr) or stage.lr <= 0:
      c.problem(field("lr", "lr"), f"must be finite and > 0, got {stage.lr}")
    if not math.isfinite(stage.end_lr) or stage.end_lr < 0:
      c.problem(field("end_lr", "end_lr"), f"must be finite and >= 0, got {stage.end_lr}")
    if stage.constant_steps < 0:
      c.problem(field("constant_steps", "constant_steps"), f"must be >= 0, got {stage.constant_steps}")
    if stage.warmup_steps < 0:
      c.problem(field("warmup_steps", "warmup_steps"), f"must be >= 0, got {stage.warmup_steps}")


def _check_data(c: _Checker, *, training: bool):
  from sparse_restore import datasets
  c.choice("data.name", datasets.names())
  for key in ("train_split", "eval_split") if training else ("eval_split",):
    v = c.get(f"data.{key}")
    if not isinstance(v, str) or not v:
      c.problem(f"data.{key}", f"must be a split name such as 'train' or 'test', got {v!r}")
  for key in ("num_workers", "prefetch_buffer_size", "max_eval_images"):
    c.integer(f"data.{key}", minimum=0)


def _check_eval(c: _Checker, module):
  tile = c.integer("eval.tile", minimum=0)
  overlap = c.integer("eval.tile_overlap", minimum=0)
  c.integer("eval.num_summary_images", minimum=0)
  save = c.get("eval.save_images")
  if not isinstance(save, bool):
    c.problem("eval.save_images", f"must be true or false, got {save!r}")
  if tile and overlap is not None:
    from sparse_restore import restore
    multiple = restore.model_multiple(module) if module is not None else 1  # evaluate: the checkpoint's network
    try:
      restore.plan_tiles(tile * 2, tile * 2, multiple, tile, overlap)
    except ValueError as e:
      c.problem("eval.tile_overlap", str(e))


def validate_config(config, *, mode: str = "train", num_devices: Optional[int] = None,
                    platform: Optional[str] = None, workdir: Optional[str] = None) -> None:
  """Raises :class:`ConfigError` listing every invalid value of ``config`` (none: returns None).

  ``mode`` 'train' checks everything training uses; 'evaluate' the fields evaluation uses (``data``, ``eval``;
  the network comes from the checkpoint). ``num_devices``: the global batch must split over them.
  ``platform``: the network is built for it (default: CPU; the checks do not depend on it). ``workdir``:
  ``init_from`` must exist unless the workdir already has checkpoints (then it is ignored).
  """
  from sparse_restore import losses, train
  from sparse_restore.models import policy as policy_lib
  if mode not in ("train", "evaluate"):
    raise ValueError(f"mode must be 'train' or 'evaluate', got {mode!r}")
  c = _Checker(config)
  training = mode == "train"
  module = None
  if training:
    if c.get("compute_dtype") not in policy_lib.COMPUTE_DTYPES:
      c.problem("compute_dtype", f"must be one of {list(policy_lib.COMPUTE_DTYPES)}, got "
                f"{c.get('compute_dtype')!r}")
    else:
      try:
        train.model_policy(config, platform or "cpu")
      except ValueError as e:
        c.problem("policy", str(e).removeprefix("config.policy: "))
    if not c.problems:
      module = _check_model(c, platform)
    c.integer("seed")
    c.integer("num_train_steps", minimum=-1)
    c.choice("schedule", schedules.SCHEDULES)
    c.number("b1", nonnegative=True, below=1.0)
    c.number("b2", nonnegative=True, below=1.0)
    c.number("eps", positive=True)
    c.number("weight_decay", nonnegative=True)
    c.number("grad_clip_norm", nonnegative=True, allow_none=True)
    c.choice("loss", losses.LOSSES)
    c.number("charbonnier_eps", positive=True)
    _check_stages(c, module, num_devices)
    c.integer("log_every_steps", minimum=1)
    c.integer("checkpoint_every_steps", minimum=1)
    c.integer("eval_every_steps", minimum=0)
    keep = c.integer("max_checkpoints_to_keep", minimum=0)
    if keep == 1:
      c.problem("max_checkpoints_to_keep", "must be 0 (keep all) or >= 2: with one checkpoint, a damaged latest "
                "checkpoint leaves nothing to resume from")
    init_from = c.get("init_from")
    if init_from and workdir is not None and not _has_step_folders(workdir) and not os.path.isdir(
        os.path.expanduser(init_from)):
      c.problem("init_from", f"{init_from}: no such directory (an exported model or a training workdir)")
  _check_data(c, training=training)
  _check_eval(c, module)
  if c.problems:
    raise ConfigError(c.problems)


def _has_step_folders(workdir: str) -> bool:
  from sparse_restore import checkpoint
  return bool(checkpoint.step_folders(os.path.expanduser(workdir)))
