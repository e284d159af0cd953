"""``sparse_restore.config_files``: the configs load by path, extend their siblings, and a wrong path is named."""
import pathlib
import warnings

import pytest

from sparse_restore import config_files

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_every_config_loads_and_documents_its_fields(path):
  config = config_files.load_config(path)
  assert config.model.name in ("drsformer", "ast") and config.data.name
  # Configs built on default.py keep every field default.py defines (siblings are loaded, not copied).
  default = config_files.sibling(path, "default").get_config()
  assert set(default.keys()) <= set(config.keys())


def test_missing_config_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.py"):
    config_files.load_config(tmp_path / "nope.py")


def test_config_flag_loads_overrides_and_locks_without_deprecated_importlib(tmp_path):
  """The --config flag of sparse_restore.main: overrides, ``file.py:arg``, a locked config, a named missing file,
  and no DeprecationWarning (ml_collections' own loader calls importlib's deprecated load_module())."""
  from absl import flags
  (tmp_path / "cfg.py").write_text("import ml_collections\n"
                                   "def get_config(size='small'):\n"
                                   "  return ml_collections.ConfigDict({'size': size, 'seed': 0})\n")

  def parse(*args):
    argv = ["prog", *args]
    fv = flags.FlagValues()
    config_files.define_config_flag("config", "config file", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config

  with warnings.catch_warnings():
    warnings.simplefilter("error")
    config = parse(f"--config={tmp_path / 'cfg.py'}:big", "--config.seed=7")
  assert (config.size, config.seed) == ("big", 7)
  with pytest.raises(AttributeError):
    config.new_field = 1  # locked
  with pytest.raises(AttributeError, match="sede"):
    parse(f"--config={tmp_path / 'cfg.py'}", "--config.sede=7")
  with pytest.raises(FileNotFoundError, match="nope.py"):
    parse(f"--config={tmp_path / 'nope.py'}")
