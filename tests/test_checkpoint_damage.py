"""Damaged checkpoints: truncated or missing parameter data is reported as damage (naming the folder), not as a
parameter mismatch; a damaged newest training checkpoint (empty folder, unfinished save, truncated data) is
skipped for the newest intact one, by load_model (infer/evaluate) and by the training resume (Checkpoints)."""
import glob
import json
import os
import shutil

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_restore import checkpoint, models, schedules, train

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1]}
N = 2000  # floats per toy array: more than Orbax inlines in its index, so each lives in a data file


def _largest_data_file(item_dir):
  files = [f for f in glob.glob(os.path.join(item_dir, "**", "*"), recursive=True)
           if os.path.isfile(f) and os.sep + "d" + os.sep in f]
  return max(files, key=os.path.getsize)


def _truncate(path, keep=0.5):
  with open(path, "r+b") as f:
    f.truncate(int(os.path.getsize(path) * keep))


DAMAGE = {
    "empty_folder": lambda step_dir: (shutil.rmtree(step_dir), os.mkdir(step_dir)),
    "removed_metadata": lambda step_dir: os.remove(os.path.join(step_dir, checkpoint.STEP_METADATA)),
    "removed_data_file": lambda step_dir: os.remove(_largest_data_file(os.path.join(step_dir, "params"))),
    "truncated_data_file": lambda step_dir: _truncate(_largest_data_file(os.path.join(step_dir, "params"))),
    "truncated_meta_item": lambda step_dir: _truncate(os.path.join(step_dir, "meta", "metadata")),
}


# ----------------------------------------------------------------------------------------------- exported models


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  module = models.create("drsformer", **TINY)
  abstract = models.abstract_params(module)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda a: rng.uniform(-0.1, 0.1, a.shape).astype(np.float32), abstract)
  path = str(tmp_path_factory.mktemp("export") / "tiny")
  checkpoint.save_model(path, "drsformer", TINY, params)
  return path, params


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


@pytest.mark.parametrize("damage", ["truncated", "emptied", "removed"])
def test_damaged_export_is_reported_as_damage_naming_the_folder(export, tmp_path, damage):
  path = _copy(export[0], tmp_path / "model")
  target = _largest_data_file(os.path.join(path, "params"))
  if damage == "truncated":
    _truncate(target)
  elif damage == "emptied":
    _truncate(target, 0)
  else:
    os.remove(target)
  with pytest.raises(checkpoint.CheckpointDamagedError) as e:
    checkpoint.load_model(path)
  msg = str(e.value)
  assert msg.startswith(f"{path}/params: parameter data is damaged or truncated (")
  assert "do not match" not in msg and "tensorstore_spec" not in msg and len(msg) < 600, msg


def test_other_network_is_a_mismatch_not_damage(export, tmp_path):
  path = _copy(export[0], tmp_path / "model")
  info = json.load(open(os.path.join(path, "model.json")))
  info["config"]["dim"] = 16
  json.dump(info, open(os.path.join(path, "model.json"), "w"))
  with pytest.raises(checkpoint.CheckpointError) as e:
    checkpoint.load_model(path)
  assert not isinstance(e.value, checkpoint.CheckpointDamagedError)
  assert "parameters do not match drsformer(" in str(e.value)
  assert "with other shapes: " in str(e.value) and "stored, (1, 1, 32, 32) needed" in str(e.value)
  json.dump(dict(info, config=dict(TINY, use_mefc=False)), open(os.path.join(path, "model.json"), "w"))
  with pytest.raises(checkpoint.CheckpointError, match=r"parameters do not match .*\d+ unexpected: "):
    checkpoint.load_model(path)


def test_intact_export_still_loads_exactly(export):
  _, params, _ = checkpoint.load_model(export[0])
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(export[1])):
    np.testing.assert_array_equal(np.asarray(a), b)


# ----------------------------------------------------------------------------------------------- training workdirs


_NOISE = np.random.default_rng(0).uniform(0, 0.5, N).astype(np.float32)  # incompressible: Orbax cannot inline it


def _state(step):
  return train.TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.asarray(step + _NOISE)},
                          opt_state={"mu": jnp.asarray(-step - _NOISE)})


def _workdir(path, steps=(4, 5, 6), keep=3):
  """A workdir with checkpoints of a toy state at ``steps`` (params w = step + noise, opt_state mu = -w)."""
  stage = schedules.Stage(index=0, start=0, num_steps=10, patch_size=8, batch_size=2, lr=1e-3)
  ckpts = checkpoint.Checkpoints(str(path), max_to_keep=keep)
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  try:
    for step in steps:
      next(it)
      ckpts.save(_state(step), it, stage)
  finally:
    ckpts.close()
  return str(path)


def _abstract(_step=None):
  return jax.eval_shape(lambda: _state(0))


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, damage):
  """Checkpoints.restore_newest: the newest step is damaged in one of five ways; step 5 is restored (values
  and data position), step 6 is moved to checkpoints_damaged/ with a warning naming it, and a new step 6 can
  be saved."""
  workdir = _workdir(tmp_path / "w")
  step6 = os.path.join(workdir, "checkpoints", "6")
  DAMAGE[damage](step6)
  ckpts = checkpoint.Checkpoints(workdir, max_to_keep=3)
  try:
    step, meta, restored = ckpts.restore_newest(_abstract, lambda s, m: True)
    assert (step, meta) == (5, {"step": 5, "stage": 0, "stage_step": 5})
    np.testing.assert_array_equal(restored["params"]["w"], 5 + _NOISE)
    np.testing.assert_array_equal(restored["opt_state"]["mu"], -5 - _NOISE)
    it = iter(grain.MapDataset.range(100).to_iter_dataset())
    ckpts.restore_data(5, it)
    assert next(it) == 2  # saved after two elements had been read
    assert not os.path.exists(step6)
    assert os.listdir(os.path.join(workdir, checkpoint.DAMAGED_DIR)) == ["6"]
    assert ckpts.latest_step() == 5
    stage = schedules.Stage(index=0, start=0, num_steps=10, patch_size=8, batch_size=2, lr=1e-3)
    ckpts.save(_state(6), it, stage)  # the step number is free again
    ckpts.wait()
    assert ckpts.latest_step() == 6
  finally:
    ckpts.close()
  assert checkpoint.latest_step(workdir) == 6


def test_read_only_users_take_the_newest_intact_step_without_moving_anything(tmp_path, caplog):
  """checkpoint.latest_step (cheap checks) and load_model (which restores, so it also finds truncated data)
  pass over damaged newer steps, warn, and leave the workdir as it is."""
  workdir = _workdir(tmp_path / "w")
  module = models.create("drsformer", **TINY)
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(lambda a: rng.uniform(0, 0.5, a.shape).astype(np.float32),
                                  models.abstract_params(module))
  # A workdir of the tiny DRSformer: reuse the toy workdir's layout with real params items.
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  stage = schedules.Stage(index=0, start=0, num_steps=10, patch_size=8, batch_size=2, lr=1e-3)
  ckpts = checkpoint.Checkpoints(workdir, max_to_keep=3)
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  for step in (4, 5, 6):
    p = jax.tree_util.tree_map(lambda x, s=step: x + s, params)
    ckpts.save(train.TrainState(step=jnp.asarray(step, jnp.int32), params=p, opt_state={"n": jnp.zeros(())}), it,
               stage)
  ckpts.close()
  checkpoint.write_model_json(workdir, "drsformer", TINY)
  DAMAGE["empty_folder"](os.path.join(workdir, "checkpoints", "6"))
  DAMAGE["truncated_data_file"](os.path.join(workdir, "checkpoints", "5"))
  assert checkpoint.step_folders(workdir) == [6, 5, 4]
  assert checkpoint.latest_step(workdir) == 5  # cheap checks: 5 looks finished
  _, loaded, info = checkpoint.load_model(workdir)
  assert info["step"] == 4 and len(info["skipped"]) == 2
  assert info["skipped"][0] == f"{workdir}/checkpoints/6: empty folder"
  assert info["skipped"][1].startswith(f"{workdir}/checkpoints/5/params: parameter data is damaged or truncated")
  for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b + 4)
  assert checkpoint.step_folders(workdir) == [6, 5, 4]  # nothing moved
  with pytest.raises(checkpoint.CheckpointDamagedError, match=r"checkpoints/5/params: parameter data is damaged"):
    checkpoint.load_model(workdir, step=5)
  with pytest.raises(checkpoint.CheckpointDamagedError, match=r"checkpoints/6: empty folder"):
    checkpoint.load_model(workdir, step=6)
  DAMAGE["removed_metadata"](os.path.join(workdir, "checkpoints", "4"))
  with pytest.raises(checkpoint.CheckpointDamagedError, match=r": no intact checkpoint: .*6: empty folder; .*5/params"
                                                              r": parameter data is damaged.*; .*4: no "
                                                              r"_CHECKPOINT_METADATA \(the save did not finish\)"):
    checkpoint.load_model(workdir)


def test_no_intact_checkpoint_is_an_error_that_changes_nothing(tmp_path):
  workdir = _workdir(tmp_path / "w", steps=(5, 6))
  DAMAGE["empty_folder"](os.path.join(workdir, "checkpoints", "6"))
  DAMAGE["truncated_data_file"](os.path.join(workdir, "checkpoints", "5"))
  ckpts = checkpoint.Checkpoints(workdir, max_to_keep=3)
  try:
    with pytest.raises(checkpoint.CheckpointDamagedError, match=r"no intact checkpoint to resume from: .*/6: empty "
                                                                r"folder; .*/5: the training state is damaged or "
                                                                r"truncated .*Nothing was changed"):
      ckpts.restore_newest(_abstract, lambda s, m: True)
  finally:
    ckpts.close()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["5", "6"]
  assert not os.path.exists(os.path.join(workdir, checkpoint.DAMAGED_DIR))


def test_other_state_is_a_mismatch_at_once(tmp_path):
  workdir = _workdir(tmp_path / "w", steps=(5, 6))
  ckpts = checkpoint.Checkpoints(workdir, max_to_keep=3)
  other = jax.eval_shape(lambda: _state(0).replace(params={"w": jnp.zeros((N + 1,))}))
  try:
    with pytest.raises(checkpoint.CheckpointError, match=r"6: the params item does not match") as e:
      ckpts.restore_newest(lambda s: other, lambda s, m: True)
    assert not isinstance(e.value, checkpoint.CheckpointDamagedError)
  finally:
    ckpts.close()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["5", "6"]


def test_model_json_of_a_run_without_checkpoints_is_replaced(tmp_path):
  description = {"dim": 8}
  checkpoint.write_model_json(str(tmp_path), "drsformer", dict(description, dim=0))
  with pytest.raises(checkpoint.ModelMismatchError, match="dim: 0 in the workdir vs 8 in the config"):
    checkpoint.check_model_json(str(tmp_path), "drsformer", description)
  assert checkpoint.check_model_json(str(tmp_path), "drsformer", description, replace_unused=True) is False
  (tmp_path / "model.json").write_text("{trunc")
  assert checkpoint.check_model_json(str(tmp_path), "drsformer", description, replace_unused=True) is False
  with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
    checkpoint.check_model_json(str(tmp_path), "drsformer", description)
