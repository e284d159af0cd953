"""config_checks.validate_config: every shipped config passes; each invalid value is reported under its field,
all of them at once, without building data or compiling anything."""
import math
import pathlib

import pytest

from sparse_restore import config_checks, config_files

REPO = pathlib.Path(__file__).resolve().parents[1]


def load(name="tiny", **overrides):
  cfg = config_files.load_config(REPO / "configs" / f"{name}.py")
  cfg.update_from_flattened_dict(overrides)  # dotted keys, e.g. "model.dim"
  return cfg


def problems(cfg, **kwargs):
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.validate_config(cfg, **kwargs)
  return e.value.problems


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs").glob("*.py")))
def test_shipped_configs_are_valid(name):
  cfg = load(name)
  config_checks.validate_config(cfg)
  config_checks.validate_config(cfg, mode="evaluate")


@pytest.mark.parametrize("overrides,expected", [
    ({"model.dim": 0}, ["config.model.dim: must be >= 1, got 0"]),
    ({"model.heads": (1, 0, 1, 1)}, ["config.model.heads[1]: must be >= 1, got 0"]),
    ({"model.ffn_expansion_factor": 0.0}, ["config.model.ffn_expansion_factor: must be > 0, got 0"]),
    ({"model.topk_ratios": (0.5, math.nan, 0.5, 0.5)}, ["config.model.topk_ratios[1]: must be finite, got nan"]),
    ({"model.ffn_type": "xyz"}, ["config.model: drsformer cannot be built from these arguments (ValueError: "
                                 "ffn_type must be one of ['dfn', 'fn', 'gdfn', 'msfn'], got 'xyz')"]),
    ({"batch_size": -4}, ["config.batch_size: must be >= 1, got -4"]),
    ({"lr": math.nan}, ["config.lr: must be finite and > 0, got nan"]),
    ({"lr": -1.0, "end_lr": math.inf}, ["config.lr: must be finite and > 0, got -1.0",
                                         "config.end_lr: must be finite and >= 0, got inf"]),
    ({"num_train_steps": 0}, ["config.num_train_steps: must be >= 1, got 0"]),
    ({"data.patch_size": 36}, ["config.data.patch_size: 36 is not a multiple of 8, which drsformer needs"]),
    ({"log_every_steps": 0, "checkpoint_every_steps": -1, "eval_every_steps": -1},
     ["config.log_every_steps: must be >= 1, got 0", "config.checkpoint_every_steps: must be >= 1, got -1",
      "config.eval_every_steps: must be >= 0, got -1"]),
    ({"max_checkpoints_to_keep": 1}, ["config.max_checkpoints_to_keep: must be 0 (keep all) or >= 2: with one "
                                      "checkpoint, a damaged latest checkpoint leaves nothing to resume from"]),
    ({"b2": 1.0, "eps": 0.0, "weight_decay": -1e-4}, ["config.b2: must be < 1, got 1", "config.eps: must be > 0, got 0",
                                                      "config.weight_decay: must be >= 0, got -0.0001"]),
    ({"loss": "l2", "schedule": "step"}, ["config.schedule: must be one of ['constant', 'constant_cosine', "
                                          "'warmup_cosine'], got 'step'",
                                          "config.loss: must be one of ['l1', 'charbonnier'], got 'l2'"]),
    ({"compute_dtype": "float16"}, ["config.compute_dtype: must be one of ['float32', 'bfloat16'], got 'float16'"]),
    ({"data.name": "rain300", "data.num_workers": -1},
     ["config.data.name: must be one of ['agan', 'ddn', 'densehaze', 'did', 'rain200h', 'rain200l', 'spa', "
      "'synthetic_rain'], got 'rain300'", "config.data.num_workers: must be >= 0, got -1"]),
])
def test_each_invalid_value_is_named(overrides, expected):
  assert problems(load(**overrides)) == expected


def test_eval_tiles_use_the_network_multiple():
  config_checks.validate_config(load(**{"eval.tile": 16, "eval.tile_overlap": 4}))
  assert problems(load(**{"eval.tile": 16, "eval.tile_overlap": 16})) == [
      "config.eval.tile_overlap: tile overlap 16 (rounded to a multiple of 8) must be smaller than the tile size 16"]


def test_batch_must_split_over_the_devices_and_stages_are_checked_one_by_one():
  assert problems(load(batch_size=6), num_devices=4) == [
      "config.batch_size: the global batch 6 does not split over the 4 devices; choose a multiple of 4"]
  cfg = load(num_train_steps=-1)
  cfg.stages = ({"num_steps": 2}, {"num_steps": 2, "patch_size": 20, "lr": -1.0, "batch_size": 0})
  assert problems(cfg) == ["config.stages[1].batch_size: must be >= 1, got 0",
                           "config.stages[1].patch_size: 20 is not a multiple of 8, which drsformer needs",
                           "config.stages[1].lr: must be finite and > 0, got -1.0"]
  cfg.stages = ({"num_steps": 2, "patchsize": 8},)
  assert problems(cfg) == ["config.stages: config.stages[0]: unknown keys ['patchsize']; allowed: ['num_steps', "
                           "'patch_size', 'batch_size', 'lr', 'schedule', 'constant_steps', 'warmup_steps', 'end_lr']"]


def test_ast_model_fields():
  assert problems(load("ast_tiny", **{"model.drop_path_rate": 1.5, "model.win_size": 0})) == [
      "config.model.drop_path_rate: must be in [0, 1), got 1.5", "config.model.win_size: must be >= 1, got 0"]


def test_evaluate_mode_checks_what_evaluation_uses(tmp_path):
  cfg = load(lr=math.nan, **{"model.dim": 0, "eval.tile": -1})
  assert problems(cfg, mode="evaluate") == ["config.eval.tile: must be >= 0, got -1"]
  cfg = load(init_from=str(tmp_path / "missing"))
  assert problems(cfg, workdir=str(tmp_path / "w")) == [
      f"config.init_from: {tmp_path / 'missing'}: no such directory (an exported model or a training workdir)"]
  (tmp_path / "w" / "checkpoints" / "2").mkdir(parents=True)  # resuming: init_from is ignored, so not checked
  config_checks.validate_config(cfg, workdir=str(tmp_path / "w"))
