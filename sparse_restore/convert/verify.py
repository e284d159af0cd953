"""``--verify``: numerical checks of a conversion, run before anything is written (and a re-read after).

What the checks prove:

* **Reference outputs** (``--verify-npz FILE`` with ``input``/``output`` arrays, NCHW, as in
  ``shared/fixtures/*.npz``): the converted Flax model reproduces outputs produced by the authors' PyTorch network
  with these weights, to ``max|ours - ref| <= 1e-5 * max|ref|``. This is the end-to-end proof: names, layouts and
  the model's arithmetic are all right for this checkpoint. It is only as good as the reference file (it must come
  from the same weights).
* **Weight transforms, against PyTorch** (only when ``torch`` is importable; it is never required): every
  converted array is matched exactly against one of the rules' transforms (``rules.conv_kernel``,
  ``conv_transpose_kernel``, ``dense_kernel`` or an unchanged copy, a reshape allowed); an array that is none of
  them fails. Each transform is then run, once per distinct PyTorch shape, on a real kernel of that shape and a
  random input: ``torch.nn.functional.conv2d`` vs our ``layers.Conv2d`` (depthwise ``[C, 1, kh, kw]`` kernels also
  grouped, through both our CPU "shift" path and XLA's), ``conv_transpose2d`` vs ``flax.linen.ConvTranspose``
  (``transpose_kernel=False``), ``F.linear`` vs ``x @ kernel``. A transform is a fixed index permutation for a
  given shape, so this proves every array's *layout* (transposes, flips, in/out order) is what our layers expect.
  It does not prove an array went to the *right* layer (a mis-named but same-shaped mapping passes); only the
  reference-output check does.
* **Forward smoke test** (when no reference file is given): the converted model runs on a random
  ``size x size`` image (rounded up to the model's ``size_multiple``) and gives a finite output of the input's
  shape.
* **Export re-read** (after writing): ``checkpoint.load_model`` on the export returns exactly (bit for bit) the
  converted parameters.

What it does not do: run the authors' PyTorch network (their code is not part of this project), so without an
``--verify-npz`` reference the check of the model's computation itself rests on the project's parity tests.
Any failed pre-write check raises :class:`ConversionError` and nothing is written; a failed re-read raises it
after writing (the export is then suspect: the message names it).
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from typing import Callable, List, Optional

import numpy as np

from sparse_restore.convert.rules import ConversionError, conv_kernel, conv_transpose_kernel, dense_kernel

OUTPUT_RTOL = 1e-5   # the fixtures' acceptance criterion, relative to max|reference|
KERNEL_RTOL = 1e-4   # single layers: float32 sums in a different order
_KERNEL_SIDE = 9     # spatial side of the random inputs of the per-kernel checks


@dataclasses.dataclass
class Check:
  """One verification result: ``error`` is max|ours - ref| / max(max|ref|, 1e-12)."""
  name: str
  kind: str
  error: float
  tolerance: float
  tensors: int = 1  # how many converted tensors this check covers (same transform, same shape)

  @property
  def ok(self) -> bool:
    return bool(np.isfinite(self.error) and self.error <= self.tolerance)


def _rel_err(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    return float("inf")
  return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-12)) if ref.size else 0.0


def _torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return torch


_JITTED = {}


def _jitted_apply(module):
  """``module.apply`` under jit, one per module configuration (equal modules share it, so each input shape is
  compiled once per process)."""
  import jax  # pylint: disable=g-import-not-at-top
  fn = _JITTED.get(module)
  if fn is None:
    fn = _JITTED[module] = jax.jit(lambda p, v: module.apply({"params": p}, v))
  return fn


def _run_layer(module, params, x):
  """A single layer's output (layers repeat a lot, so the cache above pays off)."""
  return np.asarray(_jitted_apply(module)(params, x))


def _run_model(module, params, x):
  """The whole network under one jit, depthwise convolutions as XLA grouped convolutions (the reference
  implementation; compiling the CPU "shift" path takes ~2x longer, and ``kernel_checks`` runs every depthwise
  kernel through that path against torch)."""
  from sparse_restore.models.policy import Policy  # pylint: disable=g-import-not-at-top
  module = module.clone(policy=Policy())
  return np.asarray(_jitted_apply(module)(params, x))


def _layout_kind(w: np.ndarray, k: np.ndarray) -> str:
  """Which of the rules' transforms turned PyTorch array ``w`` into Flax array ``k`` (compared exactly)."""
  if w.ndim == 4 and k.shape == (w.shape[2], w.shape[3], w.shape[1], w.shape[0]) and np.array_equal(
      k, conv_kernel(w)):
    return "conv"
  if w.ndim == 4 and k.shape == (w.shape[2], w.shape[3], w.shape[0], w.shape[1]) and np.array_equal(
      k, conv_transpose_kernel(w)):
    return "transposed conv"
  if k.size == w.size and np.array_equal(k.ravel(), w.ravel()):
    return "copy"
  if w.ndim == 2 and k.shape == w.shape[::-1] and np.array_equal(k, dense_kernel(w)):
    return "linear"
  return "unrecognised layout"  # e.g. a kernel transposed the wrong way round


def kernel_checks(entries, seed: int = 0) -> List[Check]:
  """Layout checks of converted weights against torch.nn.functional (see the module docstring).

  Every tensor is matched exactly against one of the rules' transforms; each transform is then run through
  torch and through our layer once per (transform, shape) -- a transform is a fixed index permutation for a given
  shape, so one real kernel of that shape checks it for all of them (``Check.tensors`` counts them).
  """
  torch = _torch()
  if torch is None:
    raise ConversionError("kernel checks need torch, which is not installed")
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sparse_restore.models import policy  # pylint: disable=g-import-not-at-top
  from sparse_restore.models.layers import Conv2d  # pylint: disable=g-import-not-at-top
  F = torch.nn.functional
  rng = np.random.default_rng(seed)
  checks: List[Check] = []
  done = {}
  for e in entries:
    w = np.asarray(e.torch_array, np.float32)
    k = np.asarray(e.flax_array, np.float32)
    name = f"{e.torch_key} -> {'/'.join(e.flax_path)}"
    kind = _layout_kind(w, k)
    if kind in ("copy", "unrecognised layout"):
      checks.append(Check(name, kind, 0.0 if kind == "copy" else float("inf"), 0.0))
      continue
    if (kind, w.shape) in done:
      for c in done[kind, w.shape]:
        c.tensors += 1
      continue
    new: List[Check] = []
    if kind == "conv":
      out_c, in_c, kh, kw = w.shape
      x = rng.standard_normal((1, in_c, _KERNEL_SIDE, _KERNEL_SIDE)).astype(np.float32)
      pad = (kh // 2, kw // 2)
      ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=pad).numpy()
      ours = _run_layer(Conv2d(out_c, (kh, kw), padding=pad, use_bias=False), {"kernel": k},
                        jnp.asarray(x.transpose(0, 2, 3, 1)))
      new.append(Check(name, "conv", _rel_err(ours.transpose(0, 3, 1, 2), ref), KERNEL_RTOL))
      if in_c == 1 and out_c > 1:  # depthwise: run it grouped too (the "shift" CPU path and XLA's)
        xd = rng.standard_normal((1, out_c, _KERNEL_SIDE, _KERNEL_SIDE)).astype(np.float32)
        ref = F.conv2d(torch.from_numpy(xd), torch.from_numpy(w), padding=pad, groups=out_c).numpy()
        for impl in ("shift", "xla"):
          conv = Conv2d(out_c, (kh, kw), padding=pad, groups=out_c, use_bias=False,
                        policy=policy.for_platform("cpu", conv=impl))
          ours = _run_layer(conv, {"kernel": k}, jnp.asarray(xd.transpose(0, 2, 3, 1)))
          new.append(Check(name, f"depthwise conv ({impl})", _rel_err(ours.transpose(0, 3, 1, 2), ref),
                           KERNEL_RTOL))
    elif kind == "transposed conv":
      in_c, out_c, kh, kw = w.shape
      x = rng.standard_normal((1, in_c, _KERNEL_SIDE, _KERNEL_SIDE)).astype(np.float32)
      ref = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=2).numpy()
      layer = nn.ConvTranspose(out_c, (kh, kw), strides=(2, 2), padding="VALID", use_bias=False,
                               transpose_kernel=False)
      ours = _run_layer(layer, {"kernel": k}, jnp.asarray(x.transpose(0, 2, 3, 1)))
      new.append(Check(name, "transposed conv", _rel_err(ours.transpose(0, 3, 1, 2), ref), KERNEL_RTOL))
    else:  # linear
      x = rng.standard_normal((5, w.shape[1])).astype(np.float32)
      ref = F.linear(torch.from_numpy(x), torch.from_numpy(w)).numpy()
      ours = np.asarray(jnp.dot(jnp.asarray(x), jnp.asarray(k)))
      new.append(Check(name, "linear", _rel_err(ours, ref), KERNEL_RTOL))
    done[kind, w.shape] = new
    checks += new
  return checks


def npz_check(module, params, npz_path) -> Check:
  """The converted model against a reference ``input``/``output`` pair (NCHW float32)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  try:
    with np.load(npz_path) as data:
      x, ref = np.asarray(data["input"], np.float32), np.asarray(data["output"], np.float32)
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # damaged archives too
    raise ConversionError(f"{npz_path}: not a reference file with 'input' and 'output' arrays "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
  if x.ndim != 4 or ref.ndim != 4:
    raise ConversionError(f"{npz_path}: 'input'/'output' must be NCHW, got {x.shape} and {ref.shape}")
  try:
    ours = _run_model(module, params, jnp.asarray(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
  except ValueError as e:
    raise ConversionError(f"{npz_path}: the model cannot run on its input {x.shape}: {e}") from None
  return Check(f"{os.path.basename(os.fspath(npz_path))} output", "reference output", _rel_err(ours, ref),
               OUTPUT_RTOL)


def smoke_check(module, params, size: int, seed: int = 0) -> Check:
  """Forward pass on a random image: finite output with the input's shape (error 0 if so, inf if not)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  m = max(int(getattr(module, "size_multiple", 1)), 1)
  side = -(-max(int(size), 1) // m) * m
  channels = int(getattr(module, "in_channels", getattr(module, "in_chans", 3)))
  x = np.random.default_rng(seed).random((1, side, side, channels), dtype=np.float32)
  y = _run_model(module, params, jnp.asarray(x))
  ok = y.shape[:3] == x.shape[:3] and bool(np.all(np.isfinite(y)))
  return Check(f"forward {side}x{side}", "smoke", 0.0 if ok else float("inf"), 0.0)


def _report(checks: List[Check], log: Callable[[str], None]):
  by_kind = {}
  for c in checks:
    by_kind.setdefault(c.kind, []).append(c)
  for kind, cs in by_kind.items():
    worst = max(cs, key=lambda c: c.error)
    status = "ok" if all(c.ok for c in cs) else "FAILED"
    tensors = sum(c.tensors for c in cs)
    if worst.tolerance == 0:  # exact / pass-fail checks
      log(f"verify: {kind}: {tensors} checked, {sum(c.tensors for c in cs if c.ok)} passed: {status}")
    else:
      runs = f" ({len(cs)} distinct shapes run)" if tensors != len(cs) else ""
      log(f"verify: {kind}: {tensors} checked{runs}, max relative error {worst.error:.2e} "
          f"(tolerance {worst.tolerance:g}): {status}")
  failed = [c for c in checks if not c.ok]
  if failed:
    lines = [f"{c.kind}: {c.name}: relative error {c.error:.3g} > {c.tolerance:g}" for c in failed[:20]]
    more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
    raise ConversionError(f"verification failed ({len(failed)} check(s)); nothing was written:\n  "
                          + "\n  ".join(lines) + more)


def verify_conversion(conv, *, npz_path=None, size: int = 64, log: Optional[Callable[[str], None]] = print):
  """Runs the pre-write checks on a ``engine.Conversion``; raises ConversionError if any fails."""
  say = log or (lambda _msg: None)
  checks: List[Check] = []
  if _torch() is None:
    say("verify: torch is not installed: skipping the per-weight checks against torch.nn.functional")
  else:
    checks += kernel_checks(conv.entries)
  if npz_path is not None:  # runs the whole model too, so no separate smoke test is needed
    checks.append(npz_check(conv.module, conv.params, npz_path))
  else:
    checks.append(smoke_check(conv.module, conv.params, size))
    say("verify: no --verify-npz reference given: the model's outputs were not compared with PyTorch's")
  _report(checks, say)
  return checks


def verify_export(output_dir: str, conv, log: Optional[Callable[[str], None]] = print):
  """Re-reads the written export and checks it holds exactly the converted parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  from sparse_restore import checkpoint  # pylint: disable=g-import-not-at-top
  say = log or (lambda _msg: None)
  _, params, info = checkpoint.load_model(output_dir)
  flat_a = jax.tree_util.tree_leaves_with_path(conv.params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(params))
  bad = [jax.tree_util.keystr(p) for p, a in flat_a
         if p not in flat_b or not np.array_equal(np.asarray(flat_b[p]), a)]
  if bad or len(flat_b) != len(flat_a) or info["arch"] != conv.arch:
    raise ConversionError(f"{output_dir}: the written export does not read back as converted "
                          f"({len(bad)} differing arrays, e.g. {bad[:3]})")
  say(f"verify: export re-read: {len(flat_a)} arrays identical")
