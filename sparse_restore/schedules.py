"""Learning-rate schedules and the training-stage plan.

Schedules are optax schedules of the optimizer's own step count (0 at the first update of a stage):

* ``"constant"``: ``lr`` throughout.
* ``"constant_cosine"``: ``lr`` for ``constant_steps``, then a half cosine from ``lr`` to ``end_lr`` over the rest of
  the stage. DRSformer's BasicSR recipe (``CosineAnnealingRestartCyclicLR``, periods [92k, 208k], eta_mins
  [3e-4, 1e-6]) is exactly this with ``constant_steps=92_000`` out of 300k.
* ``"warmup_cosine"``: linear warm-up from 0 to ``lr`` over ``warmup_steps``, then a half cosine to ``end_lr``
  (AST: ``GradualWarmupScheduler`` for 3 epochs then ``CosineAnnealingLR`` to 1e-6, here per step, not per epoch).

A run is a list of :class:`Stage` objects (progressive training, as AST's multi-resolution recipes): each stage has its
own patch size, global batch size, number of steps, peak learning rate and schedule, and starts with a fresh optimizer
state and a fresh data stream (parameters carry over). A config without ``stages`` is one stage built from the
top-level fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Optional

import optax

SCHEDULES = ("constant", "constant_cosine", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training stage: steps ``[start, start + num_steps)`` of the run, with its own data shape and schedule."""
  index: int
  start: int
  num_steps: int
  patch_size: int
  batch_size: int
  lr: float
  schedule: str = "constant_cosine"
  constant_steps: int = 0
  warmup_steps: int = 0
  end_lr: float = 1e-6

  @property
  def end(self) -> int:
    """The global step count reached when the stage is complete."""
    return self.start + self.num_steps


def constant_then_cosine(lr: float, constant_steps: int, total_steps: int, end_lr: float = 1e-6) -> optax.Schedule:
  """``lr`` for ``constant_steps`` steps, then cosine-annealed to ``end_lr`` at ``total_steps``."""
  constant_steps = max(0, min(int(constant_steps), int(total_steps)))
  decay_steps = int(total_steps) - constant_steps
  if decay_steps <= 0:
    return optax.constant_schedule(lr)
  alpha = end_lr / lr if lr else 0.0
  cosine = optax.cosine_decay_schedule(init_value=lr, decay_steps=decay_steps, alpha=alpha)
  if constant_steps == 0:
    return cosine
  return optax.join_schedules([optax.constant_schedule(lr), cosine], boundaries=[constant_steps])


def warmup_then_cosine(lr: float, warmup_steps: int, total_steps: int, end_lr: float = 1e-6) -> optax.Schedule:
  """Linear warm-up 0 -> ``lr`` over ``warmup_steps``, then cosine-annealed to ``end_lr`` at ``total_steps``."""
  warmup_steps = max(0, min(int(warmup_steps), int(total_steps)))
  if warmup_steps == 0:
    return constant_then_cosine(lr, 0, total_steps, end_lr)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup_steps, decay_steps=max(int(total_steps), warmup_steps + 1),
      end_value=end_lr)


def create(stage: Stage) -> optax.Schedule:
  """The schedule of ``stage`` (a function of the stage-local step count)."""
  if stage.schedule == "constant":
    return optax.constant_schedule(stage.lr)
  if stage.schedule == "constant_cosine":
    return constant_then_cosine(stage.lr, stage.constant_steps, stage.num_steps, stage.end_lr)
  if stage.schedule == "warmup_cosine":
    return warmup_then_cosine(stage.lr, stage.warmup_steps, stage.num_steps, stage.end_lr)
  raise ValueError(f"unknown schedule {stage.schedule!r}; choose one of {SCHEDULES}")


_STAGE_KEYS = ("num_steps", "patch_size", "batch_size", "lr", "schedule", "constant_steps", "warmup_steps", "end_lr")


def resolve_stages(config) -> List[Stage]:
  """The list of training stages a config describes.

  Without ``config.stages`` (empty/None) the run is one stage made of ``num_train_steps``, ``data.patch_size``,
  ``batch_size``, ``lr``, ``schedule``, ``constant_steps``, ``warmup_steps`` and ``end_lr``. With it, each entry is a
  mapping that may set any of ``num_steps, patch_size, batch_size, lr, schedule, constant_steps, warmup_steps,
  end_lr`` (missing ones come from the top level); ``num_steps`` is required per stage and ``num_train_steps`` must
  then be their sum (or 0/-1 to mean "the sum").
  """
  top = dict(num_steps=int(config.num_train_steps), patch_size=int(config.data.patch_size),
             batch_size=int(config.batch_size), lr=float(config.lr), schedule=str(config.schedule),
             constant_steps=int(config.get("constant_steps", 0) or 0),
             warmup_steps=int(config.get("warmup_steps", 0) or 0), end_lr=float(config.get("end_lr", 1e-6)))
  entries: Optional[Any] = config.get("stages", None)
  if not entries:
    specs = [top]
  else:
    specs = []
    for i, entry in enumerate(entries):
      entry = dict(entry.items() if isinstance(entry, Mapping) or hasattr(entry, "items") else entry)
      unknown = sorted(set(entry) - set(_STAGE_KEYS))
      if unknown:
        raise ValueError(f"config.stages[{i}]: unknown keys {unknown}; allowed: {list(_STAGE_KEYS)}")
      if "num_steps" not in entry:
        raise ValueError(f"config.stages[{i}]: 'num_steps' is required")
      spec = dict(top)
      spec.update(entry)
      specs.append(spec)
    total = sum(int(s["num_steps"]) for s in specs)
    if top["num_steps"] > 0 and top["num_steps"] != total:
      raise ValueError(f"config.num_train_steps={top['num_steps']} but config.stages sum to {total} steps; "
                       "set num_train_steps to their sum or to -1")
  stages, start = [], 0
  for i, s in enumerate(specs):
    if int(s["num_steps"]) <= 0:
      raise ValueError(f"stage {i}: num_steps must be positive, got {s['num_steps']}")
    if s["schedule"] not in SCHEDULES:
      raise ValueError(f"stage {i}: unknown schedule {s['schedule']!r}; choose one of {SCHEDULES}")
    stage = Stage(index=i, start=start, num_steps=int(s["num_steps"]), patch_size=int(s["patch_size"]),
                  batch_size=int(s["batch_size"]), lr=float(s["lr"]), schedule=str(s["schedule"]),
                  constant_steps=int(s["constant_steps"]), warmup_steps=int(s["warmup_steps"]),
                  end_lr=float(s["end_lr"]))
    stages.append(stage)
    start = stage.end
  return stages


def stage_at(stages: List[Stage], step: int) -> Stage:
  """The stage that runs global step ``step`` (0-based); the last stage for ``step >= total``."""
  for stage in stages:
    if step < stage.end:
      return stage
  return stages[-1]
