r"""Benchmarks: forward (inference) and full train-step timings of the networks, on any backend.

    python -m sparse_restore.bench --model drsformer --size 256 --batch 1 --mode forward
    python -m sparse_restore.bench --model ast --size 128,256,512,1024 --mode forward
    python -m sparse_restore.bench --model drsformer --size 128 --batch 2 --mode train [--remat] [--dtype bfloat16]
    python -m sparse_restore.bench --model drsformer --size 128 --mode max-batch --memory-gb 20 [--remat]
    python -m sparse_restore.bench --model drsformer --model-kwargs '{"dim": 8, "use_mefc": false}' --size 32

Each measurement prints ONE JSON object on stdout (progress goes to stderr), with at least:
``median_s`` (median wall time of one call after warm-up), ``min_s``, ``median_cpu_s`` (process CPU time of
one call, all threads: robust to other load on a shared machine), ``runs``, ``compile_s`` and ``compile_cpu_s``
(lowering + XLA compilation, measured separately), ``first_call_s`` (first execution after compilation), ``images_per_s``,
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

Timing rules (performance.md): jitted functions, a warm-up call, ``block_until_ready()``, median of ``--runs``.
Default networks are the full-size published ones (DRSformer with MEFC, AST_B) with random weights.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparse_restore import host_memory, models
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
          policy_overrides: Optional[Dict[str, Any]] = None):
  """The network with benchmark options applied, running with the policy for JAX's first device."""
  kwargs = dict(config)
  if remat:
    kwargs["remat"] = True
  pol = policy_lib.for_device(**{"conv": conv_impl, **(policy_overrides or {}), "dtype": dtype})
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
  compiled = fn.lower(*args).compile()
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
      "num_devices": jax.device_count(), "jax": jax.__version__, "python": platform.python_version(),
      "model_kwargs": model_kwargs or {}, "host_malloc": "reuse" if host_memory.is_applied() else "system",
      "compile_s": round(compile_s, 3), "compile_cpu_s": round(compile_cpu_s, 3),
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
  p.add_argument("--mode", choices=("forward", "train", "max-batch"), default="forward")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype (params stay f32)")
  p.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (the median is reported)")
  p.add_argument("--remat", action="store_true", help="rematerialise each block (less training memory)")
  p.add_argument("--conv-impl", choices=("auto",) + policy_lib.CONV_IMPLS, default="auto",
                 help="grouped-conv implementation (auto: the device's policy; shift on CPU, XLA elsewhere)")
  p.add_argument("--policy", default=None,
                 help='JSON object of policy fields overriding the device\'s choice (sparse_restore/models/policy.py), '
                      'e.g. \'{"scan_blocks": true}\'')
  p.add_argument("--peak-tflops", type=float, default=None, help="device peak TFLOP/s, for fraction_of_peak")
  p.add_argument("--memory-gb", type=float, default=20.0, help="max-batch: memory budget")
  p.add_argument("--check", action="store_true", help="max-batch: run the found batch once and report peak RSS")
  p.add_argument("--system-malloc", action="store_true",
                 help="keep glibc's default allocator settings (default: reuse freed memory, see host_memory.py)")
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
  if not args.system_malloc:
    host_memory.keep_freed_memory()  # before the first JAX call starts the CPU client's threads
  print(f"[bench] backend={jax.default_backend()} devices={jax.devices()} host_malloc="
        f"{'reuse' if host_memory.is_applied() else 'system'}", file=sys.stderr, flush=True)
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
    print(json.dumps(rec), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
