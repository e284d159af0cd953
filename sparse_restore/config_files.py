"""Config files (``configs/*.py``) loaded by path, the way ``--config`` loads them.

Configs are plain Python files outside the package; a config that extends another (``demo.py`` builds on
``default.py``) loads it with :func:`sibling`, and tests and notebooks load any of them with :func:`load_config`.
:func:`define_config_flag` is ml_collections' ``--config`` flag (``--config.<field>=value`` overrides, locked
config) loading the file the same way.
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


def define_config_flag(name: str, help_string: str, *, flag_values=None, lock_config: bool = True, **kwargs):
  """``ml_collections.config_flags.DEFINE_config_file`` with the file loaded by :func:`load_module`.

  ml_collections loads config files with importlib's deprecated ``SourceFileLoader.load_module()`` (a
  DeprecationWarning on every load); only the flag's parser is replaced, the overrides work as before. As there,
  ``--config=file.py:arg`` calls ``get_config("arg")``. A missing file raises FileNotFoundError when parsed.
  """
  from absl import flags
  from ml_collections import config_flags

  class Parser(flags.ArgumentParser):
    """Same attributes as ml_collections' ConfigFileFlagParser (name, _lock_config)."""

    def __init__(self, name, lock_config):
      self.name = name
      self._lock_config = lock_config

    def flag_type(self):
      return "config object"

    def parse(self, path):
      file, *args = path.split(":", 1)
      config = load_config(file, *args)
      if self._lock_config and callable(getattr(config, "lock", None)):
        config.lock()
      return config

  flags.disclaim_key_flags()  # the flag belongs to the module that calls this function (--helpshort lists it)
  flag_values = flags.FLAGS if flag_values is None else flag_values
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values,
                                           lock_config=lock_config, **kwargs)
  flag_values[name].parser = Parser(name=name, lock_config=lock_config)
  return holder
