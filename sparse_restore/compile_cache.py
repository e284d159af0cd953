"""JAX's persistent compilation cache for the entry points: a second run of the same configuration loads its
compiled programs from disk instead of compiling them again.

    path = compile_cache.enable(setting, default=compile_cache.user_cache_dir())   # infer, bench
    path = compile_cache.enable(config.compilation_cache_dir,
                                default=compile_cache.workdir_cache_dir(workdir))   # the training job

Where the cache lives, first match wins:
  1. ``$JAX_COMPILATION_CACHE_DIR`` when set (JAX's own variable; the tests and CI use it);
  2. the entry point's setting: a folder, or ``none`` to turn the cache off;
  3. the entry point's default: ``<workdir>/compile_cache`` for training, the user cache folder
     (``$XDG_CACHE_HOME/sparse_restore/jax`` or ``~/.cache/sparse_restore/jax``) for ``infer`` and the bench.

Every program that takes any compile time is cached (JAX's default skips programs compiled in under a second,
and a CPU program often is), on CPU as on GPU/TPU; on GPUs JAX also keeps XLA's per-fusion autotuning results in
the cache, which is most of a cold GPU compile. The key covers the program, the backend, jax/jaxlib versions and
XLA flags, so one folder serves several configurations and versions; it is never pruned (delete it to reclaim
the space). Only share a cache folder with people you trust: JAX runs what it loads from there.

JAX reads the setting when it compiles its first program and keeps it for the life of the process, so
:func:`enable` must run before anything is compiled.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

ENV_VAR = "JAX_COMPILATION_CACHE_DIR"
OFF = "none"
# Programs compiled in at least this many seconds are written (JAX's default, 1 s, skips most CPU programs).
MIN_COMPILE_TIME_S = 0.0


def user_cache_dir() -> str:
  """``$XDG_CACHE_HOME/sparse_restore/jax``, or ``~/.cache/sparse_restore/jax``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "sparse_restore", "jax")


def workdir_cache_dir(workdir: str) -> str:
  """The training job's default: ``<workdir>/compile_cache``."""
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "compile_cache")


def resolve(setting: Optional[str], default: str) -> Optional[str]:
  """The cache folder for ``setting`` ('' or None: ``default``; ``none``: off -> None); a set
  ``$JAX_COMPILATION_CACHE_DIR`` wins over both."""
  env = os.environ.get(ENV_VAR)
  if env:
    return os.path.abspath(os.path.expanduser(env))
  setting = "" if setting is None else str(setting).strip()
  if setting.lower() == OFF:
    return None
  return os.path.abspath(os.path.expanduser(setting or default))


def enable(setting: Optional[str], *, default: str, announce: bool = True) -> Optional[str]:
  """Turns the persistent compilation cache on at the folder :func:`resolve` gives (created if needed) and
  returns it, or None when it is off or the folder cannot be created (the run goes on without a cache, and a line
  on stderr says so). With ``announce`` one line on stderr says where it is (:func:`announcement`)."""
  import jax
  path = resolve(setting, default)
  if path is not None:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      print(f"compilation cache: cannot create {path}: {e.strerror or e}; continuing without it", file=sys.stderr,
            flush=True)
      path = None
  if path is None:
    jax.config.update("jax_compilation_cache_dir", None)
  else:
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor, no backend override
  if announce:
    print(announcement(path), file=sys.stderr, flush=True)
  return path


def announcement(path: Optional[str]) -> str:
  """The line that says where compiled programs are kept (``path`` as :func:`enable` returned it)."""
  source = f" (${ENV_VAR})" if path is not None and os.environ.get(ENV_VAR) else ""
  return f"compilation cache: {path if path is not None else 'off'}{source}"
