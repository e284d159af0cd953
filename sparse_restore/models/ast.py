"""AST: Adaptive Sparse Transformer (Zhou, Chen, Pan, Shi, Yang, "Adapt or Perish", CVPR 2024) in Flax.

A Uformer-style U-Net on NHWC images (B, H, W, C) in [0, 1]; H and W are passed explicitly everywhere, so
non-square images work. Layout (E = ``embed_dim``; stage k of the encoder works at 1/2^k resolution):

  input_proj (3x3 conv + LeakyReLU 0.01)
  encoderlayer_0..3  attention-free blocks ``x + FRFN(LN2(x))``, each followed by
  dowsample_0..3     4x4 conv, stride 2, explicit padding 1 (C -> 2C)   [sic: the reference's spelling]
  conv               bottleneck: ASSA blocks (window attention + FRFN) at 1/16 resolution
  upsample_0..3      2x2 transposed conv, stride 2, then concatenation [upsampled, skip] on channels
  decoderlayer_0..3  ASSA blocks
  output_proj        3x3 conv; global residual ``x + y`` (when ``dd_in == 3``)

ASSA blocks: ``x + ASSA(LN1(x))`` on (shifted) windows, then ``x + FRFN(LN2(x))``; block i of a stage is shifted
by ``win_size // 2`` when i is odd. Window size / shift are fixed from the construction-time ``img_size``
exactly as in the reference (``TransformerBlock.__init__``): a stage whose resolution ``img_size // factor``
is <= ``win_size`` uses that resolution as its window and no shift. With the authors' test-time
``img_size=128`` (the default) the bottleneck is therefore *unshifted* (window 8); ``img_size=256`` shifts the
second bottleneck block. The runtime input size does not change this graph; shift masks are computed from the
actual (padded) H, W of each call.

Input sizes (padding rule). The reference runs only square images whose side is a multiple of 128 (every ASSA
stage's resolution must be divisible by its window). This module accepts any H x W: it pads the input at the
bottom and right to multiples of ``pad_multiple`` (128 for every released configuration: the lcm of 16 and
``factor * window`` over the ASSA stages), each side independently (no squaring), runs the network, and crops
the output back to H x W. ``pad_mode="reflect"`` (default) mirrors the image (``layers.pad_to_multiple``,
falling back to symmetric padding when the pad is not smaller than the side), so there is no artificial edge
next to real pixels; ``pad_mode="constant"`` pads with zeros. Inputs whose sides are already multiples of
``pad_multiple`` are not padded, so on every input the reference accepts the result is the reference's. Note
the authors' SPA-Data test script instead zero-pads *centred* to a square (``expand2square``, factor 128); to
reproduce that protocol exactly, do that padding before calling the model (the internal padding is then a
no-op). Because the model pads internally, ``size_multiple = 1``.

How it runs (dtype, depthwise-conv implementation, chunked ``lax.map`` paths of FRFN rows and ASSA windows that
bound the working set on CPU) is the ``policy`` field (``models/policy.py``); results do not depend on it.

Flax parameter names mirror the PyTorch state_dict (see ``sparse_restore/convert/ast.py``):
``encoderlayer_0/blocks_0/mlp/linear1/kernel``, ``decoderlayer_1/blocks_3/attn/qkv/to_kv/bias``,
``conv/blocks_1/attn/relative_position_bias_table``, ``dowsample_2/kernel``, ``upsample_0/kernel``, ...
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparse_restore import models
from sparse_restore.models.assa import ASSA, shift_region_ids, window_partition, window_reverse
from sparse_restore.models.frfn import FRFN, LeFF
from sparse_restore.models.layers import ChannelLayerNorm, Conv2d, crop_to, pad_to_multiple
from sparse_restore.models.policy import Policy


STAGE_NAMES = ("encoderlayer_0", "encoderlayer_1", "encoderlayer_2", "encoderlayer_3", "conv",
               "decoderlayer_0", "decoderlayer_1", "decoderlayer_2", "decoderlayer_3")
STAGE_FACTORS = (1, 2, 4, 8, 16, 8, 4, 2, 1)          # downsampling factor of each stage's grid
STAGE_DIM_MULT = (1, 2, 4, 8, 16, 16, 8, 4, 2)        # channels = embed_dim * mult
DEFAULT_HEADS = (1, 2, 4, 8, 16, 16, 8, 4, 2)
TOKEN_MLPS = ("frfn", "leff")
PAD_MODES = ("reflect", "constant")

PRESETS: Dict[str, Dict[str, Any]] = {
    # utils/model_utils.get_arch with --token_mlp frfn (all released models) and --train_ps 128 (test scripts).
    "AST_B": dict(img_size=128, embed_dim=32, depths=(1, 2, 8, 8, 2, 8, 8, 2, 1), num_heads=DEFAULT_HEADS,
                  win_size=8, mlp_ratio=4.0, token_mlp="frfn"),
    "AST_T": dict(img_size=128, embed_dim=16, depths=(2,) * 9, num_heads=DEFAULT_HEADS,
                  win_size=8, mlp_ratio=4.0, token_mlp="frfn"),
}


def block_windows(img_size: int, factor: int, win_size: int, depth: int) -> Tuple[Tuple[int, int], ...]:
  """(window, shift) of each block of a stage, clamped from the construction-time resolution as the reference."""
  res = img_size // factor
  out = []
  for i in range(depth):
    ws, shift = win_size, (0 if i % 2 == 0 else win_size // 2)
    if res <= ws:
      ws, shift = res, 0
    if not 0 <= shift < ws:
      raise ValueError(f"AST: img_size={img_size} gives a {res}x{res} grid at 1/{factor} resolution: "
                       f"window {ws}, shift {shift} is invalid (img_size must be >= 16)")
    out.append((ws, shift))
  return tuple(out)


def drop_path_rates(depths: Sequence[int], rate: float) -> List[Tuple[float, ...]]:
  """Per-stage stochastic-depth rates of the reference: linspace(0, rate) over the encoder blocks, ``rate`` in
  the bottleneck, the encoder list reversed for the decoder (missing entries, if the decoder is deeper, get 0)."""
  enc = [float(v) for v in np.linspace(0.0, rate, sum(depths[:4]))]
  dec = enc[::-1]
  out = []
  for k in range(4):
    out.append(tuple(enc[sum(depths[:k]):sum(depths[:k + 1])]))
  out.append((float(rate),) * depths[4])
  for k in range(4):
    part = dec[sum(depths[5:5 + k]):sum(depths[5:6 + k])]
    out.append(tuple(part) + (0.0,) * (depths[5 + k] - len(part)))
  return out


class Upsample(nn.Module):
  """``ConvTranspose2d(kernel 2, stride 2)`` as one matrix product (non-overlapping 2x2 outputs).

  The kernel ``[2, 2, in, out]`` uses the layout of ``flax.linen.ConvTranspose(transpose_kernel=False)``
  (PyTorch's weight spatially flipped), so the two are interchangeable.
  """
  features: int
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    kernel = self.param("kernel", nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                        (2, 2, c, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.policy.compute_dtype)
    # Output pixel (2i + a, 2j + b) = x[i, j] @ kernel[1 - a, 1 - b].
    y = jnp.einsum("nhwc,pqco->nhpwqo", x, kernel[::-1, ::-1])
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias


class TransformerBlock(nn.Module):
  """One AST block: optional ``x + DropPath(ASSA(LN1(x)))`` on (shifted) windows, then
  ``x + DropPath(FFN(LN2(x)))``. Encoder blocks have ``att=False`` (no norm1/attn)."""
  dim: int
  num_heads: int
  win_size: int
  shift_size: int = 0
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  token_mlp: str = "frfn"
  att: bool = True
  drop_path: float = 0.0
  policy: Policy = Policy()

  def _drop_path(self, x, train: bool):
    if not train or self.drop_path <= 0.0:
      return x
    keep = 1.0 - self.drop_path
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))

  @nn.compact
  def __call__(self, x, train: bool = False):
    _, h, w, c = x.shape
    if self.att:
      ws, s = self.win_size, self.shift_size
      if h % ws or w % ws:
        raise ValueError(f"AST block: a {h}x{w} grid is not divisible by the window {ws}")
      y = ChannelLayerNorm(epsilon=1e-5, dtype=self.policy.compute_dtype, name="norm1")(x)
      if s:
        y = jnp.roll(y, (-s, -s), axis=(1, 2))
      ids = shift_region_ids(h, w, ws, s) if s else None  # (nW, N) constant; the mask is built from it
      y = ASSA(c, self.num_heads, ws, self.qkv_bias, self.policy, name="attn")(
          window_partition(y, ws), ids)
      y = window_reverse(y, ws, h, w)
      if s:
        y = jnp.roll(y, (s, s), axis=(1, 2))
      x = x + self._drop_path(y, train)
    hidden = int(c * self.mlp_ratio)
    y = ChannelLayerNorm(epsilon=1e-5, dtype=self.policy.compute_dtype, name="norm2")(x)
    if self.token_mlp == "frfn":
      y = FRFN(c, hidden, self.policy, name="mlp")(y)
    else:
      y = LeFF(c, hidden, self.policy, name="mlp")(y)
    return x + self._drop_path(y, train)


class BasicASTLayer(nn.Module):
  """A stage: ``blocks_0 .. blocks_{depth-1}`` with per-block (window, shift) and drop-path rates."""
  dim: int
  num_heads: int
  windows: Tuple[Tuple[int, int], ...]
  drop_paths: Tuple[float, ...]
  att: bool
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  token_mlp: str = "frfn"
  policy: Policy = Policy()
  remat: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    block_cls = nn.remat(TransformerBlock, static_argnums=(2,)) if self.remat else TransformerBlock
    for i, ((ws, shift), dp) in enumerate(zip(self.windows, self.drop_paths)):
      x = block_cls(self.dim, self.num_heads, ws, shift, self.mlp_ratio, self.qkv_bias, self.token_mlp,
                    self.att, dp, self.policy, name=f"blocks_{i}")(x, train)
    return x


@models.register("ast")
class AST(nn.Module):
  """Adaptive Sparse Transformer (see the module docstring for the architecture and the padding rule).

  Attributes:
    img_size: construction-time image size of the reference (its ``--train_ps``); decides window clamping and
      shifts (128 = the authors' test-time graph). It does not limit the runtime input size.
    embed_dim: channels E of the first stage.
    depths: blocks of the 9 stages (4 encoder, bottleneck, 4 decoder).
    num_heads: heads of the 9 stages (the encoder entries are unused: encoder blocks have no attention).
    win_size: attention window side.
    mlp_ratio: FFN hidden width / channels.
    token_mlp: ``"frfn"`` (AST) or ``"leff"`` (the reference constructor's default).
    qkv_bias: biases in the q / kv projections.
    drop_path_rate: stochastic depth (training only; needs a ``'dropout'`` rng when > 0 and ``train=True``).
    in_chans: output channels; dd_in: input channels (global residual only when ``dd_in == 3``).
    pad_mode: ``"reflect"`` or ``"constant"`` (zeros) padding up to ``pad_multiple``.
    policy: how the network runs on the target device (``models/policy.py``: compute dtype, depthwise-conv
      implementation, chunked paths); params stay float32 and the attention scores are float32.
    remat: rematerialise every block in the backward pass (``nn.remat``) to save memory.
  """
  img_size: int = 128
  embed_dim: int = 32
  depths: Sequence[int] = (2,) * 9
  num_heads: Sequence[int] = DEFAULT_HEADS
  win_size: int = 8
  mlp_ratio: float = 4.0
  token_mlp: str = "frfn"
  qkv_bias: bool = True
  drop_path_rate: float = 0.1
  in_chans: int = 3
  dd_in: int = 3
  pad_mode: str = "reflect"
  policy: Policy = Policy()
  remat: bool = False

  size_multiple = 1  # any H x W is accepted: the model pads internally to `pad_multiple` and crops back.

  def __post_init__(self):
    # Configs read from JSON give lists; keep fields hashable.
    object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
    object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
    if len(self.depths) != 9 or len(self.num_heads) != 9:
      raise ValueError(f"AST: depths and num_heads need 9 entries, got {self.depths} and {self.num_heads}")
    if self.token_mlp not in TOKEN_MLPS:
      raise ValueError(f"AST: token_mlp must be one of {TOKEN_MLPS}, got {self.token_mlp!r}")
    if self.pad_mode not in PAD_MODES:
      raise ValueError(f"AST: pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
    super().__post_init__()

  @classmethod
  def from_preset(cls, name: str, **overrides) -> "AST":
    """``AST(**PRESETS[name], **overrides)`` for ``name`` in ``PRESETS`` (AST_B, AST_T)."""
    if name not in PRESETS:
      raise ValueError(f"unknown AST preset {name!r}; presets: {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **overrides})

  def stage_specs(self) -> List[Dict[str, Any]]:
    """Per stage: name, dim, depth, heads, factor, att, windows ((ws, shift) per block), drop_paths."""
    dprs = drop_path_rates(self.depths, self.drop_path_rate)
    specs = []
    for k, name in enumerate(STAGE_NAMES):
      att = k >= 4
      windows = (block_windows(self.img_size, STAGE_FACTORS[k], self.win_size, self.depths[k]) if att
                 else ((self.win_size, 0),) * self.depths[k])
      specs.append(dict(name=name, dim=self.embed_dim * STAGE_DIM_MULT[k], depth=self.depths[k],
                        heads=self.num_heads[k], factor=STAGE_FACTORS[k], att=att, windows=windows,
                        drop_paths=dprs[k]))
    return specs

  @property
  def pad_multiple(self) -> int:
    """Input sides are padded to multiples of this: lcm of 16 (four 2x downsamplings) and, for every
    attention stage, its downsampling factor times its window (128 for the presets)."""
    m = 16
    for spec in self.stage_specs():
      if spec["att"]:
        for ws, _ in spec["windows"]:
          m = math.lcm(m, spec["factor"] * ws)
    return m

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: (B, H, W, dd_in) float images, any H and W; returns (B, H, W, in_chans) in x's dtype."""
    if x.ndim != 4 or x.shape[-1] != self.dd_in:
      raise ValueError(f"AST: expected an NHWC batch with {self.dd_in} channels, got shape {tuple(x.shape)}")
    out_dtype = x.dtype
    xp, size = pad_to_multiple(x, self.pad_multiple, mode=self.pad_mode)
    specs = self.stage_specs()
    e = self.embed_dim

    def stage(k, y):
      s = specs[k]
      return BasicASTLayer(s["dim"], s["heads"], s["windows"], s["drop_paths"], s["att"], self.mlp_ratio,
                           self.qkv_bias, self.token_mlp, self.policy, self.remat, name=s["name"])(y, train)

    y = Conv2d(e, 3, padding=1, policy=self.policy, name="input_proj")(xp)
    y = nn.leaky_relu(y, negative_slope=0.01)
    skips = []
    for k in range(4):
      y = stage(k, y)
      skips.append(y)
      y = Conv2d(2 * e * 2 ** k, 4, stride=2, padding=1, policy=self.policy, name=f"dowsample_{k}")(y)
    y = stage(4, y)
    for k in range(4):
      y = Upsample(e * 2 ** (3 - k), self.policy, name=f"upsample_{k}")(y)
      y = jnp.concatenate([y, skips[3 - k].astype(y.dtype)], axis=-1)
      y = stage(5 + k, y)
    y = Conv2d(self.in_chans, 3, padding=1, policy=self.policy, name="output_proj")(y)
    if self.dd_in == 3:
      y = xp + y
    return crop_to(y, size).astype(out_dtype)
