"""Training-workdir checkpoints (sparse_restore.checkpoint): the Orbax Checkpoints class, model.json checks and
initialisation from a saved model. Exports and load_model are exercised by the converter, inference and training
tests."""
import os
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_restore import checkpoint, config_files, models, schedules, sharding, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**model_overrides):
  cfg = config_files.load_config(REPO / "configs" / "tiny.py")
  for k, v in model_overrides.items():
    cfg.model[k] = v
  return cfg


def random_params(abstract, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: rng.uniform(-0.5, 0.5, a.shape).astype(a.dtype), abstract)


def test_check_model_json_accepts_the_same_model_and_names_each_difference(tmp_path):
  workdir = str(tmp_path)
  description = train.describe_model(train.create_model(tiny_config(), train=False))
  assert checkpoint.check_model_json(workdir, "drsformer", description) is False  # no model.json yet
  checkpoint.write_model_json(workdir, "drsformer", description, source="test")
  assert checkpoint.check_model_json(workdir, "drsformer", description) is True
  other = dict(description, dim=16, use_mefc=not description["use_mefc"])
  with pytest.raises(checkpoint.ModelMismatchError, match=r"dim: 8 in the workdir vs 16 in the config, "
                     r"use_mefc: .* in the workdir vs .* in the config\)\. Refusing to resume"):
    checkpoint.check_model_json(workdir, "drsformer", other)
  with pytest.raises(checkpoint.ModelMismatchError, match="arch 'drsformer' in the workdir vs 'ast' in the config"):
    checkpoint.check_model_json(workdir, "ast", description)


def test_init_from_loads_exported_params(tmp_path):
  """config.init_from reads an exported model (or a workdir) and checks it against the config's network."""
  cfg = tiny_config()
  abstract = models.abstract_params(train.create_model(cfg))
  params = random_params(abstract)
  info = {"arch": "drsformer", "config": train.describe_model(train.create_model(cfg, train=False))}
  export = checkpoint.save_model(str(tmp_path / "export"), info["arch"], info["config"], params)
  mesh = sharding.make_mesh()
  loaded = checkpoint.load_init_params(export, "drsformer", abstract, mesh)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(sharding.to_host(loaded)),
                          jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))
  abstract16 = models.abstract_params(train.create_model(tiny_config(dim=16)))
  with pytest.raises(checkpoint.ModelMismatchError, match="has shape"):
    checkpoint.load_init_params(export, "drsformer", abstract16, mesh)
  with pytest.raises(checkpoint.ModelMismatchError, match="holds a 'drsformer' model"):
    checkpoint.load_init_params(export, "ast", abstract, mesh)


def test_checkpoints_save_and_restore_state_meta_and_data_position(tmp_path):
  """One step's params, optimizer state, stage metadata and grain iterator position come back as saved; older
  steps beyond max_to_keep are deleted."""
  stage = schedules.Stage(index=1, start=4, num_steps=10, patch_size=8, batch_size=2, lr=1e-3)
  data = grain.MapDataset.range(100).to_iter_dataset()
  ckpts = checkpoint.Checkpoints(str(tmp_path), max_to_keep=2)
  try:
    it = iter(data)
    for step in (5, 6, 7):
      next(it)
      state = train.TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.full((3,), float(step))},
                               opt_state={"mu": jnp.full((3,), -float(step))})
      ckpts.save(state, it, stage)
    ckpts.wait()
    assert ckpts.latest_step() == 7 and checkpoint.latest_step(str(tmp_path)) == 7
    assert sorted(int(d) for d in os.listdir(ckpts.directory) if d.isdigit()) == [6, 7]
    assert ckpts.restore_meta(6) == {"step": 6, "stage": 1, "stage_step": 2}
    abstract = jax.eval_shape(lambda: state)
    fresh = iter(data)
    restored = ckpts.restore(6, abstract, fresh)
    np.testing.assert_array_equal(restored["params"]["w"], np.full(3, 6.0))
    np.testing.assert_array_equal(restored["opt_state"]["mu"], np.full(3, -6.0))
    assert next(fresh) == 2  # saved after two elements of the stream had been read
    params_only = ckpts.restore(7, abstract, with_opt_state=False)
    assert "opt_state" not in params_only
    np.testing.assert_array_equal(params_only["params"]["w"], np.full(3, 7.0))
    with pytest.raises(checkpoint.CheckpointError, match=f"{ckpts.directory}/7: the params item does not match "
                       r"this config's model and optimizer: 1 with other shapes: w \(3,\) stored, \(4,\) needed"):
      ckpts.restore(7, jax.eval_shape(lambda: state.replace(params={"w": jnp.zeros((4,))})))
  finally:
    ckpts.close()
