"""Multi-process data parallelism: two JAX processes on localhost train like one process on the same batches.

Two ``python -m sparse_restore.main --coordinator_address=localhost:PORT --num_processes=2 --process_id=i`` jobs
with 2 CPU devices each (4 global devices, gloo collectives) train configs/tiny.py in one workdir; each process
reads its own shard of the data (``input_pipeline.train_dataset(..., process_index=i, process_count=2)``) and
the shards form the global batch. The reference is one process with 4 devices fed exactly those global batches
(both shards concatenated in process order). Final parameters must agree to float32 reduction-order noise.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from sparse_restore import checkpoint, config_files, input_pipeline, sharding, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
  return config_files.load_config(REPO / "configs" / f"{name}.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class _Concat:
  """Iterator over per-process shard streams, yielding their batches concatenated in process order."""

  def __init__(self, iterators):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self):
    parts = [next(it) for it in self.iterators]
    return {k: np.concatenate([p[k] for p in parts]) for k in ("input", "target")}

  def get_state(self) -> bytes:  # what grain's Orbax handler stores for iterators that are not grain's own
    return json.dumps([it.get_state() for it in self.iterators]).encode()

  def set_state(self, state: bytes):
    for it, s in zip(self.iterators, json.loads(state)):
      it.set_state(s)


def two_process_batches(data_config, *, global_batch_size, seed, process_index=0, process_count=1):
  """The global batches of a 2-process run, produced in one process."""
  assert (process_index, process_count) == (0, 1)
  streams = [input_pipeline.train_dataset(data_config, global_batch_size=global_batch_size, seed=seed,
                                          process_index=i, process_count=2) for i in range(2)]

  class _Dataset:
    def __iter__(self):
      return _Concat([iter(s) for s in streams])

  return _Dataset()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_process(tmp_path):
  cache = os.environ["JAX_COMPILATION_CACHE_DIR"]  # the run's (tests/conftest.py)
  jax.config.update("jax_compilation_cache_dir", cache)
  data_dir = str(tmp_path / "tfds")
  cfg = load_config("tiny")
  cfg.data.data_dir = data_dir
  input_pipeline.prepare(cfg.data)

  workdir = tmp_path / "two_processes"
  port = free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_COMPILATION_CACHE_DIR=cache,
             TF_CPP_MIN_LOG_LEVEL="2")
  procs = []
  for i in range(2):
    cmd = [sys.executable, "-m", "sparse_restore.main", "--config", "configs/tiny.py", "--workdir", str(workdir),
           f"--config.data.data_dir={data_dir}", "--config.eval_every_steps=3",
           f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
           "--verbosity=0"]  # the INFO lines too: "Process i/2" is what proves the layout
    log = open(tmp_path / f"process_{i}.log", "w")
    procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
  codes = []
  for p, log in procs:
    try:
      codes.append(p.wait(timeout=1500))
    except subprocess.TimeoutExpired:
      for q, _ in procs:
        q.kill()
      raise
    finally:
      log.close()
  logs = [(tmp_path / f"process_{i}.log").read_text() for i in range(2)]
  if any(codes):
    unsupported = [line for text in logs for line in text.splitlines()
                   if "collectives" in line.lower() and ("not implemented" in line.lower()
                                                         or "unsupported" in line.lower())]
    if unsupported:
      pytest.skip(f"this JAX cannot run multi-process CPU collectives: {unsupported[0]}")
    raise AssertionError(f"exit codes {codes}\n--- process 0 ---\n{logs[0][-4000:]}\n--- process 1 ---\n"
                         f"{logs[1][-4000:]}")
  assert "process 0/2" in logs[0] and "process 1/2" in logs[1]

  # Both processes wrote their own data-iterator position.
  data_item = workdir / "checkpoints" / "6" / "data"
  # (Orbax may also leave a commit marker such as commit_success.txt there.)
  assert sorted(f for f in os.listdir(data_item) if f.endswith(".json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  # Process 0 evaluated mid-run (the other waited at a barrier) and at the end.
  assert (workdir / "eval" / "3" / "metrics.json").is_file() and (workdir / "eval" / "6" / "metrics.json").is_file()

  ref = train.train_and_evaluate(cfg, str(tmp_path / "one_process"), train_dataset_fn=two_process_batches)
  _, params, info = checkpoint.load_model(str(workdir))
  assert info["step"] == 6
  ref_params = sharding.to_host(ref.state.params)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(ref_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
