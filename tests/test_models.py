"""The model registry: every network registered, a broken network module is an error, one call signature, one
parameter-initialisation helper."""
import inspect
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_restore import models

TINY_DRSFORMER = {"dim": 8, "num_blocks": (1, 1, 1, 1), "heads": (1, 1, 1, 1), "use_mefc": False}


def test_both_networks_are_registered():
  assert models.names() == ["ast", "drsformer"]


def test_a_network_module_that_fails_to_import_is_an_error(monkeypatch):
  """A failing import of models/ast.py (here: blocked in sys.modules, so the message names the module) must
  raise, not leave a registry without AST."""
  import sparse_restore.models as package
  monkeypatch.setitem(sys.modules, "sparse_restore.models.ast", None)
  monkeypatch.delattr(package, "ast", raising=False)
  with pytest.raises(ImportError, match="sparse_restore.models.ast"):
    models.names()
  with pytest.raises(ImportError, match="sparse_restore.models.ast"):
    models.create("drsformer")


@pytest.mark.parametrize("name", ["ast", "drsformer"])
def test_every_network_takes_the_train_keyword(name):
  param = inspect.signature(models.get(name).__call__).parameters.get("train")
  assert param is not None and param.default is False, name


def test_abstract_params_do_not_depend_on_the_dummy_image_and_drsformer_ignores_train():
  module = models.create("drsformer", **TINY_DRSFORMER)
  abstract = models.abstract_params(module)
  bigger = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 48, 3)), train=True))["params"]
  assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(bigger)
  assert all((a.shape, a.dtype) == (b.shape, b.dtype)
             for a, b in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(bigger)))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(lambda a: rng.uniform(-0.3, 0.3, a.shape).astype(a.dtype), abstract)
  x = rng.random((1, 16, 16, 3), np.float32)
  both = jax.jit(lambda p, x: (module.apply({"params": p}, x, train=False), module.apply({"params": p}, x, train=True)))
  a, b = both(params, x)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
