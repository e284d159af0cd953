"""Parity with the authors' PyTorch outputs ON A GPU: the converted fixtures under the policies a GPU gets
('xla' convolutions, the default, and the 'taps' candidate) give the reference outputs within 1e-5 relative at
``jax.default_matmul_precision("highest")``. The error at JAX's default GPU precision (TF32 matrix products and
convolutions) is printed beside it (``pytest -s``), not asserted: it is what a user gets by default.

Runs only where JAX's first device is a GPU (``.ci/gpu_measure.sh`` runs it on the device machine); elsewhere
it is skipped with the reason. The same checks on CPU are in test_drsformer.py / test_ast.py.
"""
import jax
import numpy as np
import pytest

from sparse_restore import models
from sparse_restore.convert import engine, load_state_dict
from sparse_restore.models import policy

pytestmark = pytest.mark.skipif(jax.devices()[0].platform != "gpu",
                                reason=f"needs a GPU (JAX's first device is {jax.devices()[0].platform})")

CASES = (("drsformer", "drsformer_tiny_mefc"), ("drsformer", "drsformer_tiny_nomefc"),
         ("drsformer", "drsformer_tiny_biasfree"), ("ast", "ast_tiny"))


def _rel_err(ours, ref):
  return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("conv", ["xla", "taps"])
@pytest.mark.parametrize("arch,case", CASES)
def test_fixture_parity_on_gpu(fixtures_dir, arch, case, conv):
  config, params = engine.convert_state_dict(load_state_dict(fixtures_dir / f"{case}.pth", arch=arch), arch)
  data = np.load(fixtures_dir / f"{case}.npz")
  x, ref = data["input"].transpose(0, 2, 3, 1), data["output"].transpose(0, 2, 3, 1)
  pol = policy.for_platform("gpu", conv=conv)
  module = models.create(arch, policy=pol, **config)
  apply = jax.jit(lambda p, v: module.apply({"params": p}, v))
  params = jax.device_put(params)
  with jax.default_matmul_precision("highest"):
    highest = _rel_err(apply(params, x), ref)
  default = _rel_err(jax.jit(lambda p, v: module.apply({"params": p}, v))(params, x), ref)
  print(f"\n[gpu-parity] {case} conv={conv} device={jax.devices()[0].device_kind}: rel. error "
        f"{highest:.3e} at 'highest', {default:.3e} at the default precision")
  assert highest <= 1e-5
