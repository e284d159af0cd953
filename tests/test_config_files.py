"""``sparse_restore.config_files``: the configs load by path, extend their siblings, and a wrong path is named."""
import pathlib

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
