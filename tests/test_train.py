"""Training job: schedules, losses, data-parallel updates, exact resumption, divergence handling, evaluation.

The loop tests run the real training loop (grain input pipeline over the generated synthetic_rain data, Orbax
checkpoints, TensorBoard events) on configs/tiny.py. XLA:CPU compiles the tiny DRSformer's train step slowly, so the
runs share compilations through JAX's persistent compilation cache (kept in pytest's cache folder) and one
module-level reference run (4 devices, 6 steps) serves as the uninterrupted baseline for several tests.
"""
import json
import math
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sparse_restore import (checkpoint, config_checks, config_files, input_pipeline, losses, models, schedules,
                            sharding, train)

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str) -> ml_collections.ConfigDict:
  """``configs/<name>.py``'s config (unlocked, as a test can change any field)."""
  return config_files.load_config(REPO / "configs" / f"{name}.py")


def enable_compilation_cache() -> str:
  """The run's persistent XLA compilation cache (tests/conftest.py; shared by tests and their subprocesses)."""
  path = os.environ["JAX_COMPILATION_CACHE_DIR"]
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  """The synthetic_rain data, generated once for the module; returns its data_dir."""
  enable_compilation_cache()
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  cfg = load_config("tiny")
  cfg.data.data_dir = data_dir
  input_pipeline.prepare(cfg.data)
  return data_dir


def tiny_config(data_dir, **overrides):
  cfg = load_config("tiny")
  cfg.data.data_dir = data_dir
  cfg.update_from_flattened_dict(overrides)  # dotted keys, e.g. "policy.conv"
  return cfg


def host_params(tree):
  return jax.tree_util.tree_map(np.asarray, sharding.to_host(tree))


def assert_trees_equal(a, b, rtol=0.0, atol=0.0):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for (path, x), y in zip(la, lb):
    if rtol == 0 and atol == 0:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    else:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                 err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory):
  """Uninterrupted tiny run: 6 steps on all 4 devices, checkpoints every 2 steps, evaluation at the end."""
  assert jax.device_count() == 4, "tests/conftest.py should provide 4 CPU devices"
  workdir = str(tmp_path_factory.mktemp("reference"))
  cfg = tiny_config(tiny_data, eval_every_steps=6)
  result = train.train_and_evaluate(cfg, workdir)
  return workdir, result


# ------------------------------------------------------------------------------------------------ schedules


def test_constant_then_cosine_is_basicsr_cyclic_schedule():
  """DRSformer's CosineAnnealingRestartCyclicLR(periods [92k, 208k], eta_mins [3e-4, 1e-6]) value by value."""
  cfg = load_config("drsformer_rain200h")
  (stage,) = schedules.resolve_stages(cfg)
  assert (stage.num_steps, stage.batch_size, stage.patch_size, stage.lr) == (300_000, 16, 128, 3e-4)
  sched = schedules.create(stage)

  def basicsr(t):  # eta_min + 0.5 * (base - eta_min) * (1 + cos(pi * (t - restart) / period)) per period
    if t < 92_000:
      return 3e-4 + 0.5 * (3e-4 - 3e-4) * (1 + math.cos(math.pi * t / 92_000))
    return 1e-6 + 0.5 * (3e-4 - 1e-6) * (1 + math.cos(math.pi * (t - 92_000) / 208_000))

  for t in [0, 1, 50_000, 91_999, 92_000, 92_001, 150_000, 200_000, 299_999]:
    assert float(sched(t)) == pytest.approx(basicsr(t), rel=1e-5, abs=1e-10), t
  assert float(sched(300_000)) == pytest.approx(1e-6, rel=1e-5)


def test_warmup_cosine_and_stages():
  cfg = load_config("tiny")
  cfg.num_train_steps = -1
  cfg.stages = ({"num_steps": 10, "lr": 2e-4, "schedule": "warmup_cosine", "warmup_steps": 4},
                {"num_steps": 6, "patch_size": 48, "batch_size": 4, "lr": 1e-4})
  s0, s1 = schedules.resolve_stages(cfg)
  assert (s0.start, s0.end, s0.patch_size, s0.batch_size) == (0, 10, 32, 8)
  assert (s1.start, s1.end, s1.patch_size, s1.batch_size, s1.lr) == (10, 16, 48, 4, 1e-4)
  assert schedules.stage_at([s0, s1], 9) is s0 and schedules.stage_at([s0, s1], 10) is s1
  sched = schedules.create(s0)
  np.testing.assert_allclose([float(sched(t)) for t in (0, 2, 4, 10)], [0.0, 1e-4, 2e-4, 1e-6], rtol=1e-5)
  cfg.num_train_steps = 5
  with pytest.raises(ValueError, match="sum to 16"):
    schedules.resolve_stages(cfg)
  cfg.num_train_steps = -1
  cfg.stages = ({"num_steps": 3, "patchsize": 8},)
  with pytest.raises(ValueError, match="unknown keys"):
    schedules.resolve_stages(cfg)


def test_losses():
  rng = np.random.default_rng(0)
  a, b = rng.random((2, 8, 8, 3), np.float32), rng.random((2, 8, 8, 3), np.float32)
  np.testing.assert_allclose(losses.l1(a, b), np.mean(np.abs(a - b)), rtol=1e-6)
  np.testing.assert_allclose(losses.get("charbonnier")(a, b), np.mean(np.sqrt((a - b) ** 2 + 1e-6)), rtol=1e-6)
  assert float(losses.charbonnier(a, a)) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match="unknown loss"):
    losses.get("l2")


def test_optimizer_is_clipped_adamw():
  """One update equals hand-written global-norm clipping + AdamW (decoupled weight decay)."""
  cfg = load_config("default")
  (stage,) = schedules.resolve_stages(cfg)
  tx, _ = train.create_optimizer(cfg, stage)
  p = {"w": jnp.array([1.0, -2.0, 3.0])}
  g = {"w": jnp.array([0.3, -0.4, 1.2])}
  updates, _ = tx.update(g, tx.init(p), p)
  gc = np.array([0.3, -0.4, 1.2]) * (0.01 / np.linalg.norm([0.3, -0.4, 1.2]))
  m, v = 0.1 * gc / (1 - 0.9), 0.001 * gc ** 2 / (1 - 0.999)
  want = -3e-4 * (m / (np.sqrt(v) + 1e-8) + 1e-4 * np.array([1.0, -2.0, 3.0]))
  np.testing.assert_allclose(updates["w"], want, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state():
  """compute_dtype/remat reach the training network only; params, optimizer state and loss stay float32, and
  model.json (what a resumed run must match) does not depend on them."""
  cfg = load_config("tiny")
  cfg.compute_dtype, cfg.remat = "bfloat16", True
  module, eval_module = train.create_model(cfg, "cpu"), train.create_model(cfg, "cpu", train=False)
  assert module.policy.compute_dtype == jnp.bfloat16 and module.remat
  assert eval_module.policy.compute_dtype is None and not eval_module.remat
  assert train.describe_model(module) == train.describe_model(eval_module) == train.describe_model(
      train.create_model(load_config("tiny"), "cpu"))
  (stage,) = schedules.resolve_stages(cfg)
  tx, sched = train.create_optimizer(cfg, stage)

  def one_step():
    params = models.init_params(module, jax.random.key(0, impl="rbg"))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    batch = {"input": jnp.zeros((2, 32, 32, 3)), "target": jnp.zeros((2, 32, 32, 3))}
    return train.train_step(state, batch, jax.random.key(1), module=module, tx=tx, schedule=sched,
                            loss_fn=losses.l1, stage_start=0)

  state, metrics = jax.eval_shape(one_step)
  dtypes = {x.dtype for x in jax.tree_util.tree_leaves((state.params, state.opt_state, metrics))}
  assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}, dtypes
  with pytest.raises(ValueError, match="compute_dtype"):
    cfg.compute_dtype = "float16"
    train.create_model(cfg)


# ------------------------------------------------------------------------------------------------ training loop


def test_reference_run_writes_workdir(reference_run):
  """model.json, checkpoints (params item readable by checkpoint.load_model), eval results, TensorBoard."""
  workdir, result = reference_run
  assert int(sharding.to_host(result.state.step)) == 6 and len(result.losses) == 6
  info = checkpoint.read_model_json(workdir)
  assert info["arch"] == "drsformer" and info["config"]["dim"] == 8 and "dtype" not in info["config"]
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == [2, 4, 6]
  module, params, loaded = checkpoint.load_model(workdir)
  assert loaded["step"] == 6
  assert_trees_equal(params, host_params(result.state.params))
  ev = os.path.join(workdir, "eval", "6")
  doc = json.load(open(os.path.join(ev, "metrics.json")))
  assert doc["summary"]["protocol"] == "restormer" and doc["summary"]["channel"] == "y"
  assert doc["summary"]["count"] == 2 and len(doc["images"]) == 2
  assert 10 < doc["summary"]["psnr"] < 60 and 10 < doc["summary"]["input_psnr"] < 60
  pngs = sorted(os.listdir(os.path.join(ev, "images")))
  assert len(pngs) == 2 and all(p.endswith(".png") for p in pngs)
  assert os.path.isfile(os.path.join(ev, "metrics.csv"))
  assert result.eval is not None and result.eval.summary["psnr"] == pytest.approx(doc["summary"]["psnr"])
  # TensorBoard events (sparse_restore.summary_writer), read as TensorBoard reads them, without TensorFlow.
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  value = lambda e: tensor_util.make_ndarray(e.tensor_proto)
  losses_logged = {e.step: float(value(e)) for e in acc.Tensors("train/loss")}
  assert sorted(losses_logged) == [2, 4, 6]
  assert losses_logged[6] == pytest.approx(np.mean(result.losses[4:6]), rel=1e-6)
  assert [e.step for e in acc.Tensors("steps_per_sec")] == [2, 4, 6]
  assert float(value(acc.Tensors("eval/psnr")[0])) == pytest.approx(doc["summary"]["psnr"], rel=1e-6)
  (strip,) = [t for t in acc.Tags()["tensors"] if t.startswith("eval/0_")]
  width, height = (int(v) for v in value(acc.Tensors(strip)[0])[:2])
  from sparse_restore import model_eval
  assert width == 3 * height + 2 * model_eval.SEPARATOR_PX  # input | output | target, white separators
  assert "_hparams_/session_start_info" in acc.Tags()["tensors"]


def test_four_devices_match_one_device_and_lower_the_loss(reference_run, tiny_data, tmp_path):
  """(a) The same global batches on a 1-device mesh give the same losses and parameters as on 4 devices, and
  training lowers the loss on the first batch."""
  ref_dir, ref = reference_run
  cfg = tiny_config(tiny_data)
  mesh1 = sharding.make_mesh(jax.devices()[:1])
  one = train.train_and_evaluate(cfg, str(tmp_path / "one"), mesh=mesh1)
  np.testing.assert_allclose(one.losses, ref.losses, rtol=1e-5)
  # Summed over 4 devices or 1, gradients differ in the last bits and Adam's normalised steps carry that into the
  # parameters: after 6 steps of lr 2e-3, max |difference| 2.7e-7 with jax 0.10.2 but 2.2e-5 (1% of one step)
  # with jax 0.12, whose XLA:CPU orders these sums differently. The tolerance stays at 2.5% of one step.
  assert_trees_equal(host_params(one.state.params), host_params(ref.state.params), rtol=1e-4, atol=5e-5)

  # Loss of the final parameters on the first batch (through the same jitted update on the 1-device mesh)
  # against the first step's loss, which was measured with the initial parameters on that batch.
  (stage,) = schedules.resolve_stages(cfg)
  tx, sched = train.create_optimizer(cfg, stage)
  step_fn = train.make_train_step(mesh1, module=train.create_model(cfg), tx=tx, schedule=sched,
                                  loss_fn=losses.get(cfg.loss), stage_start=0)
  first = next(iter(input_pipeline.train_dataset(cfg.data, global_batch_size=8, seed=cfg.seed)))
  params = jax.device_put(host_params(one.state.params), sharding.replicated(mesh1))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(tx.init)(params))
  rng = jax.random.fold_in(jax.random.key(cfg.seed), 1)
  _, metrics = step_fn(state, sharding.global_batch(first, mesh1), rng)
  final_loss = float(metrics["loss"])
  assert final_loss < 0.9 * one.losses[0], (one.losses, final_loss)


def test_interrupted_run_resumes_exactly(reference_run, tiny_data, tmp_path):
  """(b) Stopping at step 3, restarting, stopping at 5 and finishing gives bit-identical parameters (and
  losses) to the uninterrupted run: params, optimizer state and data-iterator position are restored."""
  ref_dir, ref = reference_run
  cfg = tiny_config(tiny_data)
  workdir = str(tmp_path / "resumed")
  first = train.train_and_evaluate(cfg, workdir, stop_at_step=3)
  assert int(sharding.to_host(first.state.step)) == 3
  assert checkpoint.latest_step(workdir) == 3
  second = train.train_and_evaluate(cfg, workdir, stop_at_step=5)
  assert second.first_step == 3
  third = train.train_and_evaluate(cfg, workdir)
  assert third.first_step == 5 and int(sharding.to_host(third.state.step)) == 6
  assert first.losses + second.losses + third.losses == ref.losses
  assert_trees_equal(host_params(third.state.params), host_params(ref.state.params))
  # A finished workdir is not trained further.
  again = train.train_and_evaluate(cfg, workdir)
  assert again.losses == [] and int(sharding.to_host(again.state.step)) == 6


class _PoisonAt:
  """Grain map that turns the n-th batch's input into NaNs (counted on the consumer side)."""

  def __init__(self, n):
    self.n, self.calls = n, 0

  def __call__(self, batch):
    self.calls += 1
    if self.calls == self.n:
      batch = dict(batch, input=np.full_like(batch["input"], np.nan))
    return batch


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(reference_run, tiny_data, tmp_path):
  """(c) A NaN loss at step 4 stops the run with a message naming the step; nothing is saved after the last
  good checkpoint (step 2), which is intact and equal to the uninterrupted run's step 2."""
  ref_dir, _ = reference_run
  cfg = tiny_config(tiny_data)
  workdir = str(tmp_path / "nan")

  def poisoned(*args, **kwargs):
    return input_pipeline.train_dataset(*args, **kwargs).map(_PoisonAt(4))

  with pytest.raises(train.NonFiniteLossError, match=r"non-finite training loss at step 4 .*last good checkpoint "
                     r"is step 2"):
    train.train_and_evaluate(cfg, workdir, train_dataset_fn=poisoned)
  assert checkpoint.latest_step(workdir) == 2
  assert sorted(d for d in os.listdir(os.path.join(workdir, "checkpoints")) if not d.startswith(".")) == ["2"]
  _, params, info = checkpoint.load_model(workdir)
  assert info["step"] == 2
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  _, ref_params, _ = checkpoint.load_model(ref_dir, step=2)
  assert_trees_equal(params, ref_params)


def test_refuses_to_resume_a_different_model(reference_run, tiny_data):
  ref_dir, _ = reference_run
  before = sorted(os.listdir(os.path.join(ref_dir, "checkpoints")))
  cfg = tiny_config(tiny_data, **{"model.dim": 16})
  with pytest.raises(checkpoint.ModelMismatchError, match=r"dim: 8 in the workdir vs 16 in the config"):
    train.train_and_evaluate(cfg, ref_dir)
  assert sorted(os.listdir(os.path.join(ref_dir, "checkpoints"))) == before


@pytest.mark.slow
def test_multi_stage_run_resumes_exactly(tiny_data, tmp_path):
  """Progressive training: two stages (the second with other patches, batch and lr, fresh optimizer and data
  stream); interrupted inside stage 2 and at the stage boundary, it ends where the uninterrupted run does."""
  cfg = tiny_config(tiny_data, num_train_steps=-1, checkpoint_every_steps=10)
  cfg.stages = ({"num_steps": 3, "lr": 2e-3}, {"num_steps": 3, "patch_size": 40, "batch_size": 4, "lr": 1e-3,
                                                "schedule": "constant"})
  full = train.train_and_evaluate(cfg, str(tmp_path / "full"))
  workdir = str(tmp_path / "parts")
  a = train.train_and_evaluate(cfg, workdir, stop_at_step=3)   # exactly at the stage boundary
  b = train.train_and_evaluate(cfg, workdir, stop_at_step=4)   # inside stage 2
  c = train.train_and_evaluate(cfg, workdir)
  assert a.losses + b.losses + c.losses == full.losses
  assert_trees_equal(host_params(c.state.params), host_params(full.state.params))


# ------------------------------------------------------------------------------------------------ damaged workdirs


def _copy_checkpoints(ref_dir, workdir):
  """The reference run's model.json and checkpoints (steps 2, 4, 6), without its evaluation and logs."""
  os.makedirs(workdir)
  shutil.copy(os.path.join(ref_dir, checkpoint.MODEL_JSON), workdir)
  shutil.copytree(os.path.join(ref_dir, "checkpoints"), os.path.join(workdir, "checkpoints"))
  return workdir


def _largest_params_file(step_dir):
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "params")) for f in fs]
  return max(files, key=os.path.getsize)


def _damage(step_dir, how):
  if how == "empty_folder":
    shutil.rmtree(step_dir)
    os.mkdir(step_dir)
  elif how == "removed_file":
    os.remove(_largest_params_file(step_dir))
  elif how == "truncated_file":
    path = _largest_params_file(step_dir)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  else:
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated_file", "empty_folder", "removed_file"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(reference_run, tiny_data, tmp_path, how, caplog):
  """The newest checkpoint (step 6 of the finished reference run) is damaged: the run resumes from step 4 with
  a warning naming step 6, moves it to checkpoints_damaged/, trains steps 5-6 again and ends with exactly the
  uninterrupted run's parameters."""
  ref_dir, ref = reference_run
  workdir = _copy_checkpoints(ref_dir, str(tmp_path / "damaged"))
  _damage(os.path.join(workdir, "checkpoints", "6"), how)
  with caplog.at_level("WARNING"):
    result = train.train_and_evaluate(tiny_config(tiny_data), workdir)
  assert result.first_step == 4 and result.losses == ref.losses[4:]
  assert_trees_equal(host_params(result.state.params), host_params(ref.state.params))
  warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any(m.startswith(f"Skipping a damaged checkpoint: {workdir}/checkpoints/6") for m in warned), warned
  assert any(f"Moved the damaged checkpoint {workdir}/checkpoints/6 to {workdir}/checkpoints_damaged/6; resuming "
             "from step 4" in m for m in warned), warned
  assert os.listdir(os.path.join(workdir, "checkpoints_damaged")) == ["6"]
  assert checkpoint.latest_step(workdir) == 6  # saved anew


def test_run_that_failed_before_its_first_checkpoint_does_not_block_the_corrected_config(tiny_data, tmp_path,
                                                                                        caplog):
  """A first run (dim 16) stops before any checkpoint; the corrected command (dim 8) in the same workdir
  replaces its model.json, with a warning, and trains."""
  workdir = str(tmp_path / "w")

  def broken(*args, **kwargs):
    raise OSError("the data went away")

  with pytest.raises(OSError, match="the data went away"):
    train.train_and_evaluate(tiny_config(tiny_data, **{"model.dim": 16}), workdir, train_dataset_fn=broken)
  assert checkpoint.read_model_json(workdir)["config"]["dim"] == 16 and checkpoint.step_folders(workdir) == []
  with caplog.at_level("WARNING"):
    result = train.train_and_evaluate(tiny_config(tiny_data), workdir, stop_at_step=2)
  assert int(sharding.to_host(result.state.step)) == 2 and checkpoint.latest_step(workdir) == 2
  assert checkpoint.read_model_json(workdir)["config"]["dim"] == 8
  assert any("describes a different model (dim: 16 in the workdir vs 8 in the config), but no checkpoint was "
             "saved with it" in r.getMessage() for r in caplog.records)
  # With a checkpoint in the workdir, another model is refused as before.
  with pytest.raises(checkpoint.ModelMismatchError, match="dim: 8 in the workdir vs 16 in the config"):
    train.train_and_evaluate(tiny_config(tiny_data, **{"model.dim": 16}), workdir)


@pytest.mark.parametrize("overrides,expect", [
    ({"model.dim": 0}, "config.model.dim: must be >= 1, got 0"),
    ({"batch_size": -4}, "config.batch_size: must be >= 1, got -4"),
    ({"lr": float("nan")}, "config.lr: must be finite and > 0, got nan"),
    ({"max_checkpoints_to_keep": 1}, "config.max_checkpoints_to_keep: must be 0 (keep all) or >= 2"),
])
def test_invalid_config_fails_before_touching_the_workdir(tmp_path, overrides, expect):
  workdir = tmp_path / "w"
  cfg = tiny_config(str(tmp_path / "tfds"), **overrides)
  with pytest.raises(config_checks.ConfigError) as e:
    train.train_and_evaluate(cfg, str(workdir))
  assert any(p.startswith(expect) for p in e.value.problems), e.value.problems
  assert not workdir.exists() and not (tmp_path / "tfds").exists()
