"""Config files (``configs/*.py``) loaded by path, the way ``--config`` loads them.

Configs are plain Python files outside the package; a config that extends another (``demo.py`` builds on
``default.py``) loads it with :func:`sibling`, and tests and notebooks load any of them with :func:`load_config`.
"""
from __future__ import annotations

import importlib.util
import os
import types


def load_module(path: str) -> types.ModuleType:
  """Executes the config file at ``path`` and returns it as a module (not registered in ``sys.modules``)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  stem = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"_sparse_restore_config_{stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sibling(config_file: str, name: str) -> types.ModuleType:
  """The config module ``<name>.py`` next to ``config_file`` (call with ``__file__``)."""
  return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name + ".py"))


def load_config(path: str, *args):
  """``get_config(*args)`` of the config file at ``path`` (an unlocked ConfigDict)."""
  return load_module(path).get_config(*args)
