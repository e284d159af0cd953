"""``python -m sparse_restore.main`` as a program: config overrides, train mode, evaluate mode, clear failures.

Each test starts real subprocesses (4 simulated CPU devices, inherited from tests/conftest.py's XLA_FLAGS).
Compiled programs are shared with the other tests through JAX's persistent compilation cache in .pytest_cache.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from sparse_restore import config_files

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
  return config_files.load_config(REPO / "configs" / f"{name}.py")


@pytest.fixture(scope="module")
def env(request):
  """Environment of the subprocesses: the persistent compilation cache, quiet TensorFlow."""
  e = dict(os.environ)
  e["JAX_COMPILATION_CACHE_DIR"] = str(request.config.cache.mkdir("jax_compilation_cache"))
  e["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return e


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """synthetic_rain generated once for the module (the jobs would otherwise build it in each workdir)."""
  from sparse_restore import input_pipeline
  d = str(tmp_path_factory.mktemp("tfds"))
  cfg = load_config("tiny")
  cfg.data.data_dir = d
  input_pipeline.prepare(cfg.data)
  return d


def run_main(args, env, timeout=1200):
  cmd = [sys.executable, "-m", "sparse_restore.main", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_typo_in_override_fails_clearly(env, tmp_path):
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"), "--config.num_train_step=3"], env,
               timeout=300)
  assert p.returncode != 0
  assert "num_train_step" in p.stderr
  assert not (tmp_path / "w").exists()  # failed while parsing flags, before doing anything


def test_missing_workdir_flag_fails(env):
  p = run_main(["--config", "configs/tiny.py"], env, timeout=300)
  assert p.returncode != 0 and "workdir" in p.stderr


@pytest.fixture(scope="module")
def trained(env, data_dir, tmp_path_factory):
  """Trains configs/tiny.py through main.py with overrides (6 steps, evaluation at the end)."""
  workdir = tmp_path_factory.mktemp("main") / "run"
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
                "--config.eval_every_steps=6", "--config.max_checkpoints_to_keep=2", "--config.eval.save_images=true"],
               env)
  assert p.returncode == 0, p.stderr[-5000:]
  return workdir, p


def test_train_mode(trained):
  workdir, p = trained
  assert "finished training at step 6" in p.stdout
  assert "restored PSNR" in p.stdout and "degraded input PSNR" in p.stdout
  steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert steps == [4, 6]  # max_checkpoints_to_keep=2 took effect
  info = json.loads((workdir / "model.json").read_text())
  assert info["arch"] == "drsformer" and info["config"]["dim"] == 8
  doc = json.loads((workdir / "eval" / "6" / "metrics.json").read_text())
  assert doc["summary"]["count"] == 2 and doc["summary"]["step"] == 6
  assert len(list((workdir / "eval" / "6" / "images").glob("*.png"))) == 2


def test_evaluate_mode_on_workdir_and_on_exported_model(trained, env, data_dir, tmp_path):
  """--mode evaluate scores the newest checkpoint of a workdir, and an exported model given by --checkpoint, on
  full images: same parameters, same numbers, images and metrics written under the workdir."""
  workdir, _ = trained
  train_doc = json.loads((workdir / "eval" / "6" / "metrics.json").read_text())
  (workdir / "eval" / "6" / "metrics.json").unlink()
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(workdir), "--mode", "evaluate",
                f"--config.data.data_dir={data_dir}"], env)
  assert p.returncode == 0, p.stderr[-5000:]
  doc = json.loads((workdir / "eval" / "6" / "metrics.json").read_text())
  assert doc["summary"]["psnr"] == pytest.approx(train_doc["summary"]["psnr"], abs=1e-9)
  assert "restored PSNR" in p.stdout

  from sparse_restore import checkpoint
  _, params, info = checkpoint.load_model(str(workdir))
  export = checkpoint.save_model(str(tmp_path / "export"), info["arch"], info["config"], params)
  other = tmp_path / "eval_export"
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(other), "--mode", "evaluate", "--checkpoint", export,
                f"--config.data.data_dir={data_dir}", "--config.data.max_eval_images=3"], env)
  assert p.returncode == 0, p.stderr[-5000:]
  doc3 = json.loads((other / "eval" / "pretrained" / "metrics.json").read_text())
  assert doc3["summary"]["count"] == 3 and doc3["summary"]["source"] == export
  first_two = {r["name"]: r["psnr"] for r in doc3["images"][:2]}
  assert first_two == pytest.approx({r["name"]: r["psnr"] for r in doc["images"]}, abs=1e-9)
  assert len(list((other / "eval" / "pretrained" / "images").glob("*.png"))) == 3


def test_refuses_other_model_in_workdir(trained, env, data_dir):
  workdir, _ = trained
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
                "--config.model.dim=16"], env, timeout=600)
  assert p.returncode != 0
  assert "describes a different model than the config (dim: 8 in the workdir vs 16 in the config)" in p.stderr
  assert "Traceback" not in p.stderr


def test_invalid_values_fail_fast_naming_each_field(env, tmp_path):
  """Bad values are refused in seconds, before the workdir, the dataset or any compilation: one error line per
  field, no traceback (model.dim=0 was a ZeroDivisionError, a NaN or negative lr failed at step 2 after minutes
  of compiling, a negative batch only after the dataset build)."""
  import time
  cases = [
      (["--config.model.dim=0", "--config.batch_size=-4", "--config.lr=nan"],
       ["error: config.model.dim: must be >= 1, got 0", "error: config.batch_size: must be >= 1, got -4",
        "error: config.lr: must be finite and > 0, got nan"]),
      (["--config.lr=-1"], ["error: config.lr: must be finite and > 0, got -1.0"]),
  ]
  for overrides, expected in cases:
    workdir = tmp_path / "w"
    t0 = time.time()
    p = run_main(["--config", "configs/tiny.py", "--workdir", str(workdir), *overrides], env, timeout=300)
    elapsed = time.time() - t0
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert errors == expected, p.stderr[-3000:]
    assert not workdir.exists()  # neither the workdir nor its tfds/ dataset folder was created
    assert elapsed < 120, elapsed  # start-up and the checks only (a train-step compilation takes minutes here)
