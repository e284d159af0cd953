"""The Colab notebooks (colab/*.ipynb) run end to end on CPU and are committed clean.

The execution tests (marked slow: ``python -m pytest -m slow tests/test_notebooks.py``) run every cell of a notebook with nbclient in a fresh IPython kernel started on *this*
interpreter (a kernelspec written to a temporary folder), in the notebooks' small CI setting
(``SPARSE_RESTORE_NB_SMALL=1``: a tiny network, a few steps, small tiles) with the shared fixtures as inputs, and
check what the cells produced: files written by the library, the printed PSNR / progress lines, the figures. The
static tests check that the committed notebooks carry no outputs and are exactly what ``colab/make_notebooks.py``
writes, and that their cells call the library instead of re-implementing it.
"""
import importlib.util
import json
import math
import os
import pathlib
import re
import sys

import numpy as np
import pytest

from doc_commands import doc_command

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
NOTEBOOKS = ("train_tpu.ipynb", "restore_with_pretrained.ipynb")
CELL_TIMEOUT_S = 600
KERNEL = "sparse_restore_nb_test"


# ----------------------------------------------------------------------------------------------------------
# Running a notebook
# ----------------------------------------------------------------------------------------------------------


def _kernel_manager(tmp_path: pathlib.Path):
  """A kernel manager for an IPython kernel running ``sys.executable`` (not whatever 'python3' resolves to)."""
  from jupyter_client.kernelspec import KernelSpecManager
  from jupyter_client.manager import AsyncKernelManager
  kernels = tmp_path / "kernels"
  spec = kernels / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "sparse_restore notebook test", "language": "python"}))
  return AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))


def execute(name: str, tmp_path: pathlib.Path, **env_vars) -> "nbformat.NotebookNode":
  """Runs every cell of ``colab/<name>`` from the colab folder with ``env_vars`` set; raises on a failing cell."""
  nb = nbformat.read(COLAB / name, as_version=4)
  env = dict(os.environ)
  env.pop("MPLBACKEND", None)  # The kernel's inline backend turns figures into image/png outputs.
  env.update(IPYTHONDIR=str(tmp_path / "ipython"), PYTHONUNBUFFERED="1", SPARSE_RESTORE_NB_SMALL="1")
  env.update({k: str(v) for k, v in env_vars.items()})
  client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=CELL_TIMEOUT_S,
                                   resources={"metadata": {"path": str(COLAB)}})
  client.execute(env=env)  # nbclient raises CellExecutionError (with the cell's traceback) on any error
  return nb


def code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def stdout(nb) -> str:
  return "".join(o.get("text", "") for c in code_cells(nb) for o in c.outputs
                 if o.output_type == "stream" and o.name == "stdout")


def image_count(cell) -> int:
  return sum(1 for o in cell.outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data)


def assert_all_ran(nb):
  for i, cell in enumerate(code_cells(nb)):
    assert cell.execution_count is not None, f"code cell {i} ({cell.id}) did not run"
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"code cell {i} ({cell.id}) raised {errors[0].ename}: {errors[0].evalue}"


def cell_seconds(nb) -> str:
  """Per-cell wall times from nbclient's timing metadata (shown when an assertion fails)."""
  from datetime import datetime
  out = []
  for c in code_cells(nb):
    t = c.metadata.get("execution", {})
    if "iopub.execute_input" in t and "shell.execute_reply" in t:
      parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
      out.append(f"{c.id}: {(parse(t['shell.execute_reply']) - parse(t['iopub.execute_input'])).total_seconds():.1f}s")
  return ", ".join(out)


# ----------------------------------------------------------------------------------------------------------
# Execution tests
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # A kernel, a conversion and tiled restoration of two photos: ~1-2 min on 2 cores.
def test_restore_with_pretrained_notebook_runs(tmp_path, fixtures_dir, data_dir):
  """Converts the tiny DRSformer fixture .pth, restores the real rainy photos in tiles, writes and shows them."""
  from sparse_restore import imageio
  photos_dir = data_dir / "real_rain"
  photos = imageio.list_images(str(photos_dir))[:2]  # the small setting restores the first two (a JPEG and a PNG)
  assert len(photos) == 2, f"{photos_dir}: expected at least two sample photos"
  workdir = tmp_path / "work"
  nb = execute("restore_with_pretrained.ipynb", tmp_path, SPARSE_RESTORE_NB_WORKDIR=workdir,
               SPARSE_RESTORE_NB_CHECKPOINT=fixtures_dir / "drsformer_tiny_mefc.pth",
               SPARSE_RESTORE_NB_IMAGES=photos_dir)
  assert_all_ran(nb)
  text = stdout(nb)
  timing = cell_seconds(nb)

  # The converter's export, as the library wrote it (the fixture is the MEFC variant with dim 8).
  info = json.loads((workdir / "model" / "model.json").read_text())
  assert info["arch"] == "drsformer" and info["config"]["dim"] == 8 and info["config"]["use_mefc"] is True
  assert "loaded drsformer" in text

  # Each photo restored in several tiles, written at its own size, and changed by the network.
  assert f"restored {len(photos)} photo(s)" in text, text
  for path in photos:
    name = os.path.basename(path)
    match = re.search(rf"restored {re.escape(name)} \((\d+)x(\d+), (\d+) tile\(s\)\)", text)
    assert match, f"no progress line for {name} in:\n{text}"
    assert int(match.group(3)) > 1, f"{name} was not tiled (TILE should be smaller than the photo)"
    before = imageio.read_image(path)
    after = imageio.read_image(str(workdir / "restored" / (os.path.splitext(name)[0] + ".png")))
    assert after.shape == before.shape, (name, after.shape, before.shape)
    assert (int(match.group(1)), int(match.group(2))) == (before.shape[1], before.shape[0])
    assert float(np.mean(np.abs(after - before))) > 1e-3, f"{name}: the output equals the input"
    assert float(after.std()) > 1e-3, f"{name}: the output is flat"

  # The before/after figure.
  figure_cells = [c for c in code_cells(nb) if image_count(c)]
  assert figure_cells and image_count(figure_cells[-1]) >= 1, f"no figure produced ({timing})"


@pytest.mark.slow  # Compiles and runs a train step on 4 simulated devices in a kernel: ~4 min on 2 cores.
def test_train_tpu_notebook_runs(tmp_path):
  """Trains a tiny DRSformer for a few steps over all (4 simulated) devices, evaluates, plots the curves,
  reloads the checkpoint and restores test tiles."""
  workdir = tmp_path / "work"
  nb = execute("train_tpu.ipynb", tmp_path, SPARSE_RESTORE_NB_WORKDIR=workdir)
  assert_all_ran(nb)
  text = stdout(nb)
  timing = cell_seconds(nb)

  # Data parallelism over every device JAX sees (tests/conftest.py sets 4 simulated CPU devices).
  batch = re.search(r"global batch (\d+) = (\d+) per device x (\d+) device\(s\)", text)
  assert batch, text
  total, per_device, devices = map(int, batch.groups())
  assert total == per_device * devices
  if "--xla_force_host_platform_device_count=4" in os.environ.get("XLA_FLAGS", ""):
    assert devices == 4, text

  # The run the library wrote: model.json, the final checkpoint, TensorBoard events with the training loss.
  info = json.loads((workdir / "model.json").read_text())
  assert info["arch"] == "drsformer" and info["config"]["dim"] == 8
  steps = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert steps and max(steps) == 6, steps
  assert list(workdir.glob("events.out.tfevents.*")), os.listdir(workdir)
  logged = re.search(r"^logged: (.*)$", text, re.M)
  assert logged and {"train/loss", "eval/psnr", "eval/input_psnr"} <= set(logged.group(1).split(", ")), text
  # The loop's own evaluation after the last step (train.train_and_evaluate's result), and its files.
  assert re.search(r"synthetic_rain/test \(2 images, restormer protocol, Y\): restored PSNR \S+ dB", text), text
  assert (workdir / "eval" / "6" / "metrics.json").is_file()
  assert "loaded drsformer at step 6" in text, text

  # PSNR of rainy and restored test tiles, printed per image, and the two figures (curves, samples).
  psnr = re.findall(r"PSNR rainy (\S+) dB -> restored (\S+) dB", text)
  assert len(psnr) == 2, text
  for rainy, restored in psnr:
    assert 5.0 < float(rainy) < 60.0 and math.isfinite(float(restored)), (rainy, restored)
  figures = [image_count(c) for c in code_cells(nb) if image_count(c)]
  assert len(figures) >= 2, f"expected a curves figure and a samples figure ({timing})"


# ----------------------------------------------------------------------------------------------------------
# Static tests (no kernel)
# ----------------------------------------------------------------------------------------------------------


def _generator():
  spec = importlib.util.spec_from_file_location("make_notebooks", COLAB / "make_notebooks.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_stripped(name):
  """No outputs, execution counts or run metadata in the committed file (they belong to a user's run)."""
  nb = nbformat.read(COLAB / name, as_version=4)
  nbformat.validate(nb)
  for cell in code_cells(nb):
    assert cell.outputs == [], f"{name}: cell {cell.id} has outputs; strip them (python colab/make_notebooks.py)"
    assert cell.execution_count is None, f"{name}: cell {cell.id} has an execution count"
    assert "execution" not in cell.metadata, f"{name}: cell {cell.id} has execution timing metadata"
  assert "widgets" not in nb.metadata


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_matches_generator(name):
  """colab/make_notebooks.py is the source of the notebooks: the committed files are exactly what it writes."""
  gen = _generator()
  expected = gen.render(gen.NOTEBOOKS[name]())
  assert (COLAB / name).read_text() == expected, (
      f"colab/{name} differs from colab/make_notebooks.py; edit the generator and run python colab/make_notebooks.py")


# Calls each notebook must make, and code that would mean logic was copied into a cell instead of called.
REQUIRED_CALLS = {
    "train_tpu.ipynb": ("train.train_and_evaluate(", "checkpoint.load_model(", "input_pipeline.eval_dataset(",
                        "restore.restore_image(", "metrics.psnr("),
    "restore_with_pretrained.ipynb": ("convert.convert_checkpoint(", "checkpoint.load_model(", "restore.restore_image(",
                                      "tile=TILE", "imageio.write_png("),
}
FORBIDDEN = ("nn.Module", "nn.compact", "value_and_grad", "optax.", "jax.jit", "log10", "torch", "import flax")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_calls_the_library(name):
  source = "\n".join(c.source for c in code_cells(nbformat.read(COLAB / name, as_version=4)))
  for call in REQUIRED_CALLS[name]:
    assert call in source, f"{name}: expected a call to {call}"
  for pattern in FORBIDDEN:
    assert pattern not in source, f"{name}: {pattern!r} in a cell; call the library instead of copying its logic"


def test_make_notebooks_check():
  """colab/README.md: `python colab/make_notebooks.py --check` exits 0 on the committed notebooks."""
  words = doc_command("python colab/make_notebooks.py --check")
  spec = importlib.util.spec_from_file_location("_readme_make_notebooks", REPO / words[1])
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.main(words[2:]) == 0
