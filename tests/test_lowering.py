"""The networks compile for accelerators, checked from this CPU machine: the forward pass and the training
module's own train step (``train.make_train_step``) of both networks lower for ``cuda`` and ``tpu`` with the policy
each platform gets (``train.create_model(config, platform)``), so a change that cannot be lowered for an
accelerator fails here. Nothing is compiled.

What the lowered StableHLO must show on GPU/TPU under the 'xla' policy: XLA's grouped (depthwise) convolutions and
none of the CPU guards (optimization barriers, materialising conditionals); DRSformer's repeated blocks as loops.
Under the 'taps' policy no grouped convolution is left. On CPU the same forward pass has the guards instead.
"""
import functools
import pathlib

import jax
import jax.numpy as jnp
import pytest

from sparse_restore import bench, config_files, losses, models, schedules, sharding, train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
PLATFORMS = ("cuda", "tpu")


def _config(name, **policy):
  config = config_files.load_config(str(CONFIGS / name))
  if name == "tiny.py":  # every grouped convolution of the network: MSFN's, TKSA's, MEFC's
    config.model.use_mefc = True
    config.model.ffn_type = "msfn"
  config.policy.conv = "auto"  # ast_tiny.py pins 'xla' for its CPU test runs
  for key, value in policy.items():
    config.policy[key] = value
  return config


@functools.lru_cache(maxsize=None)
def _traced(name, platform, what, conv="auto"):
  """The traced forward pass or train step of ``name`` as the entry points build it for ``platform``. Platforms
  whose networks are equal share one trace (tracing is most of the cost; lowering is per platform)."""
  config = _config(name, conv=conv)
  module = train.create_model(config, platform, train=(what == "train"))
  return _trace(name, module, what, config.data.patch_size)


@functools.lru_cache(maxsize=None)
def _trace(name, module, what, patch):
  config = _config(name)
  params = models.abstract_params(module)
  x = jax.ShapeDtypeStruct((2, patch, patch, 3), jnp.float32)
  if what == "forward":
    return jax.jit(lambda p, x: module.apply({"params": p}, x, train=False)).trace(params, x)
  stage = schedules.resolve_stages(config)[0]
  tx, schedule = train.create_optimizer(config, stage)
  mesh = sharding.make_mesh(jax.devices()[:1])
  step = train.make_train_step(mesh, module=module, tx=tx, schedule=schedule,
                               loss_fn=losses.get(config.loss, charbonnier_eps=config.charbonnier_eps), stage_start=0)
  state = jax.eval_shape(
      lambda p: train.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p)), params)
  return step.trace(state, {"input": x, "target": x}, jax.eval_shape(lambda: jax.random.key(0)))


def _stats(name, platform, what, conv="auto"):
  text = _traced(name, platform, what, conv).lower(lowering_platforms=(platform,)).as_text()
  return bench.hlo_stats(text), text


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", ["tiny.py", "ast_tiny.py"])
@pytest.mark.parametrize("what", ["forward", "train"])
def test_lowers_for_accelerator_with_xla_grouped_convolutions_and_no_cpu_guards(name, platform, what):
  assert train.create_model(_config(name), platform).policy.conv == "xla"
  stats, text = _stats(name, platform, what)
  assert stats["grouped"] > 0 and stats["convolutions"] >= stats["grouped"], stats
  assert stats["optimization_barriers"] == 0 and stats["conditionals"] == 0, stats
  if name == "tiny.py":
    assert stats["while_loops"] > 0, stats  # scanned levels / MEFC steps on accelerators
  if what == "train":
    assert "stablehlo.sqrt" in text or "stablehlo.rsqrt" in text  # AdamW's update and the gradient norm


def test_taps_policy_lowers_for_cuda_without_grouped_convolutions():
  for what in ("forward", "train"):
    xla, _ = _stats("tiny.py", "cuda", what)
    taps, _ = _stats("tiny.py", "cuda", what, conv="taps")
    assert taps["grouped"] == 0 and 0 < taps["convolutions"] < xla["convolutions"], (what, taps, xla)
    assert taps["optimization_barriers"] == 0 and taps["conditionals"] == 0, taps


def test_cpu_forward_has_the_guards_instead():
  """The contrast that shows the checks above can fail: on CPU the shift kernels replace every grouped
  convolution, with barriers around them."""
  stats, _ = _stats("tiny.py", "cpu", "forward")
  assert stats["grouped"] == 0 and stats["optimization_barriers"] > 0, stats


def test_hlo_stats_counts_grouped_and_distinct_convolutions():
  def f(x, k_dw, k_full):
    dw = jax.lax.conv_general_dilated(x, k_dw, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=4)
    same = jax.lax.conv_general_dilated(x, k_dw, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=4)
    return jax.lax.conv_general_dilated(dw + same, k_full, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  args = (jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4)), jnp.ones((1, 1, 4, 4)))
  stats = bench.hlo_stats(jax.jit(f).lower(*args).as_text())
  assert (stats["convolutions"], stats["grouped"], stats["distinct"]) == (3, 2, 2), stats
  # The kernel gradient of a depthwise convolution is a batch-grouped convolution (feature_group_count = 1).
  dw_only = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", feature_group_count=4,
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
  text = jax.jit(jax.grad(dw_only, argnums=1)).lower(*args[:2]).as_text()
  assert "batch_group_count = 4" in text
  assert bench.hlo_stats(text)["grouped"] == bench.hlo_stats(text)["convolutions"] == 1
