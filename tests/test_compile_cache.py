"""The persistent compilation cache of the entry points (sparse_restore/compile_cache.py): where it lives, and that
a second process compiling the same program loads it from the cache instead of compiling it."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from sparse_restore import compile_cache

REPO = pathlib.Path(__file__).resolve().parents[1]

# Compiles one small program with the cache enabled as the entry points do and reports JAX's cache events.
PROBE = r"""
import json, sys
from sparse_restore import compile_cache
path = compile_cache.enable(sys.argv[1], default=sys.argv[2])
import jax, jax.numpy as jnp
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
def f(x):
  for _ in range(20):
    x = jnp.tanh(x @ x.T) + 1.0
  return x
jax.jit(f).lower(jnp.ones((32, 32))).compile()
count = lambda e: sum(1 for n in events if n == "/jax/compilation_cache/" + e)
print(json.dumps({"path": path, "hits": count("cache_hits"), "misses": count("cache_misses")}))
"""


def _env(**extra):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def _probe(setting, default, env):
  r = subprocess.run([sys.executable, "-c", PROBE, setting, default], capture_output=True, text=True, env=env,
                     timeout=300, cwd=str(REPO))
  assert r.returncode == 0, r.stderr
  return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_resolve_precedence(monkeypatch, tmp_path):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  default = str(tmp_path / "default")
  assert compile_cache.resolve("", default) == default
  assert compile_cache.resolve(None, default) == default
  assert compile_cache.resolve("none", default) is None and compile_cache.resolve("None", default) is None
  assert compile_cache.resolve(str(tmp_path / "mine"), default) == str(tmp_path / "mine")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compile_cache.resolve("~/c", default) == str(tmp_path / "home" / "c")
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  assert compile_cache.user_cache_dir() == str(tmp_path / "home" / ".cache" / "sparse_restore" / "jax")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.user_cache_dir() == str(tmp_path / "xdg" / "sparse_restore" / "jax")
  assert compile_cache.workdir_cache_dir(str(tmp_path / "w")) == str(tmp_path / "w" / "compile_cache")
  # JAX's own variable wins over the setting, also over 'none'.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
  assert compile_cache.resolve("none", default) == str(tmp_path / "env")
  assert compile_cache.resolve(str(tmp_path / "mine"), default) == str(tmp_path / "env")


def test_second_process_loads_the_program_from_the_cache(tmp_path):
  cache = tmp_path / "cache"
  first, err = _probe("", str(cache), _env())
  assert first == {"path": str(cache), "hits": 0, "misses": first["misses"]} and first["misses"] >= 1
  assert f"compilation cache: {cache}" in err
  entries = sorted(os.listdir(cache))
  assert any(e.startswith("jit_f-") for e in entries), entries  # written although it compiles in well under 1 s
  second, _ = _probe("", str(cache), _env())
  assert second["hits"] == first["misses"] and second["misses"] == 0, (first, second)


def test_none_turns_the_cache_off_and_the_environment_wins(tmp_path):
  off, err = _probe("none", str(tmp_path / "default"), _env())
  assert off["path"] is None and off["hits"] == 0 and "compilation cache: off" in err
  assert not (tmp_path / "default").exists()
  env_dir = tmp_path / "env"
  got, err = _probe("none", str(tmp_path / "default"), _env(JAX_COMPILATION_CACHE_DIR=str(env_dir)))
  assert got["path"] == str(env_dir) and os.listdir(env_dir) and "$JAX_COMPILATION_CACHE_DIR" in err


def test_unusable_folder_is_reported_and_the_run_goes_on(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  got, err = _probe(str(blocker / "cache"), str(tmp_path / "default"), _env())
  assert got["path"] is None and "cannot create" in err and "continuing without it" in err


def test_entry_points_announce_their_default_cache(tmp_path):
  """infer: the user cache folder (or --compilation-cache), created before the model is loaded but announced only
  after it (a failed start is one error line; test_infer.py checks the announcement); the training job:
  <workdir>/compile_cache."""
  env = _env(XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONWARNINGS="ignore")
  image = tmp_path / "in.png"
  image.write_bytes(b"")
  infer = [sys.executable, "-m", "sparse_restore.infer", "--checkpoint", str(tmp_path / "nope"), "--input",
           str(image), "--output", str(tmp_path / "out")]
  r = subprocess.run(infer + ["--compilation-cache", "none"], capture_output=True, text=True, env=env, timeout=300,
                     cwd=str(REPO))
  assert r.returncode == 2 and "compilation cache" not in r.stderr, r.stderr
  assert not (tmp_path / "xdg").exists()
  r = subprocess.run(infer, capture_output=True, text=True, env=env, timeout=300, cwd=str(REPO))
  assert r.returncode == 2 and "compilation cache" not in r.stderr, r.stderr
  assert (tmp_path / "xdg" / "sparse_restore" / "jax").is_dir()
  workdir = tmp_path / "work"
  job = [sys.executable, "-m", "sparse_restore.main", "--config", str(REPO / "configs" / "tiny.py"), "--workdir",
         str(workdir), "--mode", "evaluate", "--checkpoint", str(tmp_path / "nope")]
  r = subprocess.run(job, capture_output=True, text=True, env=env, timeout=300, cwd=str(REPO))
  assert f"compilation cache: {workdir / 'compile_cache'}" in r.stderr, r.stderr
  assert (workdir / "compile_cache").is_dir()
  r = subprocess.run(job + [f"--config.compilation_cache_dir={tmp_path / 'shared_cache'}"], capture_output=True,
                     text=True, env=env, timeout=300, cwd=str(REPO))
  assert f"compilation cache: {tmp_path / 'shared_cache'}" in r.stderr, r.stderr
