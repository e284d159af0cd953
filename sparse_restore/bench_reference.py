"""The authors' PyTorch networks timed inside the bench's process, for same-run ratios (``bench --reference-dir``).

``DIR`` holds the authors' model files under two names (never part of this repository):
``drs_ref.py`` = ``basicsr/models/archs/DRSformer_arch.py`` of the DRSformer release (class ``DRSformer``) and
``ast_ref.py`` = ``model.py`` of the AST release (class ``AST``; it imports ``timm`` and ``einops``).

The reference runs the same work as the bench's own measurement: same batch, size and mode, on the same device
(PyTorch CUDA when JAX runs on a GPU, PyTorch CPU on a CPU). ``forward``: ``model.eval()`` under ``no_grad``.
``train``: L1 loss, backward, global-norm clipping to 0.01, AdamW (the published recipe, as the bench's step).
Warm-up calls, then the median of ``runs`` timed calls (``torch.cuda.synchronize`` on a GPU); on CUDA the
allocator's peak is recorded. ``torch.set_num_threads`` is left at PyTorch's default and recorded.

Precisions: ``default`` (as the released code runs: on CUDA cuDNN convolutions in TF32, matrix products in
float32), ``tf32`` (matrix products in TF32 too), ``bf16`` (``torch.autocast`` to bfloat16), ``best`` (all three,
the fastest kept; on a CPU the TF32 switches do nothing, so ``best`` times ``default`` and ``bf16``).
"""
from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from typing import Any, Dict, Optional

PRECISIONS = ("default", "tf32", "bf16")
CHOICES = PRECISIONS + ("best",)
FILES = {"drsformer": ("drs_ref.py", "DRSformer", "basicsr/models/archs/DRSformer_arch.py of the DRSformer release"),
         "ast": ("ast_ref.py", "AST", "model.py of the AST release")}
# The published recipe (bench.TRAIN_RECIPE): AdamW after clipping to a global norm of 0.01, L1 loss.
LR, BETAS, WEIGHT_DECAY, EPS, CLIP = 3e-4, (0.9, 0.999), 1e-4, 1e-8, 0.01


class ReferenceError(Exception):
  """The reference cannot be built as asked (missing folder, file, class, package or switch)."""


def _import_torch():
  try:
    import torch
  except ImportError as e:
    raise ReferenceError(f"--reference-dir needs PyTorch, which is not importable here ({e}); install it, "
                         "e.g. pip install -e '.[torch]'") from None
  return torch


def reference_file(ref_dir: str, arch: str) -> str:
  """The authors' file for ``arch`` in ``ref_dir``; ReferenceError when the folder or file is missing."""
  if arch not in FILES:
    raise ReferenceError(f"no reference for network {arch!r} (only {', '.join(FILES)})")
  if not os.path.exists(ref_dir):
    raise ReferenceError(f"{ref_dir}: no such folder")
  if not os.path.isdir(ref_dir):
    raise ReferenceError(f"{ref_dir}: not a folder (it should hold drs_ref.py and ast_ref.py)")
  name, _, origin = FILES[arch]
  path = os.path.join(ref_dir, name)
  if not os.path.isfile(path):
    raise ReferenceError(f"{path}: missing (the authors' {origin}, saved under that name)")
  return path


def load_class(ref_dir: str, arch: str):
  """The authors' network class (``DRSformer`` / ``AST``) imported from ``ref_dir``'s file."""
  _import_torch()
  path = reference_file(ref_dir, arch)
  _, cls_name, _ = FILES[arch]
  mod_name = f"_sparse_restore_reference_{arch}"
  spec = importlib.util.spec_from_file_location(mod_name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except ImportError as e:
    raise ReferenceError(f"{path}: cannot be imported: {e} (install the package it needs)") from None
  except Exception as e:  # a broken file: one line naming it
    raise ReferenceError(f"{path}: cannot be imported: {type(e).__name__}: {e}") from None
  cls = getattr(module, cls_name, None)
  if not isinstance(cls, type):
    raise ReferenceError(f"{path}: defines no class {cls_name}")
  return cls


def _drsformer_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
  from sparse_restore.models import drsformer, mefc, tksa
  defaults = {f: getattr(drsformer.DRSformer, f) for f in ("use_mefc", "mefc_experts", "topk_ratios", "ffn_type",
                                                           "in_channels", "out_channels")}
  defaults["mefc_experts"] = len(mefc.OPERATIONS)
  defaults["topk_ratios"] = tuple(tksa.DEFAULT_TOPK_RATIOS)
  unsupported = []
  for key, default in defaults.items():
    value = config.get(key, default)
    if isinstance(value, list):
      value = tuple(value)
    if value != default:
      unsupported.append(f"{key}={value!r}")
  if unsupported:
    raise ReferenceError("the authors' DRSformer_arch.py has no switch for " + ", ".join(unsupported)
                         + " (it always has MEFC with 8 experts, MSFN and the released top-k ratios)")
  out = {"inp_channels": 3, "out_channels": 3}
  for ours, theirs in (("dim", "dim"), ("num_blocks", "num_blocks"), ("heads", "heads"),
                       ("ffn_expansion_factor", "ffn_expansion_factor"), ("bias", "bias"),
                       ("layernorm_type", "LayerNorm_type")):
    if ours in config:
      value = config[ours]
      out[theirs] = list(value) if isinstance(value, (list, tuple)) else value
  return out


def _ast_kwargs(config: Dict[str, Any]) -> Dict[str, Any]:
  out = {"token_projection": "linear"}
  for ours, theirs in (("img_size", "img_size"), ("embed_dim", "embed_dim"), ("depths", "depths"),
                       ("num_heads", "num_heads"), ("win_size", "win_size"), ("mlp_ratio", "mlp_ratio"),
                       ("token_mlp", "token_mlp"), ("qkv_bias", "qkv_bias"), ("drop_path_rate", "drop_path_rate"),
                       ("in_chans", "in_chans"), ("dd_in", "dd_in")):
    if ours in config:
      value = config[ours]
      out[theirs] = list(value) if isinstance(value, (list, tuple)) else value
  # Ours pads any size to its multiple; the reference needs sizes that already are (the bench's sizes are).
  return out


def reference_kwargs(arch: str, config: Dict[str, Any]) -> Dict[str, Any]:
  """Constructor arguments of the authors' class for our ``config`` (the bench's network: preset + overrides);
  ReferenceError for a setting the authors' file cannot express."""
  if arch == "drsformer":
    return _drsformer_kwargs(config)
  if arch == "ast":
    return _ast_kwargs(config)
  raise ReferenceError(f"no reference for network {arch!r} (only {', '.join(FILES)})")


def _set_precision(torch, precision: str):
  torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
  torch.backends.cudnn.allow_tf32 = precision in ("default", "tf32")


def _time_one(torch, cls, kwargs, *, device: str, mode: str, batch: int, height: int, width: int,
              precision: str, runs: int, warmup: int) -> Dict[str, Any]:
  rec: Dict[str, Any] = {"precision": precision}
  cuda = device == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  model = None
  try:
    _set_precision(torch, precision)
    torch.manual_seed(0)
    model = cls(**kwargs).to(device)
    rec["params"] = int(sum(p.numel() for p in model.parameters()))
    x = torch.rand(batch, 3, height, width, device=device)
    y = torch.rand(batch, 3, height, width, device=device)
    amp = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    if mode == "forward":
      model.eval()

      def call():
        with torch.no_grad(), amp():
          return model(x)
    else:
      model.train()
      opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)

      def call():
        opt.zero_grad(set_to_none=True)
        with amp():
          loss = (model(x).float() - y).abs().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return loss
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    call()
    sync()
    rec["first_call_s"] = round(time.perf_counter() - t0, 4)
    for _ in range(max(0, warmup - 1)):
      call()
    sync()
    times, cpu_times = [], []
    for _ in range(runs):
      t0, c0 = time.perf_counter(), time.process_time()
      call()
      sync()
      times.append(time.perf_counter() - t0)
      cpu_times.append(time.process_time() - c0)
    rec.update(median_s=round(statistics.median(times), 6), min_s=round(min(times), 6),
               median_cpu_s=round(statistics.median(cpu_times), 6), runs=runs, warmup=warmup)
    rec["device_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None
  except Exception as e:  # out of memory and the like: recorded, the other precisions still run
    rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
  finally:
    del model
    if cuda:
      torch.cuda.empty_cache()
  return rec


def measure(ref_dir: str, arch: str, config: Dict[str, Any], *, mode: str, batch: int, height: int, width: int,
            precision: str = "best", runs: int = 3, jax_platform: str = "cpu",
            warmup: Optional[int] = None) -> Dict[str, Any]:
  """Times the authors' network for the bench's work; returns the record's ``reference`` object.

  ``precision`` is one of :data:`CHOICES`; ``best`` keeps the fastest precision that ran (``all`` lists each).
  ``jax_platform`` is the platform the bench ran ours on: ``gpu`` -> CUDA (an error if PyTorch has no CUDA),
  anything else -> CPU. ``warmup``: untimed calls before the timed ones (default 3 on CUDA, 2 on CPU: the first calls of a shape are slow there too).
  """
  if precision not in CHOICES:
    raise ReferenceError(f"unknown reference precision {precision!r} (one of {', '.join(CHOICES)})")
  torch = _import_torch()
  cls = load_class(ref_dir, arch)
  kwargs = reference_kwargs(arch, config)
  if jax_platform == "gpu":
    if not torch.cuda.is_available():
      raise ReferenceError(f"JAX runs on a GPU but PyTorch {torch.__version__} sees no CUDA device: the reference "
                           "would not run on the same device")
    device = "cuda"
  else:
    device = "cpu"
  warmup = warmup if warmup is not None else (3 if device == "cuda" else 2)
  if device == "cpu":
    precisions = ("default", "bf16") if precision == "best" else (precision,)
  else:
    precisions = PRECISIONS if precision == "best" else (precision,)
  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
  torch.backends.cudnn.benchmark = True  # as the authors' training and test scripts
  try:
    results = [_time_one(torch, cls, kwargs, device=device, mode=mode, batch=batch, height=height, width=width,
                         precision=p, runs=runs, warmup=warmup) for p in precisions]
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved
  ok = [r for r in results if "median_s" in r]
  best = min(ok, key=lambda r: r["median_s"]) if ok else results[0]
  rec = dict(best)
  rec.update(impl="pytorch-reference", file=os.path.basename(reference_file(ref_dir, arch)), kwargs=kwargs,
             requested_precision=precision, torch=torch.__version__, device=device,
             device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
             torch_threads=torch.get_num_threads())
  if len(results) > 1:
    rec["all"] = results
  return rec


def attach(record: Dict[str, Any], reference: Dict[str, Any]) -> Dict[str, Any]:
  """Adds ``reference`` and the ratios to the bench's ``record``: ``speedup`` = reference median / ours
  (wall), ``speedup_cpu`` the same for process CPU time, ``memory_ratio`` = our device peak / the reference's."""
  record["reference"] = reference
  if "median_s" in reference and record.get("median_s"):
    record["speedup"] = round(reference["median_s"] / record["median_s"], 4)
    if reference.get("median_cpu_s") and record.get("median_cpu_s"):
      record["speedup_cpu"] = round(reference["median_cpu_s"] / record["median_cpu_s"], 4)
  else:
    record["speedup"] = None
  ours_mem, ref_mem = record.get("device_peak_gb"), reference.get("device_peak_gb")
  record["memory_ratio"] = round(ours_mem / ref_mem, 4) if ours_mem and ref_mem else None
  return record


def check(ref_dir: str, arch: str, config: Dict[str, Any], precision: str) -> None:
  """Everything that can be checked before timing ours: PyTorch, the folder, the file, its class, the mapping."""
  if precision not in CHOICES:
    raise ReferenceError(f"unknown reference precision {precision!r} (one of {', '.join(CHOICES)})")
  load_class(ref_dir, arch)
  reference_kwargs(arch, config)


def release_jax_memory() -> None:
  """Drops JAX's compiled programs and collects garbage once ours is timed, so that the device memory our
  finished measurement held goes back to JAX's pool (PyTorch gets what JAX has not reserved: the bench turns
  JAX's preallocation off when it times a reference)."""
  import gc

  import jax
  gc.collect()
  jax.clear_caches()
  gc.collect()
