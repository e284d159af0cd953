"""Host-memory allocator settings for XLA:CPU runs (training, benchmarks, restoring large images).

XLA:CPU allocates each executable's temporary buffer (gigabytes for a DRSformer train step) when the program
starts and frees it when it ends. With glibc's default settings, blocks that large come from fresh ``mmap``
pages, or from per-thread heaps that are trimmed back to the OS on free, so every step page-faults (and the
kernel zeroes) the whole buffer again: measured 0.9 GB of page faults and ~30% of the wall time of an MSFN
training step on the 2-core development machine.

:func:`keep_freed_memory` tells glibc to serve large blocks from one heap and keep freed memory for reuse
(``mallopt``: one arena, no ``mmap`` for large blocks, no trimming). The process's peak memory is unchanged;
memory freed by XLA is reused instead of being returned to the OS, so the OS counts it as used:
:func:`retained_free_bytes` says how much of it is free for this process (``restore.available_memory_bytes``
adds it back). The training job (``sparse_restore.main``) and the benchmark (``sparse_restore.bench``) call it
at start-up, before JAX creates its threads; set ``SPARSE_RESTORE_SYSTEM_MALLOC=1`` to keep the system defaults. It does nothing off glibc (macOS, musl).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

OPT_OUT_ENV = "SPARSE_RESTORE_SYSTEM_MALLOC"

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied = False


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=1)
def _libc():
  return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
  """Configures glibc malloc to reuse freed memory (see the module docstring); returns whether it did.

  Call it before JAX starts its CPU client: the one-arena setting only applies to threads created afterwards.
  Calling it again is harmless.
  """
  global _applied
  if _applied:
    return True
  if os.environ.get(OPT_OUT_ENV, "").strip() not in ("", "0"):
    return False
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    mallopt = _libc().mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # Each call returns 1 on success; -1 for the trim threshold means "never trim".
  ok = all(mallopt(param, value) == 1
           for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
  _applied = ok
  return ok


def is_applied() -> bool:
  """Whether :func:`keep_freed_memory` has configured the allocator in this process."""
  return _applied


def retained_free_bytes() -> int:
  """Bytes that malloc holds free for reuse in this process (0 unless :func:`keep_freed_memory` was applied).

  After :func:`keep_freed_memory`, memory XLA freed stays in the process instead of going back to the OS; it
  is free for the next allocation here, but the OS's "available" figure no longer includes it.
  """
  if not _applied:
    return 0
  try:
    info = _libc().mallinfo2
  except (OSError, AttributeError):  # glibc < 2.33
    return 0
  info.restype = _MallInfo2
  return int(info().fordblks)
