"""The policy the entry points choose per platform decides the code paths: on GPU/TPU the networks trace to
standard XLA ops, on CPU to the shifted-tap kernels and their guards.

Checked on traced programs (no compilation): a policy for any platform can be traced on this CPU. The CPU forward
pass uses the shifted-tap depthwise convolutions and barriers; the GPU/TPU train-step gradient uses
``lax.conv_general_dilated`` with ``feature_group_count > 1`` and no barrier or materialising conditional. AST's
chunked (``lax.map``) paths are off on accelerators.
"""
import collections
import pathlib

import jax
import jax.numpy as jnp
import pytest

from sparse_restore import config_files, losses, models, train
from sparse_restore.models import policy

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _primitive_counts(jaxpr, counts=None):
  """Counts primitives in a jaxpr and every sub-jaxpr (pjit, scan, remat, custom_vjp bodies)."""
  counts = collections.Counter() if counts is None else counts
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated" and eqn.params["feature_group_count"] > 1:
      name = "grouped_conv"
    counts[name] += 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          _primitive_counts(sub, counts)
  return counts


def _traced(config_name, platform, grad, **model_overrides):
  """Primitive counts of the loss (or its gradient) of ``config_name``'s network as training builds it for
  ``platform``."""
  config = config_files.load_config(str(CONFIGS / config_name))
  config.policy.conv = "auto"  # ast_tiny.py pins 'xla' (faster to compile for its short test runs)
  for key, value in model_overrides.items():
    config.model[key] = value
  module = train.create_model(config, platform)
  params = models.abstract_params(module)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  loss_fn = losses.get("l1")

  def loss(p, x):
    return loss_fn(module.apply({"params": p}, x, rngs={"dropout": jax.random.key(1)}, train=True), x)

  return _primitive_counts(jax.make_jaxpr(jax.grad(loss) if grad else loss)(params, x))


def _assert_xla_vs_shift(accelerator, cpu):
  # Accelerator: grouped convolutions (forward and both VJPs) and none of the shift path's materialising
  # barriers or conditionals (cpu_kernels.materialize). CPU: no grouped convolution at all; per-tap slices and
  # barriers instead.
  assert accelerator["grouped_conv"] > 0 and accelerator["optimization_barrier"] == 0, accelerator
  assert accelerator["cond"] == 0, accelerator
  assert cpu["grouped_conv"] == 0 and cpu["optimization_barrier"] > 0, cpu
  assert cpu["slice"] > accelerator["slice"], (cpu["slice"], accelerator["slice"])


@pytest.mark.parametrize("platform", ["gpu", "cuda", "tpu"])
def test_platform_policies(platform):
  accelerator, cpu = policy.for_platform(platform), policy.for_platform("cpu")
  assert accelerator.conv == "xla" and not accelerator.fusion_guards and accelerator.chunk_bytes == 0
  assert accelerator.scan_blocks
  assert cpu.conv == "shift" and cpu.fusion_guards and cpu.chunk_bytes > 0 and not cpu.scan_blocks
  # An explicit choice wins; None and 'auto' keep the platform's.
  assert policy.for_platform(platform, conv="shift").conv == "shift"
  assert policy.for_platform("cpu", conv="auto", scan_blocks=None) == cpu
  assert policy.for_platform("cpu", dtype="bfloat16").compute_dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="unknown policy field"):
    policy.for_platform("cpu", conv_impl="xla")
  with pytest.raises(ValueError, match="policy.conv must be one of"):
    policy.for_platform("cpu", conv="cudnn")


def test_drsformer_train_gradient_uses_xla_convs_on_gpu_and_shift_on_cpu():
  overrides = dict(use_mefc=True, ffn_type="msfn")  # every grouped conv of the network: MSFN, TKSA, MEFC
  gpu = _traced("tiny.py", "gpu", True, **overrides)
  cpu = _traced("tiny.py", "cpu", False, **overrides)  # the forward pass shows the choice (its VJP is tested elsewhere)
  _assert_xla_vs_shift(gpu, cpu)
  cpu_grad = _traced("tiny.py", "cpu", True, **overrides)
  assert cpu_grad["grouped_conv"] == 0 and cpu_grad["cond"] > 0, cpu_grad  # the shift VJP materialises on CPU


def test_ast_train_gradient_uses_xla_convs_on_tpu_and_shift_on_cpu():
  tpu = _traced("ast_tiny.py", "tpu", True)
  cpu = _traced("ast_tiny.py", "cpu", False)
  _assert_xla_vs_shift(tpu, cpu)


def test_model_json_from_before_the_policy_still_loads(tmp_path):
  """model.json files written before the policy existed list runtime fields (conv_impl, dtype, scan_blocks, AST's
  chunk_bytes) among the constructor arguments: they are ignored, the model loads and a resumed run matches."""
  import json

  import numpy as np

  from sparse_restore import checkpoint, models
  cfg = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1]}
  module = models.create("drsformer", **cfg)
  params = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))["params"])
  export = checkpoint.save_model(str(tmp_path / "old"), "drsformer", cfg, params)
  info = json.loads((tmp_path / "old" / "model.json").read_text())
  info["config"].update(conv_impl="auto", dtype=None, scan_blocks=None, chunk_bytes=None)
  (tmp_path / "old" / "model.json").write_text(json.dumps(info))
  loaded, _, got = checkpoint.load_model(export, policy=policy.for_platform("cpu"))
  assert got["config"] == cfg and loaded.policy == policy.for_platform("cpu")
