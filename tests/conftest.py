"""Shared test set-up: 4 simulated CPU devices, one persistent compilation cache for the run, and the location
of ../shared (fixtures, sample data)."""
import os
import shutil
import sys
import tempfile

# Must happen before JAX is imported anywhere: tests of data parallelism need several devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _shared_dir():
  env = os.environ.get("SPARSE_RESTORE_SHARED")
  candidates = [pathlib.Path(env)] if env else []
  candidates.append(REPO.parent / "shared")
  for c in candidates:
    if (c / "fixtures").is_dir():
      return c
  return None


SHARED = _shared_dir()


def pytest_configure(config):
  """One persistent compilation cache (pytest's cache folder) for the tests and every program they start: the CLI
  tests run the same small programs in many subprocesses, and the entry points would otherwise use the user's own
  cache folder. Set before JAX is imported, which reads $JAX_COMPILATION_CACHE_DIR itself; a cache folder the caller
  chose wins."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  cache = getattr(config, "cache", None)  # None with `-p no:cacheprovider`: a folder for this run only
  if cache is not None:
    path = str(cache.mkdir("jax_compilation_cache"))
  else:
    path = config._sparse_restore_temp_cache = tempfile.mkdtemp(prefix="jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  if "jax" in sys.modules:  # imported by a plugin first
    sys.modules["jax"].config.update("jax_compilation_cache_dir", path)


def pytest_unconfigure(config):
  temp = getattr(config, "_sparse_restore_temp_cache", None)
  if temp:
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_dir():
  """The ``shared`` folder beside the repository (or $SPARSE_RESTORE_SHARED); skips when absent."""
  if SHARED is None:
    pytest.skip("../shared (fixtures and sample data) not found beside the repository; "
                "set SPARSE_RESTORE_SHARED to its path to run this test")
  return SHARED


@pytest.fixture(scope="session")
def fixtures_dir(shared_dir):
  return shared_dir / "fixtures"


@pytest.fixture(scope="session")
def data_dir(shared_dir):
  return shared_dir / "data"


@pytest.fixture(autouse=True)
def _restore_console_and_logging():
  """Command-line tools run in-process by a test (bench, convert, ...) call console.setup(), which raises the root
  logger's level and filters its handlers: undo that after each test, so later tests' caplog still sees INFO."""
  import logging
  from sparse_restore import console
  root, absl_logger = logging.getLogger(), logging.getLogger("absl")
  level, absl_level, handlers = root.level, absl_logger.level, list(root.handlers)
  filters = {h: list(h.filters) for h in handlers}
  state = dict(console._state)  # pylint: disable=protected-access
  unraisablehook = sys.unraisablehook
  yield
  sys.unraisablehook = unraisablehook
  root.setLevel(level)
  absl_logger.setLevel(absl_level)  # absl's set_verbosity sets it too
  for h in list(root.handlers):
    if h not in handlers:
      root.removeHandler(h)
  for h, fs in filters.items():
    if h not in root.handlers:
      root.addHandler(h)
    h.filters[:] = fs
  console._state.update(state)  # pylint: disable=protected-access
