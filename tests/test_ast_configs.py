"""Tests of the AST training configs (configs/ast_*.py): they load through the real flag parser, are locked, build
the AST they describe, encode the published progressive schedules, and a tiny one trains through the real loop
across a stage switch (patch and batch size change) and leaves a checkpoint that loads as an AST."""
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sparse_restore import config_files

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# (patch, global batch, epochs, lr) and training-set sizes of shared/docs/ast.md §4.3.
PUBLISHED = {
    "ast_spa": (638_492, ((128, 32, 20, 2e-4), (256, 16, 15, 1e-4))),
    "ast_agan": (861, ((128, 32, 300, 2e-4), (256, 16, 200, 1e-4), (384, 8, 150, 8e-5))),
    "ast_densehaze": (45, ((256, 4, 2000, 2e-4), (384, 4, 1200, 1.2e-4), (512, 4, 800, 8e-5), (768, 2, 300, 3e-5),
                           (896, 2, 80, 1e-5))),
}
ALL = ("ast_spa", "ast_agan", "ast_densehaze", "ast_demo", "ast_tiny")
AST_B_PARAMS_M = 65.36  # shared/docs/ast.md §4.1: parameters of the PyTorch AST_B, in millions


def _load(name, *args):
  return config_files.load_config(CONFIGS / f"{name}.py", *args)


def _parse(argv):
  """Parses ``argv`` with a fresh ``--config`` flag defined exactly as sparse_restore.main defines it."""
  from absl import flags
  argv = ["prog"] + list(argv)
  fv = flags.FlagValues()
  config_files.define_config_flag("config", "config", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


# ---------------------------------------------------------------------------------------------------- loading

def test_configs_load_locked_and_override():
  """Every AST config loads through the CLI parser; a known field can be overridden, a misspelt one fails."""
  for name in ALL:
    path = str(CONFIGS / f"{name}.py")
    config = _parse([f"--config={path}", "--config.model.embed_dim=24", "--config.seed=7"])
    assert config.model.name == "ast" and config.model.embed_dim == 24 and config.seed == 7, name
    with pytest.raises(AttributeError, match="embed_dimm"):
      _parse([f"--config={path}", "--config.model.embed_dimm=24"])
    with pytest.raises(AttributeError):
      config.model.drop_pth_rate = 0.2  # locked: no new fields
    with pytest.raises(AttributeError):
      config.learning_rate = 1.0


def test_train_pairs_argument_recomputes_steps():
  """``--config configs/ast_densehaze.py:50`` converts epochs with 50 training pairs instead of 45."""
  config = _parse([f"--config={CONFIGS / 'ast_densehaze.py'}:50"])
  assert [s["num_steps"] for s in config.stages] == [13 * 2000, 13 * 1200, 13 * 800, 25 * 300, 25 * 80]
  assert config.num_train_steps == sum(s["num_steps"] for s in config.stages)


# ---------------------------------------------------------------------------------------------------- recipes

def test_published_stages_and_recipe():
  """Stages = the published (patch, batch, lr) with epochs -> ceil(pairs / batch) steps, 3 warm-up epochs, cosine
  to 1e-6; the shared AST recipe (AdamW wd 0.02, Charbonnier 1e-3, no clipping, 8 dihedral augmentations)."""
  from sparse_restore import schedules
  for name, (pairs, table) in PUBLISHED.items():
    config = _load(name)
    stages = schedules.resolve_stages(config)
    assert len(stages) == len(table), name
    for stage, (patch, batch, epochs, lr) in zip(stages, table):
      per_epoch = math.ceil(pairs / batch)
      assert (stage.patch_size, stage.batch_size, stage.num_steps) == (patch, batch, epochs * per_epoch), name
      assert stage.lr == lr and stage.schedule == "warmup_cosine" and stage.end_lr == 1e-6, name
      assert stage.warmup_steps == 3 * per_epoch, name
    assert stages[-1].end == config.num_train_steps == sum(s.num_steps for s in stages), name
    assert (config.data.patch_size, config.batch_size, config.lr) == table[0][:2] + (table[0][3],), name
    assert config.data.name == {"ast_spa": "spa", "ast_agan": "agan", "ast_densehaze": "densehaze"}[name]
    assert (config.b1, config.b2, config.eps, config.weight_decay) == (0.9, 0.999, 1e-8, 0.02), name
    assert config.loss == "charbonnier" and config.charbonnier_eps == 1e-3 and not config.grad_clip_norm, name
    assert config.data.random_flip and config.data.random_rot90 and config.seed == 1234, name
    # Test-time tiling of the reference scripts (test_raindrop.py 384 px, test_denseHaze.py 1152 px; SPA whole).
    tile = {"ast_spa": (0, 128), "ast_agan": (384, 128), "ast_densehaze": (1152, 384)}[name]
    assert (config.eval.tile, config.eval.tile_overlap) == tile, name
  # Totals quoted in the config docstrings.
  assert _load("ast_spa").num_train_steps == 19_953 * 20 + 39_906 * 15 == 997_650
  assert _load("ast_agan").num_train_steps == 35_100
  assert _load("ast_densehaze").num_train_steps == 56_740


def test_docstrings_start_with_the_command():
  """Each config's docstring starts with the command that runs it (with the config's own path)."""
  for name in ALL:
    text = (CONFIGS / f"{name}.py").read_text()
    doc = text.split('"""', 2)[1].lstrip("\n")
    first_command = next(line.strip() for line in doc.splitlines() if line.strip().startswith("python"))
    assert f"--config configs/{name}.py" in first_command, name
  for name in PUBLISHED:  # no invented paper numbers: the docstrings say they are unknown
    assert "Published numbers: NOT KNOWN" in (CONFIGS / f"{name}.py").read_text(), name


def _abstract_params(config):
  from sparse_restore import models, train
  module = train.create_model(config, "cpu", train=True)
  shapes = models.abstract_params(module)
  return module, shapes


def test_models_build_as_ast_b():
  """The task configs build AST_B (65.36 M parameters, the reference's count) with img_size 128 (the authors'
  test-time graph); model.json would record exactly these architecture arguments. Shapes only (eval_shape)."""
  import jax
  from sparse_restore import train
  from sparse_restore.models.ast import AST, PRESETS
  first = None
  for name in PUBLISHED:
    config = _load(name)
    module, shapes = _abstract_params(config)
    assert isinstance(module, AST)
    desc = train.describe_model(train.create_model(config, "cpu", train=False))
    preset = {k: (list(v) if isinstance(v, tuple) else v) for k, v in PRESETS["AST_B"].items()}
    assert {k: desc[k] for k in preset} == preset, name
    assert desc["drop_path_rate"] == 0.1 and desc["img_size"] == 128 and module.pad_multiple == 128, name
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))
    assert round(n / 1e6, 2) == AST_B_PARAMS_M, (name, n)
    first = first or jax.tree_util.tree_structure(shapes)
    assert jax.tree_util.tree_structure(shapes) == first, name
  # The small configs build too (and pad only to their own multiples).
  for name, multiple in (("ast_demo", 64), ("ast_tiny", 32)):
    module, shapes = _abstract_params(_load(name))
    assert isinstance(module, AST) and module.pad_multiple == multiple, name
    assert all(patch % multiple == 0 for patch in (s["patch_size"] for s in _load(name).stages)), name


# ---------------------------------------------------------------------------------------------------- training

def _write_tiny_pairs(root: pathlib.Path, train: int = 16, test: int = 2):
  """A tiny paired rain set in the 'rain200h' folder layout (synthetic streaks on scikit-image photo crops):
  ``train`` 80 px and ``test`` 64 px pairs (building it takes well under a second, unlike the 432-tile demo set)."""
  from PIL import Image
  from sparse_restore.datasets import synthetic_rain as sr
  sources = {n: sr.source_image(n) for n in ("astronaut", "rocket", "brick")}
  for split, count, size in (("train", train, 80), ("test", test, 64)):
    for sub in ("input", "target"):
      (root / split / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
      rainy, clean, _ = sr.make_pair(sources, i, size=size, seed=(7, len(split)))
      Image.fromarray(rainy).save(root / split / "input" / f"{i}.png")
      Image.fromarray(clean).save(root / split / "target" / f"{i}.png")


def _flat_params(params):
  import jax
  return {jax.tree_util.keystr(kp): np.asarray(x) for kp, x in jax.tree_util.tree_leaves_with_path(params)}


def _driver(workdir: str, raw_dir: str, out: str):
  """Trains configs/ast_tiny.py on the pairs in ``raw_dir`` through ``train.train_and_evaluate`` (run as a
  subprocess by the test, see ``__main__``) and records what the loop asked the input pipeline for, the logged
  metrics and the loss of the final parameters on the first training batch."""
  import jax
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  from sparse_restore import input_pipeline, losses, train
  config = _load("ast_tiny")
  config.data.name = "rain200h"  # any folder dataset; the layout of _write_tiny_pairs
  config.data.manual_dir = raw_dir
  config.lock()
  calls = []

  def dataset_fn(data_config, *, global_batch_size, seed, **kw):
    ds = input_pipeline.train_dataset(data_config, global_batch_size=global_batch_size, seed=seed, **kw)
    first = next(iter(ds))  # the loop's own iterator starts with the same (seeded) batch
    calls.append({"patch_size": int(data_config.patch_size), "batch_size": int(global_batch_size),
                  "shape": list(first["input"].shape), "first": first})
    return ds

  result = train.train_and_evaluate(config, workdir, train_dataset_fn=dataset_fn)
  params = jax.device_get(result.state.params)
  module = train.create_model(config, "cpu", train=False)
  b0 = calls[0]["first"]
  loss_fn = losses.get(config.loss)
  final_loss = float(loss_fn(module.apply({"params": params}, b0["input"]), b0["target"]))
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  scalars = {tag: {int(e.step): float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
             for tag in ("train/loss", "train/lr")}
  np.savez(os.path.join(out, "final_params.npz"), **_flat_params(params))
  with open(os.path.join(out, "result.json"), "w") as f:
    json.dump({"calls": [{k: v for k, v in c.items() if k != "first"} for c in calls], "final_loss": final_loss,
               "identity_loss": float(loss_fn(b0["input"], b0["target"])), "step": int(result.state.step),
               "scalars": scalars}, f)


@pytest.mark.slow  # Compiles two train steps (one per stage): ~80 s of CPU time, ~3.5 min on a busy 2-core host.
def test_tiny_progressive_training(tmp_path):
  """configs/ast_tiny.py trains through the real loop: stage 1 (32 px, batch 8) then stage 2 (64 px, batch 4,
  fresh optimizer and schedule); the final parameters have a lower loss on the first batch than the initial ones
  had; both stage ends are checkpointed with their stage; ``checkpoint.load_model(workdir)`` gives an AST with
  the final parameters.

  The loop runs in a subprocess on one CPU device with XLA's cheapest CPU code generation: compiling the two
  train steps (one per stage) dominates the run; results are unaffected."""
  from sparse_restore import schedules
  config = _load("ast_tiny")
  s1, s2 = schedules.resolve_stages(config)
  assert (s1.patch_size, s1.batch_size, s2.patch_size, s2.batch_size) == (32, 8, 64, 4)
  workdir, raw = tmp_path / "work", tmp_path / "raw"
  _write_tiny_pairs(raw)
  env = dict(os.environ)
  env["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  proc = subprocess.run([sys.executable, __file__, str(workdir), str(raw), str(tmp_path)], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  res = json.loads((tmp_path / "result.json").read_text())

  # The loop switched stage: a new data stream with the stage's patch and batch size.
  assert [(c["patch_size"], c["batch_size"], c["shape"]) for c in res["calls"]] == [
      (32, 8, [8, 32, 32, 3]), (64, 4, [4, 64, 64, 3])]
  assert res["step"] == s2.end == config.num_train_steps
  loss = {int(k): v for k, v in res["scalars"]["train/loss"].items()}
  lr = {int(k): v for k, v in res["scalars"]["train/lr"].items()}
  assert sorted(loss) == list(range(1, s2.end + 1)) and all(math.isfinite(v) for v in loss.values())
  # The lr logged after step s is the stage's schedule at its local step: each stage warms up from 0 to its own
  # peak (2e-3, then 1e-3: a fresh schedule, not the continuation of the first).
  assert lr[1] == 0.0 and math.isclose(lr[2], s1.lr, rel_tol=1e-5)
  assert lr[s1.end + 1] == 0.0 and math.isclose(lr[s1.end + 2], s2.lr, rel_tol=1e-5)
  assert all(v <= s2.lr * (1 + 1e-5) for s, v in lr.items() if s > s1.end)
  # Training lowered the loss: the initial params' loss on the first batch (logged at step 1) vs the final ones.
  assert res["final_loss"] < 0.92 * loss[1], (res["final_loss"], loss[1], res["identity_loss"])

  # Both stage ends were checkpointed with their stage index; the workdir loads as an AST with the final params.
  import jax
  from sparse_restore import checkpoint
  from sparse_restore.models.ast import AST
  ckpts = checkpoint.Checkpoints(str(workdir), 5)
  try:
    assert sorted(ckpts.manager.all_steps()) == [s1.end, s2.end]
    assert ckpts.restore_meta(s1.end) == {"step": s1.end, "stage": 0, "stage_step": s1.num_steps}
    assert ckpts.restore_meta(s2.end) == {"step": s2.end, "stage": 1, "stage_step": s2.num_steps}
  finally:
    ckpts.close()
  module, params, info = checkpoint.load_model(str(workdir))
  assert isinstance(module, AST) and info["arch"] == "ast" and info["step"] == s2.end
  assert (module.img_size, module.embed_dim, tuple(module.depths)) == (32, 8, (1,) * 9)
  final = np.load(tmp_path / "final_params.npz")
  loaded = _flat_params(params)
  assert sorted(loaded) == sorted(final.files)
  for k in final.files:
    np.testing.assert_array_equal(loaded[k], final[k], err_msg=k)


if __name__ == "__main__":
  _driver(*sys.argv[1:4])
