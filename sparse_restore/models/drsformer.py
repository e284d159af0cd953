"""DRSformer (Chen et al., "Learning A Sparse Transformer Network for Effective Image Deraining", CVPR 2023).

A 4-level U-shaped Transformer of sparse Transformer blocks (STB = TKSA + MSFN), with a mixture-of-experts
feature compensator (MEFC) after the patch embedding and before the output convolution. NHWC in, NHWC out
(``restored = network(img) + img``); H and W must be multiples of 8 (see :func:`layers.pad_to_multiple`).

Parameter names mirror the PyTorch module tree (``encoder_level1.0.attn.qkv`` ->
``encoder_level1_0/attn/qkv``), so checkpoint conversion is a short rule table (``convert/drsformer.py``).
The defaults are the released model; the other fields are the paper's ablation switches.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from sparse_restore import models
from sparse_restore.models import layers
from sparse_restore.models.feedforward import ffn_class
from sparse_restore.models.layers import ChannelLayerNorm, Conv2d, pixel_shuffle, pixel_unshuffle
from sparse_restore.models.mefc import MEFC, OPERATIONS
from sparse_restore.models.policy import Policy
from sparse_restore.models.tksa import DEFAULT_TOPK_RATIOS, TKSA


class STB(nn.Module):
  """Sparse Transformer block: ``x + TKSA(LN(x))`` then ``x + FFN(LN(x))`` (reference ``TransformerBlock``)."""
  dim: int
  num_heads: int
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  layernorm_type: str = "WithBias"
  topk_ratios: Optional[Sequence[float]] = DEFAULT_TOPK_RATIOS
  ffn_type: str = "msfn"
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    norm = lambda name: ChannelLayerNorm(self.layernorm_type, dtype=self.policy.compute_dtype, name=name)
    x = x + TKSA(self.dim, self.num_heads, self.bias, self.topk_ratios, self.policy, name="attn")(norm("norm1")(x))
    ffn = ffn_class(self.ffn_type)(self.dim, self.ffn_expansion_factor, self.bias, self.policy, name="ffn")
    return x + ffn(norm("norm2")(x))


class OverlapPatchEmbed(nn.Module):
  """3x3 convolution from image to features, no bias (``patch_embed.proj``)."""
  features: int
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    return Conv2d(self.features, 3, padding=1, use_bias=False, policy=self.policy, name="proj")(x)


class Downsample(nn.Module):
  """3x3 conv (C -> C/2, no bias) then PixelUnshuffle(2): half size, 2C channels (``body_0``)."""
  channels: int
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    x = Conv2d(self.channels // 2, 3, padding=1, use_bias=False, policy=self.policy, name="body_0")(x)
    return pixel_unshuffle(x, 2)


class Upsample(nn.Module):
  """3x3 conv (C -> 2C, no bias) then PixelShuffle(2): double size, C/2 channels (``body_0``)."""
  channels: int
  policy: Policy = Policy()

  @nn.compact
  def __call__(self, x):
    x = Conv2d(self.channels * 2, 3, padding=1, use_bias=False, policy=self.policy, name="body_0")(x)
    return pixel_shuffle(x, 2)


@models.register("drsformer")
class DRSformer(nn.Module):
  """The DRSformer network; defaults = the released deraining model (33,655,424 parameters).

  Attributes:
    dim: channels at level 1 (levels 2-4 use 2x, 4x, 8x; decoder level 1 uses 2x).
    num_blocks: STBs per level (encoder level i and decoder level i share the count).
    heads: attention heads per level.
    ffn_expansion_factor: FFN hidden width is ``int(level_dim * factor)``.
    bias: biases in the Transformer-block convs, ``reduce_chan_level*`` and ``output``.
    layernorm_type: 'WithBias' or 'BiasFree'.
    use_mefc: MEFC after the patch embedding and before the output conv (False: the Rain200L / SPA variant).
    mefc_experts: MEFC expert operations: an int n (first n of ``mefc.OPERATIONS``) or a list of names.
    topk_ratios: TKSA top-k ratios (one learned weight each); ``()`` or None = dense softmax (Restormer MDTA).
    ffn_type: 'msfn' (DRSformer), 'gdfn' (Restormer), 'dfn' or 'fn' (paper Table 3).
    in_channels, out_channels: image channels (the residual needs them equal).
    policy: how the network runs on the target device (``models/policy.py``; compute dtype, convolution
      implementation, scanned or unrolled levels). Does not change what it computes.
    remat: rematerialise each STB in the backward pass (less training memory, ~30% more compute).
  """
  size_multiple = 8

  dim: int = 48
  num_blocks: Sequence[int] = (4, 6, 6, 8)
  heads: Sequence[int] = (1, 2, 4, 8)
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  layernorm_type: str = "WithBias"
  use_mefc: bool = True
  mefc_experts: Union[int, Sequence[str]] = len(OPERATIONS)
  topk_ratios: Optional[Sequence[float]] = DEFAULT_TOPK_RATIOS
  ffn_type: str = "msfn"
  in_channels: int = 3
  out_channels: int = 3
  policy: Policy = Policy()
  remat: bool = False

  def __post_init__(self):
    # JSON configs give lists; keep the module hashable and its fields canonical.
    for field in ("num_blocks", "heads", "topk_ratios"):
      value = getattr(self, field)
      if isinstance(value, list):
        object.__setattr__(self, field, tuple(value))
    if isinstance(self.mefc_experts, list):
      object.__setattr__(self, "mefc_experts", tuple(self.mefc_experts))
    if len(self.num_blocks) != 4 or len(self.heads) != 4:
      raise ValueError(f"DRSformer: num_blocks and heads need 4 entries, got {self.num_blocks}, {self.heads}")
    super().__post_init__()

  def _check_input(self, x):
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"DRSformer expects NHWC images with {self.in_channels} channels, got shape {x.shape}")
    h, w = x.shape[1], x.shape[2]
    if h % self.size_multiple or w % self.size_multiple:
      raise ValueError(
          f"DRSformer: input size {h}x{w} is not a multiple of {self.size_multiple} (three 2x downsamplings); "
          "pad it first with sparse_restore.models.layers.pad_to_multiple(x, 8) and crop the output back "
          "with layers.crop_to(y, size)")
    if self.out_channels != self.in_channels:
      raise ValueError(f"DRSformer adds the input image to the output: in_channels={self.in_channels} must "
                       f"equal out_channels={self.out_channels}")

  def _level(self, x, name: str, dim: int, count: int, heads: int):
    """The ``count`` STBs of one level (``<name>_<i>``)."""
    stb = STB(dim, heads, self.ffn_expansion_factor, self.bias, self.layernorm_type, self.topk_ratios,
              self.ffn_type, self.policy, parent=None)
    return layers.repeated(self, stb, [f"{name}_{i}" for i in range(count)], x, scan=self.policy.scan_blocks,
                           remat=self.remat)

  @nn.compact
  def __call__(self, img, train: bool = False):
    """img: [B, H, W, in_channels] float, H and W multiples of 8. Returns the restored image, float32.
    ``train`` is accepted for the registry's common signature and ignored (no dropout or drop-path)."""
    self._check_input(img)
    dim, (n1, n2, n3, n4), (h1, h2, h3, h4) = self.dim, self.num_blocks, self.heads
    kw = dict(policy=self.policy)

    x = OverlapPatchEmbed(dim, name="patch_embed", **kw)(img)
    if self.use_mefc:
      x = MEFC(dim, self.mefc_experts, name="encoder_level0", **kw)(x)
    enc1 = self._level(x, "encoder_level1", dim, n1, h1)
    enc2 = self._level(Downsample(dim, name="down1_2", **kw)(enc1), "encoder_level2", 2 * dim, n2, h2)
    enc3 = self._level(Downsample(2 * dim, name="down2_3", **kw)(enc2), "encoder_level3", 4 * dim, n3, h3)
    latent = self._level(Downsample(4 * dim, name="down3_4", **kw)(enc3), "latent", 8 * dim, n4, h4)

    x = jnp.concatenate([Upsample(8 * dim, name="up4_3", **kw)(latent), enc3], axis=-1)
    x = Conv2d(4 * dim, 1, use_bias=self.bias, name="reduce_chan_level3", **kw)(x)
    x = self._level(x, "decoder_level3", 4 * dim, n3, h3)
    x = jnp.concatenate([Upsample(4 * dim, name="up3_2", **kw)(x), enc2], axis=-1)
    x = Conv2d(2 * dim, 1, use_bias=self.bias, name="reduce_chan_level2", **kw)(x)
    x = self._level(x, "decoder_level2", 2 * dim, n2, h2)
    x = jnp.concatenate([Upsample(2 * dim, name="up2_1", **kw)(x), enc1], axis=-1)
    x = self._level(x, "decoder_level1", 2 * dim, n1, h1)
    if self.use_mefc:
      x = MEFC(2 * dim, self.mefc_experts, name="refinement", **kw)(x)
    out = Conv2d(self.out_channels, 3, padding=1, use_bias=self.bias, name="output", **kw)(x)
    return out.astype(jnp.float32) + img.astype(jnp.float32)
