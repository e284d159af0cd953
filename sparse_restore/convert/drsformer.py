"""Conversion rules: PyTorch DRSformer checkpoints (cschenxiang/DRSformer, BasicSR layout) -> our Flax params.

Naming scheme (the Flax tree mirrors the PyTorch module tree):

* The key is split at ``.``; a numeric part (an ``nn.Sequential`` / ``nn.ModuleList`` index) is joined to the
  part before it with ``_``: ``encoder_level1.0.attn.qkv_dwconv.weight`` ->
  ``('encoder_level1_0', 'attn', 'qkv_dwconv', 'kernel')``, ``down1_2.body.0.weight`` ->
  ``('down1_2', 'body_0', 'kernel')``, ``encoder_level0.layers.1._ops.2._ops.4.op.1.weight`` ->
  ``('encoder_level0', 'layers_1', '_ops_2', '_ops_4', 'op_1', 'kernel')``.
* LayerNorms drop the reference's ``body`` wrapper and call the weight ``scale``:
  ``norm1.body.weight`` -> ``('norm1', 'scale')``, ``norm1.body.bias`` -> ``('norm1', 'bias')``.
* Conv / Linear ``weight`` -> ``kernel`` (transposed to Flax layout), ``bias`` -> ``bias``;
  ``temperature`` and ``attn1..attn4`` keep their names and shapes.

Usage (the conversion engine drives this)::

    from sparse_restore.convert.drsformer import RULES
    state = RULES.unwrap(loaded_checkpoint)          # {'params': sd} / {'params_ema': sd} / bare sd
    config = RULES.detect_config(state)              # kwargs for models.create("drsformer", **config)
    path = RULES.map_key(torch_key)                  # tuple of Flax names
    value = RULES.convert_array(torch_key, array)    # numpy array in Flax layout
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from sparse_restore.convert.rules import ArchRules, ConversionError, FlaxPath, conv_kernel, dense_kernel
from sparse_restore.models.mefc import MEFC_STEPS, OPERATIONS
from sparse_restore.models.tksa import DEFAULT_TOPK_RATIOS

TOP_LEVEL = (
    "patch_embed", "encoder_level0", "encoder_level1", "down1_2", "encoder_level2", "down2_3", "encoder_level3",
    "down3_4", "latent", "up4_3", "reduce_chan_level3", "decoder_level3", "up3_2", "reduce_chan_level2",
    "decoder_level2", "up2_1", "decoder_level1", "refinement", "output")
LEVELS = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
_SCALARS = re.compile(r"^(temperature|attn\d+)$")
DEFAULT_FFN_FACTOR = 2.66


def map_key(key: str) -> Optional[FlaxPath]:
  """Flax parameter path of a PyTorch DRSformer key (``KeyError`` for keys that are not DRSformer's)."""
  path: List[str] = []
  for part in key.split("."):
    if part.isdigit():
      if not path:
        raise KeyError(key)
      path[-1] = f"{path[-1]}_{part}"
    elif part:
      path.append(part)
    else:
      raise KeyError(key)
  if len(path) < 2 or key.split(".")[0] not in TOP_LEVEL:
    raise KeyError(key)
  leaf = path[-1]
  if len(path) >= 3 and path[-2] == "body" and re.fullmatch(r"norm\d", path[-3]):
    if leaf not in ("weight", "bias"):
      raise KeyError(key)
    return tuple(path[:-2]) + ("scale" if leaf == "weight" else "bias",)
  if leaf == "weight":
    return tuple(path[:-1]) + ("kernel",)
  if leaf == "bias" or _SCALARS.match(leaf):
    return tuple(path)
  raise KeyError(key)


def convert_array(key: str, array: np.ndarray) -> np.ndarray:
  """The array of ``key`` in Flax layout: conv weights HWIO, Linear weights [in, out], the rest unchanged."""
  array = np.asarray(array)
  if key.endswith(".weight"):
    if array.ndim == 4:
      return conv_kernel(array)
    if array.ndim == 2:
      return dense_kernel(array)
    if array.ndim != 1:  # LayerNorm weights are 1-d and stay as they are.
      raise ConversionError(f"{key}: unexpected weight shape {tuple(array.shape)}")
  return np.ascontiguousarray(array)


def unwrap(obj: Any) -> Mapping[str, Any]:
  """The state dict inside a checkpoint: BasicSR ``{'params': sd}`` (preferred, as the reference test script
  loads it), ``{'params_ema': sd}``, ``{'state_dict': sd}`` or a bare state dict; a DataParallel ``module.``
  prefix is removed."""
  if not isinstance(obj, Mapping):
    raise ConversionError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
  state = obj
  for container in ("params", "params_ema", "state_dict"):
    if isinstance(obj.get(container), Mapping):
      state = obj[container]
      break
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def _shape(state: Mapping[str, Any], key: str) -> Tuple[int, ...]:
  if key not in state:
    raise ConversionError(f"not a DRSformer checkpoint: missing {key!r}")
  return tuple(int(d) for d in np.shape(state[key]))


def _count(state: Mapping[str, Any], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
  indices = {int(m.group(1)) for k in state for m in [pattern.match(k)] if m}
  if indices != set(range(len(indices))):
    raise ConversionError(f"{prefix}: block indices {sorted(indices)} are not 0..n-1")
  return len(indices)


def detect_ffn_factor(widths: List[Tuple[int, int]]) -> float:
  """An expansion factor f with ``int(dim * f) == hidden`` for every (dim, hidden) pair: 2.66 if it fits,
  else the smallest fitting multiple of 0.01 (then 0.001)."""
  def fits(f):
    return all(int(d * f) == h for d, h in widths)
  if fits(DEFAULT_FFN_FACTOR):
    return DEFAULT_FFN_FACTOR
  for scale in (100, 1000):
    for n in range(1, 64 * scale):
      f = round(n / scale, 3)
      if fits(f):
        return f
  raise ConversionError(f"no FFN expansion factor reproduces the hidden widths (dim, hidden) = {widths}")


def _ffn_type(state: Mapping[str, Any], prefix: str) -> Tuple[str, int]:
  """(ffn_type, hidden width) of the FFN under ``prefix`` (e.g. ``encoder_level1.0.ffn``)."""
  out = _shape(state, f"{prefix}.project_in.weight")[0]
  if f"{prefix}.dwconv3x3.weight" in state:
    return "msfn", out // 2
  if f"{prefix}.dwconv.weight" in state:
    dw = _shape(state, f"{prefix}.dwconv.weight")[0]
    return ("gdfn", out // 2) if _shape(state, f"{prefix}.project_out.weight")[1] * 2 == dw else ("dfn", out)
  return "fn", out


def _mefc_experts(state: Mapping[str, Any], prefix: str, channels: int):
  """Expert setting of the MEFC under ``prefix``: an int n if they are the first n reference operations."""
  n = _shape(state, f"{prefix}.layers.1._ops.0._out.0.weight")[1] // channels
  if _shape(state, f"{prefix}.layers.0.ca_fc.2.weight")[0] != MEFC_STEPS * n:
    raise ConversionError(f"{prefix}: MEFC with other than {MEFC_STEPS} steps is not supported")
  names = []
  for j in range(n):
    op = f"{prefix}.layers.1._ops.0._ops.{j}.op"
    if f"{op}.3.weight" in state:
      names.append(f"sep_conv_{_shape(state, op + '.0.weight')[-1]}x{_shape(state, op + '.0.weight')[-1]}")
    elif f"{op}.0.weight" in state:
      names.append(f"dil_conv_{_shape(state, op + '.0.weight')[-1]}x{_shape(state, op + '.0.weight')[-1]}")
    else:
      names.append("avg_pool_3x3")
  if tuple(names) == OPERATIONS[:n]:
    return n
  return tuple(names)


def detect_config(state: Mapping[str, Any]) -> Dict[str, Any]:
  """Constructor arguments of ``models.create("drsformer", ...)`` read off the checkpoint's keys and shapes."""
  dim, in_channels = _shape(state, "patch_embed.proj.weight")[:2]
  out_channels = _shape(state, "output.weight")[0]
  num_blocks = tuple(_count(state, level) for level in LEVELS)
  for level, dec in (("encoder_level1", "decoder_level1"), ("encoder_level2", "decoder_level2"),
                     ("encoder_level3", "decoder_level3")):
    if _count(state, dec) != _count(state, level):
      raise ConversionError(f"{dec} has {_count(state, dec)} blocks but {level} has {_count(state, level)}")
  if min(num_blocks) < 1:
    raise ConversionError(f"every level needs at least one block, found {num_blocks}")
  heads = tuple(_shape(state, f"{level}.0.attn.temperature")[0] for level in LEVELS)
  bias = "output.bias" in state
  layernorm_type = "WithBias" if "encoder_level1.0.norm1.body.bias" in state else "BiasFree"

  ffn_type, _ = _ffn_type(state, "encoder_level1.0.ffn")
  widths = []
  for level, mult in zip(LEVELS + ("decoder_level1",), (1, 2, 4, 8, 2)):
    kind, hidden = _ffn_type(state, f"{level}.0.ffn")
    if kind != ffn_type:
      raise ConversionError(f"{level}.0.ffn is {kind} but encoder_level1.0.ffn is {ffn_type}")
    widths.append((dim * mult, hidden))

  n_weights = len([k for k in state if re.fullmatch(r"encoder_level1\.0\.attn\.attn\d+", k)])
  if n_weights == 0:
    topk_ratios = ()
  elif n_weights == len(DEFAULT_TOPK_RATIOS):
    topk_ratios = DEFAULT_TOPK_RATIOS
  else:
    raise ConversionError(f"encoder_level1.0.attn has {n_weights} top-k weights; the ratios of a variant other "
                          f"than {len(DEFAULT_TOPK_RATIOS)} cannot be read from a checkpoint")

  has_enc0 = "encoder_level0.layers.0.ca_fc.0.weight" in state
  has_ref = "refinement.layers.0.ca_fc.0.weight" in state
  if has_enc0 != has_ref:
    raise ConversionError("MEFC present in only one of encoder_level0 / refinement; not a DRSformer variant")
  config: Dict[str, Any] = dict(
      dim=dim, num_blocks=num_blocks, heads=heads, ffn_expansion_factor=detect_ffn_factor(widths), bias=bias,
      layernorm_type=layernorm_type, use_mefc=has_enc0, topk_ratios=topk_ratios, ffn_type=ffn_type,
      in_channels=in_channels, out_channels=out_channels)
  if has_enc0:
    experts = _mefc_experts(state, "encoder_level0", dim)
    if _mefc_experts(state, "refinement", 2 * dim) != experts:
      raise ConversionError("encoder_level0 and refinement MEFCs use different experts")
    config["mefc_experts"] = experts
  return config


RULES = ArchRules(name="drsformer", detect_config=detect_config, map_key=map_key, convert_array=convert_array,
                  unwrap=unwrap)
