"""Conversion rules for AST checkpoints (joshyZhou/AST ``model.py``) -> ``sparse_restore.models.ast.AST``.

Container: ``torch.save({'epoch', 'state_dict', 'optimizer'})``; the state dict of an ``nn.DataParallel``
model, so keys start with ``module.`` (stripped by the engine; also tolerated here).

Naming scheme (PyTorch key -> Flax path; ``S`` is ``encoderlayer_0..3``, ``conv`` or ``decoderlayer_0..3``):

  input_proj.proj.0.{weight,bias}        -> input_proj/{kernel,bias}          conv   [O,I,3,3] -> [3,3,I,O]
  output_proj.proj.0.{weight,bias}       -> output_proj/{kernel,bias}         conv
  dowsample_k.conv.0.{weight,bias}       -> dowsample_k/{kernel,bias}         conv (4x4, stride 2, pad 1)
  upsample_k.deconv.0.{weight,bias}      -> upsample_k/{kernel,bias}          [I,O,2,2] -> [2,2,I,O], spatial flip
  S.blocks.j.norm{1,2}.{weight,bias}     -> S/blocks_j/norm{1,2}/{scale,bias}  copy (LayerNorm eps 1e-5)
  S.blocks.j.attn.qkv.to_q.{weight,bias} -> S/blocks_j/attn/qkv/to_q/{kernel,bias}   Linear [out,in] -> [in,out]
  S.blocks.j.attn.qkv.to_kv.*            -> S/blocks_j/attn/qkv/to_kv/*
  S.blocks.j.attn.proj.*                 -> S/blocks_j/attn/proj/*
  S.blocks.j.attn.relative_position_bias_table -> same name, copy;  S.blocks.j.attn.w -> attn/w, copy
  S.blocks.j.attn.relative_position_index      -> dropped (buffer; recomputed by the model)
  S.blocks.j.mlp.linear{1,2}.0.*         -> S/blocks_j/mlp/linear{1,2}/*       Linear
  S.blocks.j.mlp.dwconv.0.*              -> S/blocks_j/mlp/dwconv/*            depthwise [C,1,3,3] -> [3,3,1,C]
  S.blocks.j.mlp.partial_conv3.weight    -> S/blocks_j/mlp/partial_conv3/kernel   conv, no bias (FRFN only)

The configuration (embed_dim, depths, num_heads, win_size, mlp_ratio, token_mlp, qkv_bias, img_size, dd_in,
in_chans) is read off the keys and shapes. ``img_size`` cannot be told apart between 128 and larger values
(same parameters); unless the bottleneck's bias table shows a clamped window (then ``img_size = 16 * that
window``), it is set to ``max(128, 16 * win_size)`` (= 128 for window 8), the authors' test-time graph.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping, Optional

import numpy as np

from sparse_restore.convert.rules import (ArchRules, ConversionError, FlaxPath, conv_kernel,
                                          conv_transpose_kernel, dense_kernel)

STAGES = ("encoderlayer_0", "encoderlayer_1", "encoderlayer_2", "encoderlayer_3", "conv",
          "decoderlayer_0", "decoderlayer_1", "decoderlayer_2", "decoderlayer_3")
_FACTORS = (1, 2, 4, 8, 16, 8, 4, 2, 1)
_DEFAULT_HEADS = (1, 2, 4, 8, 16, 16, 8, 4, 2)
_STAGE = "|".join(STAGES)

_TOP = re.compile(r"^(input_proj)\.proj\.0\.(weight|bias)$|^(output_proj)\.proj\.0\.(weight|bias)$"
                  r"|^(dowsample_[0-3])\.conv\.0\.(weight|bias)$|^(upsample_[0-3])\.deconv\.0\.(weight|bias)$")
_BLOCK = re.compile(rf"^({_STAGE})\.blocks\.(\d+)\.(.+)$")
_IN_BLOCK = {
    "norm1.weight": ("norm1", "scale"), "norm1.bias": ("norm1", "bias"),
    "norm2.weight": ("norm2", "scale"), "norm2.bias": ("norm2", "bias"),
    "attn.relative_position_bias_table": ("attn", "relative_position_bias_table"),
    "attn.w": ("attn", "w"),
    "attn.qkv.to_q.weight": ("attn", "qkv", "to_q", "kernel"), "attn.qkv.to_q.bias": ("attn", "qkv", "to_q", "bias"),
    "attn.qkv.to_kv.weight": ("attn", "qkv", "to_kv", "kernel"),
    "attn.qkv.to_kv.bias": ("attn", "qkv", "to_kv", "bias"),
    "attn.proj.weight": ("attn", "proj", "kernel"), "attn.proj.bias": ("attn", "proj", "bias"),
    "mlp.linear1.0.weight": ("mlp", "linear1", "kernel"), "mlp.linear1.0.bias": ("mlp", "linear1", "bias"),
    "mlp.linear2.0.weight": ("mlp", "linear2", "kernel"), "mlp.linear2.0.bias": ("mlp", "linear2", "bias"),
    "mlp.dwconv.0.weight": ("mlp", "dwconv", "kernel"), "mlp.dwconv.0.bias": ("mlp", "dwconv", "bias"),
    "mlp.partial_conv3.weight": ("mlp", "partial_conv3", "kernel"),
}
_DENSE_SUFFIXES = ("attn.qkv.to_q.weight", "attn.qkv.to_kv.weight", "attn.proj.weight", "mlp.linear1.0.weight",
                   "mlp.linear2.0.weight")


def _strip(key: str) -> str:
  return key[len("module."):] if key.startswith("module.") else key


def unwrap(obj: Any) -> Mapping[str, Any]:
  """The state dict inside an AST training checkpoint (``{'epoch', 'state_dict', 'optimizer'}``) or a bare one."""
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    return obj["state_dict"]
  if isinstance(obj, Mapping) and any(_strip(str(k)).startswith("input_proj.") for k in obj):
    return obj
  keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
  raise ConversionError(f"not an AST checkpoint: expected a dict with 'state_dict' (or a bare AST state dict), "
                        f"got {keys}")


def map_key(key: str) -> Optional[FlaxPath]:
  """Flax path of a PyTorch key; ``None`` for the recomputed ``relative_position_index`` buffers."""
  k = _strip(key)
  m = _TOP.match(k)
  if m:
    module, what = [g for g in m.groups() if g is not None]
    return (module, "kernel" if what == "weight" else "bias")
  m = _BLOCK.match(k)
  if m:
    stage, j, rest = m.groups()
    if rest == "attn.relative_position_index":
      return None
    if rest in _IN_BLOCK:
      return (stage, f"blocks_{int(j)}") + _IN_BLOCK[rest]
  raise KeyError(f"unexpected AST key {key!r}")


def convert_array(key: str, array: np.ndarray) -> np.ndarray:
  """PyTorch layout -> Flax layout (transposes; the transposed-conv kernels are also spatially flipped)."""
  k = _strip(key)
  a = np.asarray(array)
  if k.endswith(_DENSE_SUFFIXES):
    return dense_kernel(a)
  if k.endswith(".weight") and a.ndim == 4:
    return conv_transpose_kernel(a) if k.startswith("upsample_") else conv_kernel(a)
  return a


def _shape(state: Mapping[str, Any], key: str):
  if key not in state:
    raise ConversionError(f"AST checkpoint lacks {key!r}")
  return tuple(int(s) for s in np.shape(state[key]))


def _table_window(state, key: str) -> int:
  n = _shape(state, key)[0]
  side = math.isqrt(n)
  if side * side != n or side % 2 == 0:
    raise ConversionError(f"{key}: {n} rows is not (2*win - 1)^2")
  return (side + 1) // 2


def detect_config(state: Mapping[str, Any]) -> Dict[str, Any]:
  """AST constructor arguments read off a state dict (keys with or without ``module.``)."""
  state = {_strip(str(k)): v for k, v in state.items()}
  e, dd_in = _shape(state, "input_proj.proj.0.weight")[:2]
  in_chans = _shape(state, "output_proj.proj.0.weight")[0]
  depths, heads, windows = [], [], {}
  for k, stage in enumerate(STAGES):
    ids = {int(m.group(1)) for key in state for m in [re.match(rf"^{stage}\.blocks\.(\d+)\.", key)] if m}
    if ids != set(range(len(ids))):
      raise ConversionError(f"AST checkpoint: blocks of {stage} are not numbered 0..n-1: {sorted(ids)}")
    depths.append(len(ids))
    table = f"{stage}.blocks.0.attn.relative_position_bias_table"
    if k >= 4 and ids:
      heads.append(_shape(state, table)[1])
      windows[k] = max(_table_window(state, f"{stage}.blocks.{j}.attn.relative_position_bias_table")
                       for j in range(len(ids)))
    else:
      if k >= 4 or table in state:
        raise ConversionError(f"AST checkpoint: unexpected attention layout in {stage}")
      heads.append(_DEFAULT_HEADS[k])
  if not windows:
    raise ConversionError("AST checkpoint has no attention blocks (bottleneck and decoder are empty)")
  win = max(windows.values())
  bott = windows.get(4, win)
  img_size = 16 * bott if bott < win else max(128, 16 * win)
  for k, ws in windows.items():
    if ws != min(win, img_size // _FACTORS[k]):
      raise ConversionError(f"AST checkpoint: window {ws} of {STAGES[k]} is inconsistent with window {win} "
                            f"and img_size {img_size}")
  first = next(f"{s}.blocks.0." for s, d in zip(STAGES, depths) if d)
  dim0 = _shape(state, first + "norm2.weight")[0]
  token_mlp = "frfn" if (first + "mlp.partial_conv3.weight") in state else "leff"
  lin1 = _shape(state, first + "mlp.linear1.0.weight")[0]
  mlp_ratio = lin1 / (2 * dim0 if token_mlp == "frfn" else dim0)
  qkv_bias = any(k.endswith("attn.qkv.to_q.bias") for k in state)
  return dict(img_size=int(img_size), embed_dim=int(e), depths=depths, num_heads=heads, win_size=int(win),
              mlp_ratio=float(mlp_ratio), token_mlp=token_mlp, qkv_bias=bool(qkv_bias), dd_in=int(dd_in),
              in_chans=int(in_chans))


RULES = ArchRules(name="ast", detect_config=detect_config, map_key=map_key, convert_array=convert_array,
                  unwrap=unwrap)
