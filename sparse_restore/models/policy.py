"""How a network runs on one kind of device: a small policy object, chosen once by the entry points.

Every policy computes the same function (up to float rounding); it only picks implementations, memory strategies
and the compute dtype. Training, restore/infer and the benchmark call :func:`for_platform` (or
:func:`for_device`) for the device they run on and pass the result to the network as its ``policy`` field, the
way the Flax examples pass ``conv`` and ``dtype``; sub-modules receive the same object. Nothing under
``sparse_restore/models`` asks JAX which backend it is tracing for.

``Policy()`` is the portable choice: XLA's standard operations everywhere, scanned repeated blocks, float32.
The per-platform table below and the measurements behind it are in README.md ("Performance").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import jax.numpy as jnp

CONV_IMPLS = ("xla", "shift", "taps")
# Network fields that choose how it runs, not what it computes: not part of a model's description (model.json).
RUNTIME_FIELDS = ("policy", "remat", "parent", "name")
# Constructor arguments of earlier versions that the policy replaced; an old model.json may still list them.
LEGACY_RUNTIME_FIELDS = ("conv_impl", "dtype", "param_dtype", "scan_blocks", "chunk_bytes")
COMPUTE_DTYPES = ("float32", "bfloat16")
CPU_CHUNK_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class Policy:
  """Implementation choices of the networks (see the module docstring).

  Attributes:
    conv: depthwise / grouped convolutions. ``"xla"``: ``lax.conv_general_dilated`` with ``feature_group_count``.
      ``"shift"``: sums of shifted multiplies with a custom backward pass (``models/cpu_kernels.py``).
      ``"taps"``: the same sums differentiated by JAX (fused elementwise work, nothing to autotune).
    fusion_guards: XLA:CPU guards: optimization barriers that keep padded activations and ``top_k`` results
      materialised, and conditionals that stop a fused producer from being recomputed in every consumer.
    chunk_bytes: working-set budget of AST's chunked (``lax.map``) attention windows and FRFN rows; 0 = whole
      arrays.
    scan_blocks: run a stack of identically shaped blocks (DRSformer's Transformer blocks of a level, MEFC's
      steps) as one ``lax.scan`` over their stacked parameters (one compiled block) instead of unrolled.
    dtype: compute dtype, ``"float32"`` or ``"bfloat16"``. Parameters stay float32; normalisation statistics,
      softmaxes and attention scores are computed in float32; outputs are float32.
  """
  conv: str = "xla"
  fusion_guards: bool = False
  chunk_bytes: int = 0
  scan_blocks: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    if self.conv not in CONV_IMPLS:
      raise ValueError(f"policy.conv must be one of {CONV_IMPLS}, got {self.conv!r}")
    dtype = jnp.dtype(self.dtype).name if self.dtype is not None else "float32"
    if dtype not in COMPUTE_DTYPES:
      raise ValueError(f"policy.dtype must be one of {COMPUTE_DTYPES}, got {self.dtype!r}")
    object.__setattr__(self, "dtype", dtype)
    if int(self.chunk_bytes) < 0:
      raise ValueError(f"policy.chunk_bytes must be >= 0, got {self.chunk_bytes}")
    object.__setattr__(self, "chunk_bytes", int(self.chunk_bytes))

  @property
  def compute_dtype(self) -> Optional[Any]:
    """The dtype modules compute in: None (float32, the inputs' promotion) or ``jnp.bfloat16``."""
    return None if self.dtype == "float32" else jnp.dtype(self.dtype)

  def replace(self, **changes) -> "Policy":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


# Per-platform defaults; each entry is measured (README "Performance"). Platforms not listed get Policy().
PLATFORM_DEFAULTS: Dict[str, Dict[str, Any]] = {
    # XLA:CPU: its grouped convolution is slow; it recomputes fused producers in every consumer and drops
    # optimization barriers before fusion (hence the guards); small working sets keep AST's large
    # intermediates in cache; a scan's saved activations are written single-threaded (unrolled is faster).
    "cpu": dict(conv="shift", fusion_guards=True, chunk_bytes=CPU_CHUNK_BYTES, scan_blocks=False),
    "gpu": dict(),
    "tpu": dict(),
}
_PLATFORM_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


def platform_name(platform: str) -> str:
  """``"cuda"``/``"rocm"`` (lowering platforms) -> ``"gpu"``; other names unchanged."""
  return _PLATFORM_ALIASES.get(platform, platform)


def for_platform(platform: str, **overrides) -> Policy:
  """The policy for ``platform`` (``"cpu"``, ``"gpu"``/``"cuda"``, ``"tpu"``...); ``overrides`` set fields, and an
  override of None keeps the platform's choice (so config values of None/"auto" mean "decide by device")."""
  fields = dict(PLATFORM_DEFAULTS.get(platform_name(platform), {}))
  unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Policy)})
  if unknown:
    raise ValueError(f"unknown policy field(s) {unknown}; fields: {[f.name for f in dataclasses.fields(Policy)]}")
  fields.update({k: v for k, v in overrides.items() if v is not None and v != "auto"})
  return Policy(**fields)


def for_device(device=None, **overrides) -> Policy:
  """The policy for ``device`` (default: JAX's first device), see :func:`for_platform`."""
  if device is None:
    import jax
    device = jax.devices()[0]
  return for_platform(device.platform, **overrides)
