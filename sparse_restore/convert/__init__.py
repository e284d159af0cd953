"""PyTorch -> Flax checkpoint conversion for DRSformer and AST.

    from sparse_restore import convert
    convert.convert_checkpoint("DRSformer_rain200h.pth", "exports/drsformer_rain200h", arch="drsformer")
    state = convert.load_state_dict("model_best.pth")   # {torch_name: numpy array}, no code executed

Command line: ``python -m sparse_restore.convert --help``. Files are read by ``reader`` (no torch, no pickle code
execution); per-architecture rules live in ``convert/<arch>.py``; ``engine`` checks and writes; ``verify`` holds
the optional numerical checks.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from sparse_restore.convert.engine import (ARCHES, Conversion, convert_checkpoint, convert_state,
                                           convert_state_dict, extract_state_dict, get_rules, guess_arch)
from sparse_restore.convert.reader import DEFAULT_MAX_BYTES, read_checkpoint
from sparse_restore.convert.rules import ConversionError

__all__ = ["ARCHES", "Conversion", "ConversionError", "convert_checkpoint", "convert_state", "convert_state_dict",
           "get_rules", "guess_arch", "load_state_dict", "read_checkpoint"]


def load_state_dict(path, arch: Optional[str] = None, key: Optional[str] = None, *,
                    max_bytes: int = DEFAULT_MAX_BYTES) -> Dict[str, Any]:
  """The flat ``{torch_name: numpy array}`` state dict in a ``.pth``/``.pt``/``.safetensors`` file.

  The container is unwrapped (BasicSR ``params``/``params_ema``, AST ``state_dict``, or ``key``) and a
  DataParallel ``module.`` prefix removed; with ``arch`` the architecture's own unwrapping rule is used.
  Nothing in the file is executed; ``max_bytes`` caps the memory its tensors may take (see ``reader``).
  Raises :class:`ConversionError` naming the file.
  """
  obj = read_checkpoint(path, max_bytes=max_bytes)
  try:
    return extract_state_dict(obj, get_rules(arch) if arch else None, key)
  except ConversionError as e:
    raise ConversionError(f"{path}: {e}") from None
