r"""Benchmarks: forward (inference) and full train-step timings of the networks, on any backend.

    python -m sparse_restore.bench --model drsformer --size 256 --batch 1 --mode forward
    python -m sparse_restore.bench --model ast --size 128,256,512,1024 --mode forward
    python -m sparse_restore.bench --model drsformer --size 128 --batch 2 --mode train [--remat] [--dtype bfloat16]
    python -m sparse_restore.bench --model drsformer --size 128 --mode max-batch --memory-gb 20 [--remat]
    python -m sparse_restore.bench --model drsformer --model-kwargs '{"dim": 8, "use_mefc": false}' --size 32
    python -m sparse_restore.bench --model drsformer --size 256 --mode forward --reference-dir refs/
    python -m sparse_restore.bench --model drsformer --size 128 --batch 4 --mode train --lower-for cuda
    python -m sparse_restore.bench --mode input-pipeline --manual-dir Rain200H/ --data-dir /tmp/tfds \
        --batch 16 --size 128 --num-workers 0,2,4

Each measurement prints ONE JSON object on stdout (progress goes to stderr), with at least:
``median_s`` (median wall time of one call after warm-up), ``min_s``, ``median_cpu_s`` (process CPU time of
one call, all threads: robust to other load on a shared machine), ``runs``, ``compile_s`` and ``compile_cpu_s``
(lowering + XLA compilation, measured separately; ``lower_s`` the tracing and lowering part of it), ``first_call_s`` (first execution after compilation), ``images_per_s``,
``us_per_pixel`` (microseconds per output pixel: flat across sizes means linear scaling), ``peak_rss_gb``
(whole process, from getrusage), ``device_peak_gb`` (accelerator allocator peak when the backend reports it),
``gflop`` (XLA's cost analysis of the compiled call) and ``tflops_achieved``; with ``--peak-tflops`` also
``fraction_of_peak``. ``host_malloc`` says whether glibc kept freed memory for reuse (``reuse``, the default via
:mod:`sparse_restore.host_memory`) or ran with its defaults (``system``, ``--system-malloc``).

``train`` mode times the step training runs (``train.make_train_step``: forward with ``train=True`` so AST's
drop-path is on, L1 loss, backward, global-norm clipping, AdamW; jitted, state donated) on one device.
``max-batch`` mode asks XLA, without running anything, how much memory the compiled train step needs
(arguments + outputs + temporaries, minus donated/aliased buffers) for growing batch sizes, and reports the
largest batch that fits in ``--memory-gb``; ``--check`` additionally runs that batch once and reports peak RSS.

``--reference-dir DIR`` (forward and train modes) then times the authors' PyTorch network for the same work in
the same process on the same device (:mod:`sparse_restore.bench_reference`; ``DIR`` holds their ``drs_ref.py`` /
``ast_ref.py``; PyTorch needed) and adds ``reference`` (``median_s``, ``min_s``, ``median_cpu_s``, ``precision``,
``device_peak_gb``, ``torch``, ``torch_threads``, ``kwargs``, ``params``, and ``all`` when several precisions ran),
``speedup`` (reference median / ours), ``speedup_cpu`` (the same in process CPU time) and ``memory_ratio`` (our
device peak / the reference's). ``--reference-precision`` picks ``default``, ``tf32``, ``bf16`` or ``best``
(the fastest of them, the default). Our ``--model-kwargs`` are mapped to the authors' constructor, so tiny and
custom sizes compare like with like; a setting their file cannot express is a usage error.

``input-pipeline`` mode measures the training input pipeline (:func:`sparse_restore.input_pipeline.train_dataset`:
random crops of ``--size``, flips and rotations, batches of ``--batch``) on a prepared dataset, one record per
``--num-workers`` value: ``images_per_s`` in steady state (after ``--warmup-batches``, over ``--runs`` batches).

``--lower-for PLATFORM`` (forward and train modes) lowers the program for ``cuda``, ``rocm``, ``tpu`` or ``cpu``
with that platform's policy on any machine, runs nothing, and reports StableHLO counts (:func:`hlo_stats`):
``convolutions``, ``grouped``, ``distinct``, ``optimization_barriers``, ``conditionals``, ``while_loops``, ``ops``.

Compiled programs are kept in a persistent compilation cache (``--compilation-cache``, default the user cache
folder; :mod:`sparse_restore.compile_cache`), so ``compile_s`` of a second run is the cached figure; pass
``--compilation-cache none`` for cold compile times.

Timing rules (performance.md): jitted functions, a warm-up call, ``block_until_ready()``, median of ``--runs``.
Default networks are the full-size published ones (DRSformer with MEFC, AST_B) with random weights.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparse_restore import bench_reference, compile_cache, host_memory, models
from sparse_restore.models import policy as policy_lib

DEFAULT_CONFIGS = {
    # Full-size published networks (the reference timings in performance.md use these).
    "drsformer": {},
    "drsformer_nomefc": {"use_mefc": False},
}


def model_config(name: str, preset: Optional[str] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Registry name and constructor arguments of a benchmark network (``model_kwargs`` override them)."""
  if name == "ast":
    from sparse_restore.models import ast as ast_mod
    arch, config = "ast", dict(ast_mod.PRESETS[preset or "AST_B"])
  elif name in DEFAULT_CONFIGS:
    arch, config = "drsformer", dict(DEFAULT_CONFIGS[name])
  else:
    arch, config = name, {}
  config.update(model_kwargs or {})
  return arch, config


def _peak_rss_gb() -> float:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _device_peak_gb() -> Optional[float]:
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pragma: no cover - backend without allocator stats
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2**30


def _cost_gflop(compiled) -> Optional[float]:
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    flops = cost.get("flops") if cost else None
    return float(flops) / 1e9 if flops else None
  except Exception:  # pragma: no cover - cost analysis is best effort
    return None


def random_params(module, seed: int = 0):
  """Random float32 params of the right shapes (:func:`sparse_restore.models.abstract_params`), without
  compiling ``module.init``.

  Timing does not depend on the values, and ``jax.jit(module.init)`` spends minutes of XLA:CPU compile time
  on one threefry kernel per parameter tensor. Kernels get PyTorch's default uniform(+-1/sqrt(fan_in)) scale,
  vectors (biases, norms, scalars) ones / small values, so activations stay in a realistic range.
  """
  shapes = models.abstract_params(module)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if leaf.ndim >= 2:
      bound = 1.0 / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))
      value = rng.uniform(-bound, bound, leaf.shape)
    elif name in ("scale", "temperature"):
      value = np.ones(leaf.shape)
    else:
      value = rng.uniform(-0.1, 0.1, leaf.shape) if name == "bias" else np.full(leaf.shape, 0.2)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def build(arch: str, config: Dict[str, Any], *, dtype: str, remat: bool, conv_impl: str = "auto",
          policy_overrides: Optional[Dict[str, Any]] = None, platform: Optional[str] = None):
  """The network with benchmark options applied, running with the policy for ``platform`` (default: JAX's first
  device's)."""
  kwargs = dict(config)
  if remat:
    kwargs["remat"] = True
  overrides = {"conv": conv_impl, **(policy_overrides or {}), "dtype": dtype}
  pol = policy_lib.for_platform(platform, **overrides) if platform else policy_lib.for_device(**overrides)
  return models.create(arch, policy=pol, **kwargs)


def make_forward(module):
  def forward(params, x):
    return module.apply({"params": params}, x, train=False)
  return jax.jit(forward)


# The optimizer of the published DRSformer recipe (configs/default.py, BasicSR's Deraining.yml): global-norm
# clipping to 0.01, then AdamW; L1 loss. The lr is constant here: its value does not change what a step costs.
TRAIN_RECIPE = {"lr": 3e-4, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4, "grad_clip_norm": 0.01,
                "loss": "l1"}


def make_train_step(module, *, batch: int, size: int):
  """The training module's own step (:func:`sparse_restore.train.make_train_step`: forward with ``train=True``,
  loss, backward, clipping, AdamW; jitted, state donated) on a one-device mesh, with an optimizer built the way
  training builds it (:func:`sparse_restore.train.create_optimizer` on :data:`TRAIN_RECIPE`).

  Returns ``(init_state, step, place)``: ``init_state(params)`` -> a ``TrainState``, ``step(state, batch, rng)``
  -> ``(state, metrics)``, and ``place(tree, batch_sharded)`` puts a value where the step expects it.
  """
  import ml_collections
  from sparse_restore import losses, schedules, sharding, train

  config = ml_collections.ConfigDict(TRAIN_RECIPE)
  stage = schedules.Stage(index=0, start=0, num_steps=1, patch_size=size, batch_size=batch, lr=config.lr,
                          schedule="constant")
  tx, schedule = train.create_optimizer(config, stage)
  mesh = sharding.make_mesh(jax.devices()[:1])
  step = train.make_train_step(mesh, module=module, tx=tx, schedule=schedule, loss_fn=losses.get(config.loss),
                               stage_start=0)

  def init_state(params):
    return train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  def place(tree, batch_sharded: bool = False):
    return jax.device_put(tree, sharding.data_sharded(mesh) if batch_sharded else sharding.replicated(mesh))

  return init_state, step, place


def _time_calls(fn, args, runs: int, *, carry_state: bool):
  """Wall and process-CPU seconds of ``runs`` calls (CPU time is robust to other load on the machine)."""
  times, cpu_times = [], []
  for _ in range(runs):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
    if carry_state:  # train step: feed the donated state back in
      args = (out[0],) + tuple(args[1:])
  return times, cpu_times


def measure(name: str, *, size: int, batch: int, mode: str, dtype: str = "float32", runs: int = 3,
            remat: bool = False, conv_impl: str = "auto", preset: Optional[str] = None,
            peak_tflops: Optional[float] = None, width: Optional[int] = None,
            model_kwargs: Optional[Dict[str, Any]] = None,
            policy_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Compiles and times one (network, size, batch, mode) combination; returns the JSON record."""
  arch, config = model_config(name, preset, model_kwargs)
  module = build(arch, config, dtype=dtype, remat=remat, conv_impl=conv_impl, policy_overrides=policy_overrides)
  h, w = size, width or size
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, h, w, 3), dtype=np.float32))
  params = random_params(module)
  n_params = int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))

  if mode == "forward":
    fn = make_forward(module)
    args = (params, x)
  elif mode == "train":
    y = jnp.asarray(rng.random((batch, h, w, 3), dtype=np.float32))
    init_state, fn, place = make_train_step(module, batch=batch, size=h)
    args = (place(jax.jit(init_state)(params)), place({"input": x, "target": y}, True), place(jax.random.key(0)))
  else:
    raise ValueError(f"unknown mode {mode!r}")

  t0, c0 = time.perf_counter(), time.process_time()
  lowered = fn.lower(*args)
  lower_s = time.perf_counter() - t0  # tracing + lowering: never cached (the persistent cache keeps XLA's part)
  compiled = lowered.compile()
  compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
  t0 = time.perf_counter()
  out = compiled(*args)
  jax.block_until_ready(out)
  first_call_s = time.perf_counter() - t0
  if mode == "train":
    args = (out[0],) + args[1:]
  times, cpu_times = _time_calls(compiled, args, runs, carry_state=(mode == "train"))
  median = statistics.median(times)
  gflop = _cost_gflop(compiled)
  rec = {
      "model": name, "arch": arch, "preset": preset, "mode": mode, "height": h, "width": w, "batch": batch,
      "dtype": dtype, "remat": remat, "conv_impl": module.policy.conv, "policy": module.policy.to_dict(),
      "params": n_params,
      "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
      "matmul_precision": jax.config.jax_default_matmul_precision or "default",
      "compilation_cache": jax.config.jax_compilation_cache_dir,
      "num_devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version(),
      "model_kwargs": model_kwargs or {}, "host_malloc": "reuse" if host_memory.is_applied() else "system",
      "compile_s": round(compile_s, 3), "compile_cpu_s": round(compile_cpu_s, 3), "lower_s": round(lower_s, 3),
      "first_call_s": round(first_call_s, 4), "runs": runs,
      "median_s": round(median, 5), "min_s": round(min(times), 5),
      "median_cpu_s": round(statistics.median(cpu_times), 5),
      "images_per_s": round(batch / median, 4), "us_per_pixel": round(median / (batch * h * w) * 1e6, 4),
      "peak_rss_gb": round(_peak_rss_gb(), 3), "device_peak_gb": _device_peak_gb(),
      "gflop": None if gflop is None else round(gflop, 2),
  }
  if gflop:
    rec["tflops_achieved"] = round(gflop / median / 1e3, 4)
    if peak_tflops:
      rec["fraction_of_peak"] = round(gflop / median / 1e3 / peak_tflops, 4)
  return rec


_SSA = re.compile(r"%[\w.#:-]+")
_LOC = re.compile(r"\s*loc\(.*\)\s*$")
_OP = re.compile(r"=\s*(?:\"?)(stablehlo\.[a-z_]+|mhlo\.[a-z_]+|chlo\.[a-z_]+)")


def hlo_stats(text: str) -> Dict[str, Any]:
  """Counts in a lowered program's StableHLO text (``jax.jit(...).trace(...).lower(...).as_text()``):
  ``convolutions``, ``grouped`` (feature or batch group count > 1: depthwise / grouped, forward or gradient), ``distinct`` (different
  shapes and attributes: each is a separate cuDNN autotuning job on a GPU), ``optimization_barriers``,
  ``conditionals`` (``case`` / ``if``), ``while_loops`` (scans), ``custom_calls`` and ``ops`` (every StableHLO
  operation, inside loops counted once)."""
  convs, grouped, signatures = 0, 0, set()
  ops: Dict[str, int] = {}
  for line in text.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    op = m.group(1).split(".", 1)[1]
    ops[op] = ops.get(op, 0) + 1
    if op == "convolution":
      convs += 1
      # Depthwise / grouped: feature groups (forward, input gradient) or batch groups (kernel gradient).
      groups = [int(g) for g in re.findall(r"(?:feature|batch)_group_count = (\d+)", line)]
      grouped += int(any(g > 1 for g in groups))
      signatures.add(_LOC.sub("", _SSA.sub("%", line.split("=", 1)[1])))
  return {"convolutions": convs, "grouped": grouped, "distinct": len(signatures),
          "optimization_barriers": ops.get("optimization_barrier", 0),
          "conditionals": ops.get("case", 0) + ops.get("if", 0), "while_loops": ops.get("while", 0),
          "custom_calls": ops.get("custom_call", 0), "ops": sum(ops.values())}


def lower_for(name: str, *, platform: str, size: int, batch: int, mode: str, dtype: str = "float32",
              remat: bool = False, conv_impl: str = "auto", preset: Optional[str] = None,
              width: Optional[int] = None, model_kwargs: Optional[Dict[str, Any]] = None,
              policy_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Lowers the forward pass or the train step for ``platform`` (``cuda``, ``rocm``, ``tpu``, ``cpu``) with the
  policy that platform gets, from any machine: nothing is compiled or run. Returns the record with
  :func:`hlo_stats` of the StableHLO and ``lower_s``."""
  arch, config = model_config(name, preset, model_kwargs)
  module = build(arch, config, dtype=dtype, remat=remat, conv_impl=conv_impl, policy_overrides=policy_overrides,
                 platform=policy_lib.platform_name(platform))
  h, w = size, width or size
  x = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)
  params = models.abstract_params(module)
  t0 = time.perf_counter()
  if mode == "forward":
    traced = make_forward(module).trace(params, x)
  elif mode == "train":
    init_state, step, _ = make_train_step(module, batch=batch, size=h)
    state = jax.eval_shape(init_state, params)
    traced = step.trace(state, {"input": x, "target": x}, jax.eval_shape(lambda: jax.random.key(0)))
  else:
    raise ValueError(f"unknown mode {mode!r}")
  text = traced.lower(lowering_platforms=(platform,)).as_text()
  rec = {"model": name, "arch": arch, "mode": mode, "lowered_for": platform, "height": h, "width": w,
         "batch": batch, "dtype": dtype, "remat": remat, "policy": module.policy.to_dict(),
         "model_kwargs": model_kwargs or {}, "jax": jax.__version__, "lower_s": round(time.perf_counter() - t0, 3)}
  rec.update(hlo_stats(text))
  return rec


def train_memory_bytes(name: str, *, size: int, batch: int, remat: bool, dtype: str = "float32",
                       preset: Optional[str] = None, model_kwargs: Optional[Dict[str, Any]] = None,
                       policy_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """XLA's memory analysis of the compiled train step (nothing is executed)."""
  arch, config = model_config(name, preset, model_kwargs)
  module = build(arch, config, dtype=dtype, remat=remat, policy_overrides=policy_overrides)
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  init_state, step, _ = make_train_step(module, batch=batch, size=size)
  state = jax.eval_shape(init_state, models.abstract_params(module))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  compiled = step.lower(state, {"input": x, "target": x}, rng).compile()
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return {"batch": batch, "total_bytes": int(total), "temp_bytes": int(m.temp_size_in_bytes),
          "argument_bytes": int(m.argument_size_in_bytes)}


def max_batch(name: str, *, size: int, memory_gb: float, remat: bool, dtype: str = "float32",
              preset: Optional[str] = None, start: int = 1, limit: int = 1024,
              model_kwargs: Optional[Dict[str, Any]] = None,
              policy_overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Largest batch whose compiled train step fits in ``memory_gb``.

  XLA's memory need is affine in the batch (params and optimizer state + per-image activations), so it is
  measured at two batch sizes, extrapolated, and the prediction is then checked (and corrected one step at a
  time) with real compilations: 3-4 compilations instead of a doubling search (a full-size DRSformer train
  step takes minutes to compile on CPU).
  """
  budget = memory_gb * 2**30

  def need(b):
    info = train_memory_bytes(name, size=size, batch=b, remat=remat, dtype=dtype, preset=preset,
                              model_kwargs=model_kwargs, policy_overrides=policy_overrides)
    print(f"[max-batch] batch {b}: {info['total_bytes'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
    return info

  infos = {start: need(start)}
  if infos[start]["total_bytes"] > budget:
    fits, fits_info = 0, None
  else:
    infos[start + 1] = need(start + 1)
    lo, hi = start, None  # lo fits; hi (when known) does not
    if infos[start + 1]["total_bytes"] <= budget:
      lo = start + 1
    else:
      hi = start + 1
    while (hi is None or hi - lo > 1) and lo < limit:
      # Secant through the two nearest measurements, kept strictly inside the bracket.
      known = sorted(infos)
      b0, b1 = (known[-2], known[-1]) if hi is None else (lo, hi)
      slope = max(1.0, (infos[b1]["total_bytes"] - infos[b0]["total_bytes"]) / (b1 - b0))
      guess = lo + int((budget - infos[lo]["total_bytes"]) // slope)
      upper = limit if hi is None else hi - 1
      guess = min(upper, max(lo + 1, guess))
      if hi is not None:
        guess = (lo + hi) // 2  # bracketed: bisection (the extrapolation was off, the need is not affine)
      infos[guess] = infos.get(guess) or need(guess)
      if infos[guess]["total_bytes"] <= budget:
        lo = guess
        if hi is None and guess == limit:
          break
        if hi is None:
          infos[guess + 1] = need(guess + 1)
          if infos[guess + 1]["total_bytes"] > budget:
            hi = guess + 1
          else:
            lo = guess + 1
      else:
        hi = guess
    fits, fits_info = lo, infos[lo]
  return {"model": name, "mode": "max-batch", "height": size, "width": size, "remat": remat, "dtype": dtype,
          "memory_gb": memory_gb, "max_batch": fits,
          "xla_bytes_at_max": None if fits_info is None else fits_info["total_bytes"],
          "backend": jax.default_backend(), "jax": jax.__version__}


def measure_input_pipeline(data_config, *, batch: int, num_workers: int, runs: int = 20,
                           warmup_batches: int = 5, seed: int = 0) -> Dict[str, Any]:
  """Steady-state throughput of the training input pipeline (:func:`sparse_restore.input_pipeline.train_dataset`
  on ``data_config``, prepared) with ``num_workers`` worker processes: ``warmup_batches`` batches untimed
  (worker start-up, first reads), then ``runs`` batches timed. Wall time, and the main process's CPU time
  (workers' CPU time is not in it)."""
  import ml_collections
  from sparse_restore import input_pipeline
  cfg = ml_collections.ConfigDict(dict(data_config.to_dict(), num_workers=int(num_workers)))
  t0 = time.perf_counter()
  it = iter(input_pipeline.train_dataset(cfg, global_batch_size=batch, seed=seed))
  for _ in range(warmup_batches):
    first = next(it)
  warmup_s = time.perf_counter() - t0
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(runs):
    first = next(it)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  shape = tuple(first["input"].shape)
  del it
  return {"mode": "input-pipeline", "dataset": cfg.name, "batch": batch, "patch_size": int(cfg.patch_size),
          "batch_shape": list(shape), "num_workers": int(num_workers),
          "prefetch_buffer_size": int(cfg.prefetch_buffer_size), "random_flip": bool(cfg.random_flip),
          "random_rot90": bool(cfg.random_rot90), "warmup_batches": warmup_batches, "warmup_s": round(warmup_s, 3),
          "runs": runs, "seconds_per_batch": round(wall / runs, 7), "images_per_s": round(runs * batch / wall, 2),
          "main_process_cpu_s_per_batch": round(cpu / runs, 5), "host_cpus": os.cpu_count(),
          "python": platform.python_version()}


def input_pipeline_config(args):
  """The data config of ``--mode input-pipeline``: the dataset prepared in ``--data-dir`` (built from
  ``--manual-dir`` the first time), the training crops and augmentations."""
  from sparse_restore import input_pipeline
  cfg = input_pipeline.default_data_config()
  cfg.name = args.dataset
  cfg.data_dir = args.data_dir or ""
  cfg.manual_dir = args.manual_dir or ""
  cfg.prefetch_buffer_size = args.prefetch
  cfg.random_flip = True
  cfg.random_rot90 = True
  input_pipeline.prepare(cfg)
  return cfg


def build_parser() -> argparse.ArgumentParser:
  """The command-line parser of ``python -m sparse_restore.bench``."""
  p = argparse.ArgumentParser(prog="python -m sparse_restore.bench", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="drsformer",
                 help="drsformer (full size, MEFC), drsformer_nomefc, ast (AST_B unless --preset), or a registry name")
  p.add_argument("--preset", default=None, help="AST preset: AST_B (default) or AST_T")
  p.add_argument("--model-kwargs", default=None,
                 help='JSON object of constructor arguments overriding the default config, e.g. \'{"dim": 8}\'')
  p.add_argument("--size", default="256", help="image side(s), comma separated, e.g. 128,256,512")
  p.add_argument("--width", type=int, default=None, help="image width if different from --size (non-square)")
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--mode", choices=("forward", "train", "max-batch", "input-pipeline"), default="forward")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (params stay f32)")
  p.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (the median is reported)")
  p.add_argument("--remat", action="store_true", help="rematerialise each block (less training memory)")
  p.add_argument("--conv-impl", choices=("auto",) + policy_lib.CONV_IMPLS, default="auto",
                 help="grouped-conv implementation (auto: the device's policy; shift on CPU, XLA elsewhere)")
  p.add_argument("--policy", default=None,
                 help='JSON object of policy fields overriding the device\'s choice (sparse_restore/models/policy.py), '
                      'e.g. \'{"scan_blocks": true}\'')
  p.add_argument("--lower-for", default=None, metavar="PLATFORM",
                 help="forward/train: lower for PLATFORM (cuda, rocm, tpu, cpu) with its policy instead of timing, "
                      "and report op and convolution counts of the StableHLO (works on any machine)")
  p.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s, for fraction_of_peak")
  p.add_argument("--memory-gb", type=float, default=20.0, help="max-batch: memory budget")
  p.add_argument("--check", action="store_true", help="max-batch: run the found batch once and report peak RSS")
  p.add_argument("--system-malloc", action="store_true",
                 help="keep glibc's default allocator settings (default: reuse freed memory, see host_memory.py)")
  p.add_argument("--compilation-cache", default="", metavar="DIR|none",
                 help="persistent compilation cache folder (default: ~/.cache/sparse_restore/jax; none: off, "
                      "for cold compile times; $JAX_COMPILATION_CACHE_DIR wins when set)")
  ref = p.add_argument_group("same-run reference (forward and train modes)")
  ref.add_argument("--reference-dir", default=None, metavar="DIR",
                   help="folder with the authors' drs_ref.py (DRSformer_arch.py) and ast_ref.py (AST's model.py): "
                        "time their PyTorch network for the same work after ours and report the speed-up")
  ref.add_argument("--reference-precision", choices=bench_reference.CHOICES, default="best",
                   help="reference precision: default (as released), tf32, bf16 (autocast) or best (fastest; "
                        "default)")
  ref.add_argument("--reference-runs", type=int, default=None, help="timed reference runs (default: --runs)")
  data = p.add_argument_group("input-pipeline mode")
  data.add_argument("--dataset", default="rain200h", help="dataset name (sparse_restore.datasets), default rain200h")
  data.add_argument("--data-dir", default=None, help="TFDS data dir holding (or receiving) the prepared dataset")
  data.add_argument("--manual-dir", default=None, help="the dataset's raw {train,test}/{input,target} folders")
  data.add_argument("--num-workers", default="0,2,4", help="grain worker processes, comma separated (default 0,2,4)")
  data.add_argument("--prefetch", type=int, default=4, help="batches read ahead (training's default, 4)")
  data.add_argument("--warmup-batches", type=int, default=5, help="untimed batches first (default 5)")
  p.add_argument("-v", "--verbose", action="store_true",
                 help="also show the log lines of JAX and the other libraries (hidden by default)")
  return p


def padding_note(name: str, size: int, width: Optional[int], preset: Optional[str] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None) -> Optional[str]:
  """A line saying that the network pads ``size x width`` inputs inside (AST: to multiples of its
  ``pad_multiple``), so the timing is that of the padded size; None when nothing is padded."""
  import math
  arch, config = model_config(name, preset, model_kwargs)
  try:
    module = models.create(arch, **config)
  except (TypeError, ValueError):
    return None  # a bad --model-kwargs is reported by the measurement itself
  m = int(getattr(module, "pad_multiple", 0) or 0)
  if m <= 1:
    return None
  h, w = size, width or size
  ph, pw = math.ceil(h / m) * m, math.ceil(w / m) * m
  if (ph, pw) == (h, w):
    return None
  return (f"{arch} pads {h}x{w} inputs to {ph}x{pw} inside the network (multiple {m}): the times are those of "
          f"{ph}x{pw}; us_per_pixel counts the {h}x{w} output pixels")


def _json_object(parser, flag: str, value: Optional[str]) -> Optional[Dict[str, Any]]:
  if not value:
    return None
  try:
    obj = json.loads(value)
  except json.JSONDecodeError as e:
    parser.error(f"{flag} is not valid JSON ({e}): {value!r}")
  if not isinstance(obj, dict):
    parser.error(f"{flag} must be a JSON object, got {value!r}")
  return obj


def main(argv=None) -> int:
  p = build_parser()
  args = p.parse_args(argv)
  from sparse_restore import console
  console.setup(verbose=args.verbose)  # before the first JAX call starts the backends
  try:
    sizes = [int(s) for s in str(args.size).split(",") if s]
  except ValueError:
    p.error(f"--size must be integers separated by commas, got {args.size!r}")
  model_kwargs, policy_overrides = (_json_object(p, flag, value) for flag, value in
                                    (("--model-kwargs", args.model_kwargs), ("--policy", args.policy)))
  try:
    policy_lib.for_platform("cpu", **(policy_overrides or {}))
  except (TypeError, ValueError) as e:
    p.error(f"--policy: {e}")
  if args.runs <= 0:
    p.error(f"--runs must be positive, got {args.runs}")
  if args.mode == "input-pipeline":
    return _input_pipeline_main(p, args, sizes)
  arch, config = model_config(args.model, args.preset, model_kwargs)
  if args.reference_dir is not None:
    if args.mode not in ("forward", "train"):
      p.error(f"--reference-dir times forward and train modes, not {args.mode}")
    try:
      bench_reference.check(args.reference_dir, arch, config, args.reference_precision)
    except bench_reference.ReferenceError as e:
      p.error(f"--reference-dir: {e}")
    # PyTorch shares the device: JAX must not reserve most of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if not args.system_malloc:
    host_memory.keep_freed_memory()  # before the first JAX call starts the CPU client's threads
  compile_cache.enable(args.compilation_cache, default=compile_cache.user_cache_dir())
  print(f"[bench] backend={jax.default_backend()} devices={jax.devices()} host_malloc="
        f"{'reuse' if host_memory.is_applied() else 'system'}", file=sys.stderr, flush=True)
  if args.lower_for is not None:
    if args.mode not in ("forward", "train") or args.reference_dir is not None:
      p.error("--lower-for lowers the forward or train mode, without --reference-dir")
    for size in sizes:
      print(json.dumps(lower_for(args.model, platform=args.lower_for, size=size, batch=args.batch, mode=args.mode,
                                 dtype=args.dtype, remat=args.remat, conv_impl=args.conv_impl, preset=args.preset,
                                 width=args.width, model_kwargs=model_kwargs, policy_overrides=policy_overrides)),
            flush=True)
    return 0
  for size in sizes:
    note = padding_note(args.model, size, args.width, args.preset, model_kwargs)
    if note:
      print(f"[bench] {note}", file=sys.stderr, flush=True)
    if args.mode == "max-batch":
      rec = max_batch(args.model, size=size, memory_gb=args.memory_gb, remat=args.remat, dtype=args.dtype,
                      preset=args.preset, model_kwargs=model_kwargs, policy_overrides=policy_overrides)
      if args.check and rec["max_batch"]:
        run = measure(args.model, size=size, batch=rec["max_batch"], mode="train", dtype=args.dtype, runs=1,
                      remat=args.remat, preset=args.preset, model_kwargs=model_kwargs,
                      policy_overrides=policy_overrides)
        rec.update(checked_median_s=run["median_s"], checked_peak_rss_gb=run["peak_rss_gb"])
    else:
      rec = measure(args.model, size=size, batch=args.batch, mode=args.mode, dtype=args.dtype, runs=args.runs,
                    remat=args.remat, conv_impl=args.conv_impl, preset=args.preset, peak_tflops=args.peak_tflops,
                    width=args.width, model_kwargs=model_kwargs, policy_overrides=policy_overrides)
      if args.reference_dir is not None:
        # Ours first on stderr: a reference that crashes the process (driver, library clash) cannot lose it.
        print(f"[bench] ours: {json.dumps(rec)}", file=sys.stderr, flush=True)
        bench_reference.release_jax_memory()
        print(f"[bench] reference: {arch} {args.mode} {args.batch}x{rec['height']}x{rec['width']}, precision "
              f"{args.reference_precision}", file=sys.stderr, flush=True)
        try:
          ref = bench_reference.measure(args.reference_dir, arch, config, mode=args.mode, batch=args.batch,
                                        height=rec["height"], width=rec["width"],
                                        precision=args.reference_precision, runs=args.reference_runs or args.runs,
                                        jax_platform=jax.devices()[0].platform)
        except bench_reference.ReferenceError as e:
          ref = {"error": str(e)}
        bench_reference.attach(rec, ref)
    print(json.dumps(rec), flush=True)
  return 0


def _input_pipeline_main(p, args, sizes) -> int:
  try:
    workers = [int(w) for w in str(args.num_workers).split(",") if w != ""]
  except ValueError:
    p.error(f"--num-workers must be integers separated by commas, got {args.num_workers!r}")
  if not workers or min(workers) < 0:
    p.error(f"--num-workers must be >= 0, got {args.num_workers!r}")
  if args.batch <= 0:
    p.error(f"--batch must be positive, got {args.batch}")
  from sparse_restore import datasets
  try:
    cfg = input_pipeline_config(args)
  except datasets.DatasetError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for size in sizes:
    cfg.patch_size = size
    for n in workers:
      rec = measure_input_pipeline(cfg, batch=args.batch, num_workers=n, runs=args.runs,
                                   warmup_batches=args.warmup_batches)
      print(json.dumps(rec), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
