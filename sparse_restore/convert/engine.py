"""The conversion engine: a PyTorch state dict + an architecture's rule table -> checked Flax params -> an export.

Steps (:func:`convert_checkpoint`):

1. read the file without running code (``reader.read_checkpoint``);
2. take the state dict out of its container (the rules' ``unwrap``, else :func:`default_unwrap`: BasicSR
   ``{'params': sd}`` / ``{'params_ema': sd}``, AST ``{'state_dict': sd, 'epoch', 'optimizer'}``, a bare state dict)
   and drop a DataParallel ``module.`` prefix;
3. read the constructor arguments off the keys and shapes (``rules.detect_config``), build the Flax module and
   get the shapes of a freshly initialised parameter tree (``jax.eval_shape``, nothing allocated);
4. rename every PyTorch entry (``rules.map_key``; ``None`` = a buffer we recompute), convert its layout
   (``rules.convert_array``) and compare it with the expected tree. Unknown keys, parameters the checkpoint does
   not provide, two keys for one parameter, and shape mismatches are *all* collected and reported in one
   :class:`ConversionError`;
5. only if nothing is wrong (and ``--verify`` passes), write the export atomically with ``checkpoint.save_model``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from sparse_restore.convert import reader
from sparse_restore.convert.rules import ArchRules, ConversionError, FlaxPath

ARCHES = ("drsformer", "ast")
# A key that only one architecture's checkpoints have (after removing ``module.``): used to guess --arch.
ARCH_SIGNATURES = {"drsformer": "patch_embed.proj.weight", "ast": "input_proj.proj.0.weight"}
# Container keys holding the state dict, in order of preference (BasicSR test scripts load 'params').
CONTAINER_KEYS = ("params", "params_ema", "state_dict", "model", "net")
PREFIX = "module."


@dataclasses.dataclass
class Entry:
  """One converted tensor: where it came from and where it went."""
  torch_key: str
  torch_array: np.ndarray
  flax_path: FlaxPath
  flax_array: np.ndarray


@dataclasses.dataclass
class Conversion:
  """The result of :func:`convert_state`: everything the export and ``--verify`` need."""
  arch: str
  config: Dict[str, Any]
  params: Dict[str, Any]          # nested dict of float32 numpy arrays, the Flax ``params`` tree
  entries: List[Entry]            # one per converted tensor
  dropped: List[str]              # PyTorch entries intentionally not converted (recomputed buffers)
  module: Any = None              # the Flax module built from ``config``

  @property
  def num_params(self) -> int:
    return int(sum(e.flax_array.size for e in self.entries))


def get_rules(arch: str) -> ArchRules:
  """The rule table ``RULES`` of ``sparse_restore.convert.<arch>`` (imported on demand)."""
  if arch not in ARCHES:
    raise ConversionError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")
  try:
    module = importlib.import_module(f"sparse_restore.convert.{arch}")
  except ImportError as e:
    raise ConversionError(f"no conversion rules for {arch!r} ({e})") from None
  return module.RULES


def _is_state_dict(obj: Any) -> bool:
  return isinstance(obj, Mapping) and bool(obj) and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def default_unwrap(obj: Any, key: Optional[str] = None) -> Mapping[str, Any]:
  """The state dict inside a loaded checkpoint: ``obj[key]`` if ``key`` is given, else the first of
  :data:`CONTAINER_KEYS` that holds a dict, else ``obj`` itself when it is a bare ``{name: tensor}`` dict."""
  if not isinstance(obj, Mapping):
    raise ConversionError(f"the checkpoint holds a {type(obj).__name__}, not a dict of tensors")
  if key is not None:
    if not isinstance(obj.get(key), Mapping):
      raise ConversionError(f"the checkpoint has no dict under {key!r}; its top-level keys are "
                            f"{_key_list(obj)}")
    return obj[key]
  if _is_state_dict(obj):
    return obj
  for name in CONTAINER_KEYS:
    if isinstance(obj.get(name), Mapping):
      return obj[name]
  if obj and all(isinstance(v, np.ndarray) for v in obj.values()):
    return obj
  raise ConversionError(f"cannot find the state dict: top-level keys are {_key_list(obj)} (expected a bare "
                        f"state dict or one of {', '.join(repr(k) for k in CONTAINER_KEYS)}; pick one with --key)")


def _key_list(obj: Mapping) -> str:
  keys = [reader.describe(k) for k in list(obj)[:12]]
  return "[" + ", ".join(keys) + (", ..." if len(obj) > 12 else "") + "]"


def strip_prefix(state: Mapping[str, Any], prefix: str = PREFIX) -> Dict[str, Any]:
  """Removes ``prefix`` (nn.DataParallel's ``module.``) when every key carries it."""
  keys = list(state)
  if keys and all(isinstance(k, str) and k.startswith(prefix) for k in keys):
    return {k[len(prefix):]: v for k, v in state.items()}
  return dict(state)


def guess_arch(state: Mapping[str, Any]) -> Optional[str]:
  """The architecture whose signature key is in ``state`` (``None`` if none or several match)."""
  found = [arch for arch, key in ARCH_SIGNATURES.items() if key in state]
  return found[0] if len(found) == 1 else None


def extract_state_dict(obj: Any, rules: Optional[ArchRules] = None, key: Optional[str] = None) -> Dict[str, Any]:
  """The flat ``{torch_name: array}`` state dict of a loaded checkpoint, ``module.`` prefix removed."""
  if rules is not None and rules.unwrap is not None and key is None:
    try:
      state = rules.unwrap(obj)
    except ConversionError as e:  # e.g. an AST state dict saved in a BasicSR-style {'params': ...}
      try:
        state = default_unwrap(obj)
      except ConversionError:
        raise e from None
  else:
    state = default_unwrap(obj, key)
  if not isinstance(state, Mapping):
    raise ConversionError(f"the state dict is a {type(state).__name__}, not a dict")
  return strip_prefix(state)


def _shape(a) -> Tuple[int, ...]:
  return tuple(int(d) for d in np.shape(a))


def _fmt_path(path: FlaxPath) -> str:
  return "/".join(path)


def _fmt_config(arch: str, config: Mapping[str, Any]) -> str:
  return f"{arch}(" + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ")"


_EXPECTED: Dict[Any, Dict[FlaxPath, Any]] = {}


def _expected_shapes(module) -> Dict[FlaxPath, Any]:
  """Flat ``{flax_path: ShapeDtypeStruct}`` of a fresh init (traced once per module configuration)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from sparse_restore import models  # pylint: disable=g-import-not-at-top
  if module not in _EXPECTED:
    abstract = models.abstract_params(module)
    _EXPECTED[module] = {tuple(p): v for p, v in traverse_util.flatten_dict(dict(abstract)).items()}
  return _EXPECTED[module]


def convert_state(state: Mapping[str, Any], arch: str, *, source: str = "checkpoint") -> Conversion:
  """Converts a flat PyTorch state dict to Flax params for ``arch``, checking every entry (see module doc)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from sparse_restore import models  # pylint: disable=g-import-not-at-top
  rules = get_rules(arch)
  try:
    config = dict(rules.detect_config(state))
  except ConversionError as e:
    raise ConversionError(f"{source}: cannot read the {arch} configuration: {e}") from None
  except (KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
    raise ConversionError(f"{source}: cannot read the {arch} configuration ({type(e).__name__}: {e}); "
                          f"is this a {arch} checkpoint?") from None
  try:
    module = models.create(arch, **config)
    expected = _expected_shapes(module)
  except Exception as e:  # A config the model rejects: report it, not a JAX traceback.
    raise ConversionError(f"{source}: the detected configuration {_fmt_config(arch, config)} does not build: "
                          f"{type(e).__name__}: {e}") from None

  problems: List[str] = []
  entries: List[Entry] = []
  dropped: List[str] = []
  owner: Dict[FlaxPath, str] = {}
  for key, value in state.items():
    if not isinstance(key, str):
      problems.append(f"unexpected: key {reader.describe(key)} is not a string")
      continue
    if not isinstance(value, np.ndarray):
      problems.append(f"unexpected: {reader.describe(key)} holds a {type(value).__name__}, not a tensor")
      continue
    try:
      path = rules.map_key(key)
    except KeyError:
      problems.append(f"unexpected: PyTorch entry {key} {list(value.shape)} is not part of {arch}")
      continue
    if path is None:
      dropped.append(key)
      continue
    path = tuple(path)
    if path not in expected:
      problems.append(f"unexpected: PyTorch entry {key} {list(value.shape)} maps to {_fmt_path(path)}, which "
                      f"{arch} with this configuration does not have")
      continue
    if path in owner:
      problems.append(f"duplicate: PyTorch entries {owner[path]} and {key} both map to {_fmt_path(path)}")
      continue
    owner[path] = key
    want = expected[path]
    try:
      converted = np.asarray(rules.convert_array(key, value))
    except (ConversionError, ValueError) as e:
      problems.append(f"shape: PyTorch {key} {list(value.shape)} cannot become Flax {_fmt_path(path)} "
                      f"{list(want.shape)}: {e}")
      continue
    if _shape(converted) != _shape(want):
      problems.append(f"shape: PyTorch {key} {list(value.shape)} -> Flax {_fmt_path(path)} "
                      f"{list(converted.shape)}, but the model expects {list(want.shape)}")
      continue
    if not reader.is_floating(converted) and np.issubdtype(want.dtype, np.floating):
      problems.append(f"dtype: PyTorch {key} is {converted.dtype}, Flax {_fmt_path(path)} needs floats")
      continue
    converted = np.ascontiguousarray(reader.to_float32(converted).astype(want.dtype, copy=False))
    entries.append(Entry(key, value, path, converted))
  for path, want in expected.items():
    if path not in owner:
      problems.append(f"missing: Flax parameter {_fmt_path(path)} {list(want.shape)} has no PyTorch entry")
  if problems:
    raise ConversionError(
        f"{source}: does not match {_fmt_config(arch, config)}; {len(problems)} problem(s), nothing was "
        "written:\n  " + "\n  ".join(problems))
  params = traverse_util.unflatten_dict({e.flax_path: e.flax_array for e in entries})
  return Conversion(arch=arch, config=config, params=params, entries=entries, dropped=dropped, module=module)


def convert_state_dict(state: Mapping[str, Any], arch: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """``(config, params)`` for a flat PyTorch state dict (``module.`` prefix allowed); see :func:`convert_state`."""
  conv = convert_state(strip_prefix(state), arch, source="state dict")
  return conv.config, conv.params


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def convert_checkpoint(input_path, output_dir, arch: Optional[str] = None, *, overwrite: bool = False,
                       verify: bool = False, verify_npz=None, verify_size: int = 64, key: Optional[str] = None,
                       max_tensor_bytes: int = reader.DEFAULT_MAX_BYTES,
                       log: Optional[Callable[[str], None]] = print) -> Conversion:
  """Converts a PyTorch ``.pth``/``.pt``/``.safetensors`` checkpoint to an exported model in ``output_dir``.

  Args:
    input_path: the checkpoint file (never executed; see ``reader``).
    output_dir: export directory (``checkpoint.load_model`` reads it). Written atomically, only on success;
      checked before the input is read (a parent that is a file or cannot be written to is an error at once).
    arch: ``"drsformer"`` or ``"ast"``; ``None`` guesses it from the keys.
    overwrite: replace an existing non-empty ``output_dir``.
    verify: run the checks of :mod:`sparse_restore.convert.verify` before writing and re-read the export after.
    verify_npz: reference ``input``/``output`` (NCHW) to compare the converted model with (implies ``verify``).
    verify_size: side of the random image for the forward smoke test of ``verify``.
    key: container entry holding the state dict (e.g. ``"params_ema"``); default: see ``default_unwrap``.
    max_tensor_bytes: refuse files whose tensors would take more memory than this (``reader.read_checkpoint``).
    log: where the summary lines go (``None``: silent).

  Returns the :class:`Conversion` (config, params, per-tensor entries). Raises :class:`ConversionError`.
  """
  from sparse_restore import checkpoint  # pylint: disable=g-import-not-at-top
  say = log or (lambda _msg: None)
  input_path = os.fspath(input_path)
  try:
    output_dir = checkpoint.check_output_dir(os.fspath(output_dir), overwrite=overwrite)
  except checkpoint.CheckpointError as e:
    raise ConversionError(str(e)) from None
  obj = reader.read_checkpoint(input_path, max_bytes=max_tensor_bytes)
  fmt = reader.detect_format(input_path)
  try:
    if arch is None:
      arch = guess_arch(extract_state_dict(obj, key=key))
      if arch is None:
        raise ConversionError(f"cannot tell the architecture from the keys (none or several of "
                              f"{', '.join(ARCH_SIGNATURES.values())} present); pass --arch "
                              f"{'|'.join(ARCHES)}")
    rules = get_rules(arch)
    state = extract_state_dict(obj, rules, key)
    looks_like = guess_arch(state)
    if looks_like not in (None, arch):
      raise ConversionError(f"this is a {looks_like} checkpoint (it has {ARCH_SIGNATURES[looks_like]}), not "
                            f"{arch}; use --arch {looks_like} or leave --arch out")
  except ConversionError as e:
    raise ConversionError(f"{input_path}: {e}") from None
  conv = convert_state(state, arch, source=input_path)
  say(f"read {input_path} ({fmt}): {len(state)} entries -> {arch}")
  say(f"config: {_fmt_config(arch, conv.config)}")
  say(f"converted {len(conv.entries)} tensors ({conv.num_params:,} parameters); dropped {len(conv.dropped)} "
      "recomputed buffers" + (f" ({', '.join(conv.dropped[:3])}{', ...' if len(conv.dropped) > 3 else ''})"
                              if conv.dropped else ""))
  if verify or verify_npz is not None:
    from sparse_restore.convert import verify as verify_lib  # pylint: disable=g-import-not-at-top
    try:
      verify_lib.verify_conversion(conv, npz_path=verify_npz, size=verify_size, log=say)
    except ConversionError as e:
      raise ConversionError(f"{input_path}: {e}") from None

  try:
    checkpoint.save_model(output_dir, arch, conv.config, conv.params, overwrite=overwrite,
                          source=os.path.basename(input_path), source_sha256=_sha256(input_path),
                          source_format=fmt, converted_from="pytorch")
  except checkpoint.CheckpointError as e:
    raise ConversionError(str(e)) from None
  if verify or verify_npz is not None:
    verify_lib.verify_export(output_dir, conv, log=say)
  say(f"wrote {output_dir}")
  return conv
