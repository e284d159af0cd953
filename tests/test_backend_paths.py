"""The CPU-specific implementations are chosen by backend: on GPU/TPU the networks trace to standard XLA ops.

Checked on traced programs (no compilation, so any backend can be simulated by patching ``jax.default_backend``).
With ``conv_impl="auto"``, the CPU forward pass uses the shifted-tap depthwise convolutions and barriers; the
GPU/TPU train-step gradient uses ``lax.conv_general_dilated`` with ``feature_group_count > 1`` and no barrier.
AST's chunked (``lax.map``) paths are off on accelerators.
"""
import collections
import pathlib

import jax
import jax.numpy as jnp
import pytest

from sparse_restore import config_files, losses, models, train
from sparse_restore.models import assa, layers

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


def _traced(config_name, grad, **model_overrides):
  config = config_files.load_config(str(CONFIGS / config_name))
  for key, value in model_overrides.items():
    config.model[key] = value
  module = train.create_model(config)
  params = models.abstract_params(module)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  loss_fn = losses.get("l1")

  def loss(p, x):
    return loss_fn(module.apply({"params": p}, x, rngs={"dropout": jax.random.key(1)}, train=True), x)

  return _primitive_counts(jax.make_jaxpr(jax.grad(loss) if grad else loss)(params, x))


def _assert_xla_vs_shift(accelerator, cpu):
  # Accelerator: grouped convolutions (forward and both VJPs) and none of the shift path's materialising
  # barriers or conditionals (layers.cpu_materialize). CPU: no grouped convolution at all; per-tap slices and
  # barriers instead.
  assert accelerator["grouped_conv"] > 0 and accelerator["optimization_barrier"] == 0, accelerator
  assert accelerator["cond"] == 0, accelerator
  assert cpu["grouped_conv"] == 0 and cpu["optimization_barrier"] > 0, cpu
  assert cpu["slice"] > accelerator["slice"], (cpu["slice"], accelerator["slice"])


@pytest.fixture
def backend(monkeypatch):
  def use(name):
    monkeypatch.setattr(jax, "default_backend", lambda: name)
  return use


@pytest.mark.parametrize("name", ["gpu", "tpu"])
def test_auto_resolves_to_xla_on_accelerators(backend, name):
  backend(name)
  assert layers.resolve_conv_impl("auto") == "xla"
  assert layers.resolve_conv_impl("shift") == "shift"  # an explicit choice is kept
  assert assa.resolve_chunk_bytes(None) == 0
  backend("cpu")
  assert layers.resolve_conv_impl("auto") == "shift"
  assert assa.resolve_chunk_bytes(None) > 0


def test_drsformer_train_gradient_uses_xla_convs_on_gpu_and_shift_on_cpu(backend):
  overrides = dict(use_mefc=True, ffn_type="msfn")  # every grouped conv of the network: MSFN, TKSA, MEFC
  backend("gpu")
  gpu = _traced("tiny.py", True, **overrides)
  backend("cpu")
  cpu = _traced("tiny.py", False, **overrides)  # the forward pass shows the choice (its VJP is tested elsewhere)
  _assert_xla_vs_shift(gpu, cpu)
  cpu_grad = _traced("tiny.py", True, **overrides)
  assert cpu_grad["grouped_conv"] == 0 and cpu_grad["cond"] > 0, cpu_grad  # the shift VJP materialises on CPU


def test_ast_train_gradient_uses_xla_convs_on_tpu_and_shift_on_cpu(backend):
  overrides = dict(conv_impl="auto")  # ast_tiny.py pins 'xla' (faster to compile for its short test runs)
  backend("tpu")
  tpu = _traced("ast_tiny.py", True, **overrides)
  backend("cpu")
  cpu = _traced("ast_tiny.py", False, **overrides)
  _assert_xla_vs_shift(tpu, cpu)
