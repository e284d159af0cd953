"""Training: the train state, one jitted data-parallel update, and the loop (checkpoints, evaluation, logging).

Entry point: :func:`train_and_evaluate` (``main.py --mode train``; ``--mode evaluate`` is
:func:`sparse_restore.model_eval.evaluate_checkpoint`). Checkpoints and the workdir's ``model.json`` are handled by
:mod:`sparse_restore.checkpoint`, evaluation by :mod:`sparse_restore.model_eval`.

Layout of a workdir::

    <workdir>/model.json              the network (registry name + constructor arguments), written at start
    <workdir>/checkpoints/<step>/     Orbax CheckpointManager: items params, opt_state, meta (JSON), data (grain)
    <workdir>/checkpoints_damaged/    damaged steps newer than the one a run resumed from (kept for inspection)
    <workdir>/eval/<step>/            restored PNGs, metrics.csv, metrics.json of each evaluation
    <workdir>/tfds/                   built datasets when config.data.data_dir is ''
    <workdir>/events.out.tfevents.*   TensorBoard scalars (loss, lr, grad norm, steps/s, eval PSNR/SSIM) and images

Data parallelism: one mesh axis ``data`` over all devices of all processes; params/optimizer state replicated, the
batch split over ``data``. Each process reads its own share of every global batch and
:func:`sparse_restore.sharding.global_batch` assembles the global array. Restarting with the same workdir resumes
from the newest intact checkpoint (params, optimizer state, data-iterator position), giving the same parameters as an
uninterrupted run. The config is validated first (:mod:`sparse_restore.config_checks`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from sparse_restore import checkpoint, config_checks, losses, models, schedules, sharding
from sparse_restore.models import policy as policy_lib

COMPUTE_DTYPES = policy_lib.COMPUTE_DTYPES


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient norm) became NaN/inf; the run stopped without saving the bad state."""


# ################################################################################################################
#                                                   Model
# ################################################################################################################


def model_kwargs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Constructor arguments of ``config.model`` (everything but ``name``), lists turned into tuples."""
  kw = dict(config.model.to_dict())
  kw.pop("name", None)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def model_policy(config: ml_collections.ConfigDict, platform: str, *, train: bool = True) -> policy_lib.Policy:
  """The network's policy for ``platform`` with ``config.policy``'s overrides; ``compute_dtype`` in training
  (evaluation runs in float32)."""
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {config.compute_dtype!r}")
  overrides = dict(config.get("policy", {}))
  try:
    return policy_lib.for_platform(platform, dtype=config.compute_dtype if train else "float32", **overrides)
  except ValueError as e:
    raise ValueError(f"config.policy: {e}") from None


def create_model(config: ml_collections.ConfigDict, platform: Optional[str] = None, *, train: bool = True):
  """The network of ``config`` for devices of ``platform`` (default: JAX's first device's); with ``train`` it
  gets ``compute_dtype`` and ``remat`` (evaluation: float32)."""
  kw = model_kwargs(config)
  if train and config.get("remat", False):
    kw["remat"] = True
  platform = platform or jax.devices()[0].platform
  return models.create(config.model.name, policy=model_policy(config, platform, train=train), **kw)


def describe_model(module) -> Dict[str, Any]:
  """The architecture-defining constructor arguments of ``module`` (all dataclass fields but runtime choices),
  as plain JSON values. This is what ``model.json`` stores and what a resumed run must match."""
  desc = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.name not in policy_lib.RUNTIME_FIELDS}
  return json.loads(json.dumps(desc, default=str))


# ################################################################################################################
#                                              State and update
# ################################################################################################################


@flax.struct.dataclass
class TrainState:
  """Everything the update changes: completed step count, float32 params and optimizer state."""
  step: jax.Array
  params: Any
  opt_state: Any


def create_optimizer(config: ml_collections.ConfigDict, stage: schedules.Stage):
  """AdamW with the stage's schedule, after global-norm clipping (``grad_clip_norm``; 0/None disables)."""
  schedule = schedules.create(stage)
  parts = []
  if config.get("grad_clip_norm", 0):
    parts.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay))
  return optax.chain(*parts), schedule


def train_step(state: TrainState, batch, rng, *, module, tx, schedule, loss_fn, stage_start: int):
  """One optimizer step on a (global, data-sharded) batch; returns the new state and scalar metrics."""
  step_rng = jax.random.fold_in(rng, state.step)

  def compute_loss(params):
    pred = module.apply({"params": params}, batch["input"], rngs={"dropout": step_rng}, train=True)
    return loss_fn(pred, batch["target"])

  loss, grads = jax.value_and_grad(compute_loss)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step - stage_start)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_train_step(mesh, **kwargs) -> Callable:
  """``train_step`` jitted for ``mesh``: state replicated and donated, batch split over ``data``."""
  repl = sharding.replicated(mesh)
  return jax.jit(functools.partial(train_step, **kwargs),
                 in_shardings=(repl, sharding.data_sharded(mesh), repl),
                 out_shardings=(repl, repl), donate_argnums=(0,))


def _with_sharding(abstract, shard):
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shard), abstract)


# ################################################################################################################
#                                                   Helpers
# ################################################################################################################


def compile_on_all_processes(step_fn, args, name: str):
  """``step_fn`` compiled for ``args``, returned once every process has compiled it.

  The first call of a multi-process step starts its collectives; on CPU (Gloo) they fail when one process
  finishes compiling more than 30 s after another, which a loaded machine easily causes.
  """
  compiled = step_fn.lower(*args).compile()
  if jax.process_count() > 1:
    sharding.wait_for_all_processes(name)
  return compiled


def count_params(tree) -> int:
  """Number of scalars in a (possibly abstract) parameter tree."""
  return int(sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(tree)))




def create_writer(workdir: str):
  """TensorBoard event files in ``workdir`` and absl log lines on process 0, log lines only elsewhere."""
  from sparse_restore import summary_writer
  return summary_writer.SummaryWriter(workdir if jax.process_index() == 0 else None)


def _flat_hparams(config) -> Dict[str, Any]:
  out = {}

  def walk(prefix, d):
    for k, v in d.items():
      key = f"{prefix}{k}"
      if isinstance(v, dict):
        walk(key + ".", v)
      else:
        out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

  walk("", config.to_dict())
  return out


def _check_finite(step: int, metrics: Dict[str, float], ckpts: checkpoint.Checkpoints):
  """Raises :class:`NonFiniteLossError` naming ``step`` (the update that produced ``metrics``, 1-based like the
  checkpoint and TensorBoard step numbers) if the loss or gradient norm is NaN/inf."""
  loss, gnorm = float(metrics["loss"]), float(metrics["grad_norm"])
  if math.isfinite(loss) and math.isfinite(gnorm):
    return
  ckpts.wait()
  last = ckpts.latest_step()
  where = (f"the last good checkpoint is step {last} in {ckpts.directory}" if last is not None
           else "no checkpoint was saved before it")
  raise NonFiniteLossError(
      f"non-finite training loss at step {step} (loss={loss}, grad_norm={gnorm}); stopping without saving this "
      f"state ({where}). Lower the learning rate, keep gradient clipping on, or use float32 compute.")


# ################################################################################################################
#                                                 Training loop
# ################################################################################################################


@dataclasses.dataclass
class TrainResult:
  """What :func:`train_and_evaluate` returns: the final state, the training loss of every step run by this call
  (in order, starting at ``first_step``) and the last evaluation (None if none ran)."""
  state: TrainState
  losses: List[float] = dataclasses.field(default_factory=list)
  first_step: int = 0
  eval: Any = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, mesh=None,
                       train_dataset_fn: Optional[Callable] = None, stop_at_step: Optional[int] = None
                       ) -> TrainResult:
  """Trains ``config`` in ``workdir`` (resuming from its newest checkpoint) with periodic evaluation.

  Args:
    config: the run's config (see configs/default.py).
    workdir: output directory; an existing run there is resumed.
    mesh: device mesh (default: all devices, :func:`sparse_restore.sharding.make_mesh`).
    train_dataset_fn: replaces ``input_pipeline.train_dataset`` (same signature), e.g. to feed custom data.
    stop_at_step: stop (with a checkpoint) once this many steps are done, as if the job had been interrupted
      there; the schedule is still that of the full run and a later call resumes. None = train to the end.

  Raises :class:`NonFiniteLossError` if the loss diverges and :class:`sparse_restore.checkpoint.ModelMismatchError`
  if the workdir belongs to another network.
  """
  from sparse_restore import console, input_pipeline, model_eval, summary_writer

  workdir = os.path.abspath(os.path.expanduser(workdir))
  mesh = mesh if mesh is not None else sharding.make_mesh()
  platform = mesh.devices.flat[0].platform
  # Every value, before the workdir, the data or a compilation: a bad one fails in seconds, naming its field.
  config_checks.validate_config(config, num_devices=mesh.devices.size, platform=platform, workdir=workdir)
  stages = schedules.resolve_stages(config)
  total_steps = stages[-1].end
  for stage in stages:
    sharding.local_batch_size(stage.batch_size, mesh)  # Fails early on a batch that does not split.

  loss_fn = losses.get(config.loss, charbonnier_eps=config.get("charbonnier_eps", 1e-3))

  # ------------------------------------------------------------------------------------------- model, workdir
  module = create_model(config, platform, train=True)
  eval_module = create_model(config, platform, train=False)
  arch = config.model.name
  description = describe_model(eval_module)
  os.makedirs(workdir, exist_ok=True)
  # Before touching anything in the workdir. A model.json that no checkpoint uses (a run that failed before its
  # first save) is replaced; one with checkpoints must match.
  has_steps = bool(checkpoint.step_folders(workdir))
  has_json = checkpoint.check_model_json(workdir, arch, description, replace_unused=not has_steps)
  if has_steps and not has_json:
    raise checkpoint.ModelMismatchError(f"{workdir}: has checkpoints but no {checkpoint.MODEL_JSON}; cannot check "
                                        "that they belong to this config's model")
  ckpts = checkpoint.Checkpoints(workdir, config.max_checkpoints_to_keep)

  # ------------------------------------------------------------------------------------------- resume point
  repl = sharding.replicated(mesh)
  # Built by jitted functions (not device_put) so that every process holds the same replicated global values.
  # The init key uses XLA's RngBitGenerator ('rbg'): a whole-network init with threefry keys takes minutes to
  # compile on XLA:CPU (measured ~6x longer than 'rbg'); the per-step key (fold_in of the step) stays threefry.
  init_rng, train_rng = jax.jit(lambda: (jax.random.key(config.seed, impl="rbg"),
                                         jax.random.fold_in(jax.random.key(config.seed), 1)), out_shardings=repl)()

  def init_state_fn(tx):
    def init_state(rng):
      params = models.init_params(module, rng)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    return init_state

  def abstract_at(step):
    tx_at, _ = create_optimizer(config, schedules.stage_at(stages, step))
    return _with_sharding(jax.eval_shape(init_state_fn(tx_at), init_rng), repl)

  def in_stage(step, meta):  # resuming inside the stage the checkpoint was saved in: optimizer state and data too
    return int(meta.get("stage", -1)) == schedules.stage_at(stages, step).index and step < total_steps

  try:  # The newest intact checkpoint; damaged newer ones are skipped (and moved aside) with a warning each.
    found = ckpts.restore_newest(abstract_at, in_stage)
  except BaseException:
    ckpts.close()
    raise
  latest, meta, restored = found if found is not None else (None, None, None)
  if jax.process_index() == 0 and not has_json:
    checkpoint.write_model_json(workdir, arch, description, source="sparse_restore.train")

  data_config = input_pipeline.resolve_data_config(config.data, workdir)  # the one resolution of data_dir
  model_eval.prepare_data(data_config)
  writer = create_writer(workdir)
  main_process = jax.process_index() == 0
  say = console.say if main_process else (lambda message: None)
  logging.info("Process %d/%d, %d local / %d global devices; %d stage(s), %d steps; workdir %s",
               jax.process_index(), jax.process_count(), jax.local_device_count(), mesh.devices.size,
               len(stages), total_steps, workdir)

  # ------------------------------------------------------------------------------------------- initial state
  step_array = lambda s: jax.jit(lambda: jnp.asarray(s, jnp.int32), out_shardings=repl)()
  start = 0 if latest is None else int(latest)
  start_stage = schedules.stage_at(stages, start)
  resume_in_stage = meta is not None and in_stage(start, meta)
  tx, schedule = create_optimizer(config, start_stage)
  plan = [f"{s.num_steps} steps of batch {s.batch_size} on {s.patch_size}x{s.patch_size} patches" for s in stages]
  say(f"model: {arch}, {count_params(abstract_at(0).params):,} parameters; "
      + (plan[0] if len(plan) == 1 else f"{total_steps} steps in {len(plan)} stages: " + ", then ".join(plan))
      + f"; {mesh.devices.size} {platform.upper()} device(s)")
  state = None
  if start >= total_steps:  # Nothing left to train: the workdir holds a finished run.
    logging.info("%s is already trained to step %d (of %d).", workdir, start, total_steps)
    say(f"{workdir} is already trained to step {start} (of {total_steps}): nothing to train. Use a new --workdir "
        "to train again, or --mode evaluate to evaluate it.")
    ckpts.close()
    writer.flush()
    return TrainResult(TrainState(step=step_array(start), params=restored["params"], opt_state=None))
  if latest is None:
    t_init = time.monotonic()
    if config.get("init_from"):
      say(f"initialising the parameters from {config.init_from} ...")
      params = checkpoint.load_init_params(config.init_from, arch, abstract_at(0).params, mesh)
      opt_state = jax.jit(tx.init, out_shardings=repl)(params)
      state = TrainState(step=step_array(0), params=params, opt_state=opt_state)
    else:
      say("initialising the parameters ...")
      state = jax.jit(init_state_fn(tx), out_shardings=repl)(init_rng)
    jax.block_until_ready(state)
    say(f"initialised in {console.duration(time.monotonic() - t_init)}")
    if jax.process_index() == 0:
      writer.write_hparams(_flat_hparams(config))

  # ------------------------------------------------------------------------------------------- hooks
  report = summary_writer.ReportProgress(num_train_steps=total_steps, writer=writer,
                                         every_steps=config.log_every_steps)
  hooks = []
  if config.get("profile", False):
    hooks.append(summary_writer.Profile(logdir=workdir, first_step=min(10, total_steps - 1), last_step=total_steps))
  if not main_process:
    hooks = []

  last_eval = None
  history = []  # training loss of every step of this call
  pending = []  # (step, device metrics) not yet checked on the host
  window = []   # host metrics since the last log

  def drain():
    for s, m in pending:
      host = {k: float(v) for k, v in sharding.to_host(m).items()}
      _check_finite(s, host, ckpts)
      window.append(host)
      history.append(host["loss"])
    pending.clear()

  def log_train(step):
    if not window:
      return
    scalars = {"train/loss": float(np.mean([m["loss"] for m in window])),
               "train/grad_norm": float(np.mean([m["grad_norm"] for m in window])),
               "train/lr": window[-1]["lr"]}
    writer.write_scalars(step, scalars)
    window.clear()

  eval_apply = []  # one jitted forward pass for all evaluations (compiled once per image shape)

  def run_eval(step, state):
    params = sharding.to_host(state.params)
    # Process 0 evaluates on one of its devices. The others wait for it at a coordination-service barrier, not
    # inside the next step's collective (on CPU, Gloo fails when a peer is more than 30 s late).
    result = evaluate_on_process_0(step, params) if jax.process_index() == 0 else None
    if jax.process_count() > 1:
      sharding.wait_for_all_processes(f"sparse_restore:evaluated:{step}")
    return result

  def evaluate_on_process_0(step, params):
    if eval_apply:
      eval_apply[0].params = jax.device_put(params, jax.local_devices()[0])
    else:
      from sparse_restore import restore
      eval_apply.append(restore.make_apply_fn(eval_module, params))
    out_dir = os.path.join(workdir, "eval", str(step))
    with report.timed("eval"):
      result = model_eval.evaluate(
          eval_module, params, data_config, out_dir, max_images=config.data.max_eval_images or None,
          save_images=config.eval.save_images, tile=config.eval.tile, tile_overlap=config.eval.tile_overlap,
          num_samples=config.eval.num_summary_images, step=step, apply_fn=eval_apply[0])
    writer.write_scalars(step, {f"eval/{k}": result.summary[k] for k in ("psnr", "ssim", "input_psnr", "input_ssim")})
    if result.samples:  # degraded | restored | clean, as in <out_dir>/compare/
      writer.write_images(step, {f"eval/{name}": strip[None] for name, strip in result.samples.items()})
    logging.info("%s", result.describe())
    if step != total_steps:  # the last one is the job's result, which the caller reports
      console.say(result.describe())
    return result

  # ------------------------------------------------------------------------------------------- loop
  try:
    for stage in stages[start_stage.index:]:
      if stage.index != start_stage.index:
        tx, schedule = create_optimizer(config, stage)
        state = state.replace(opt_state=jax.jit(tx.init, out_shardings=repl)(state.params))
      stage_data = ml_collections.ConfigDict(dict(data_config.to_dict(), patch_size=int(stage.patch_size)))
      make_dataset = train_dataset_fn or input_pipeline.train_dataset
      ds = make_dataset(stage_data, global_batch_size=stage.batch_size, seed=config.seed + stage.index,
                        process_index=jax.process_index(), process_count=jax.process_count())
      data_iter = iter(ds)
      if state is None:  # Resuming: params (+ optimizer state and data position when inside this stage).
        if resume_in_stage:
          ckpts.restore_data(latest, data_iter)
        opt_state = (restored["opt_state"] if resume_in_stage
                     else jax.jit(tx.init, out_shardings=repl)(restored["params"]))
        state = TrainState(step=step_array(start), params=restored["params"], opt_state=opt_state)
        logging.info("Resumed from %s/%d (stage %d%s).", ckpts.directory, start, stage.index,
                     "" if resume_in_stage else ", fresh optimizer and data stream")
        say(f"resuming from the checkpoint of step {start} in {ckpts.directory}"
            + ("" if resume_in_stage else f" (stage {stage.index}: fresh optimizer and data stream)"))
      step_fn = make_train_step(mesh, module=module, tx=tx, schedule=schedule, loss_fn=loss_fn,
                                stage_start=stage.start)
      local_bs = sharding.local_batch_size(stage.batch_size, mesh)
      end = stage.end if stop_at_step is None else min(stage.end, max(int(stop_at_step), start))
      first_step = max(start, stage.start)
      for step in range(first_step, end):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          with report.timed("data", wait_jax_async_dispatch=False):
            local = next(data_iter)
          _check_batch(local, local_bs, stage.patch_size)
          batch = sharding.global_batch({"input": local["input"], "target": local["target"]}, mesh)
          if step == first_step:  # compiled ahead of the first call, to say how long XLA takes
            say(f"compiling the train step (batch {stage.batch_size}, {stage.patch_size}x{stage.patch_size} "
                f"patches, {platform.upper()}) ...")
            t_compile = time.monotonic()
            step_fn = compile_on_all_processes(step_fn, (state, batch, train_rng),
                                               f"sparse_restore:train_step_compiled:{stage.index}:{step}")
            say(f"compiled in {console.duration(time.monotonic() - t_compile)}; training steps "
                f"{step + 1}-{end} (a progress line every ~10 s)")
          state, metrics = step_fn(state, batch, train_rng)
        drain()  # Metrics of the previous step: it has finished by now, so this costs no pipelining.
        done = step + 1
        pending.append((done, metrics))
        for hook in hooks:
          hook(done)
        if done % config.log_every_steps == 0 or done == total_steps:
          drain()
          log_train(done)
        if main_process:
          report(done, history)
        if done % config.checkpoint_every_steps == 0 or done == stage.end or done == stop_at_step:
          drain()  # Never save a state whose loss was not checked.
          with report.timed("checkpoint"):
            ckpts.save(state, data_iter, stage)
        if config.eval_every_steps > 0 and (done % config.eval_every_steps == 0 or done == total_steps):
          drain()
          last_eval = run_eval(done, state)
      drain()
      if stop_at_step is not None and end < stage.end:
        logging.info("Stopping at step %d as asked (stop_at_step); rerun with the same workdir to continue.", end)
        say(f"stopped at step {end} as asked; rerun with the same workdir to continue")
        break
  finally:
    for hook in hooks:
      if hasattr(hook, "close"):
        hook.close()
    ckpts.close()
    writer.flush()
  return TrainResult(state=state, losses=history, first_step=start, eval=last_eval)


def _check_batch(local, local_bs: int, patch: int):
  shape = tuple(np.shape(local["input"]))
  if shape != (local_bs, patch, patch, 3) or tuple(np.shape(local["target"])) != shape:
    raise ValueError(f"input pipeline returned input {shape} / target {tuple(np.shape(local['target']))}, expected "
                     f"({local_bs}, {patch}, {patch}, 3) per process")
