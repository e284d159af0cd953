r"""Writes the Colab notebooks of this folder from the cell sources below (their single source of truth).

  python colab/make_notebooks.py          # rewrite colab/*.ipynb
  python colab/make_notebooks.py --check  # exit 1 if a committed notebook differs from what this file makes

The notebooks are written without outputs and with deterministic cell ids, so they diff cleanly; edit the cells
here, not in Jupyter/Colab (tests/test_notebooks.py checks that both agree and executes them on CPU).
Cells only call the library (``sparse_restore``) and plot: no model, training, conversion or metric code here.
"""
import argparse
import os
import re
import sys
import textwrap

import nbformat
from nbformat import v4

HERE = os.path.dirname(os.path.abspath(__file__))

# The GitHub repository ("owner/name") Colab clones and installs from; None until the project is published. With
# None the notebooks carry a placeholder URL that the user replaces in the first cell, and no Colab badge.
GITHUB_REPO = None
REPO_URL = f"https://github.com/{GITHUB_REPO}" if GITHUB_REPO else "https://github.com/<owner>/sparse_restore"


def colab_badge(name: str) -> str:
  """The 'Open in Colab' badge of notebook ``name`` (empty while GITHUB_REPO is unknown)."""
  if not GITHUB_REPO:
    return ""
  return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
          f"(https://colab.research.google.com/github/{GITHUB_REPO}/blob/main/colab/{name})")


def _src(text: str) -> str:
  return textwrap.dedent(text).strip("\n")


# ----------------------------------------------------------------------------------------------------------
# Shared cells
# ----------------------------------------------------------------------------------------------------------

# Colab installation: clone + pip install. The runtime's JAX (built for its TPU or GPU), Flax and TensorFlow stay:
# the project sets no upper bounds on them and needs no TensorFlow, so pip changes none of them.
INSTALL_HELPERS = '''
KEEP = ("jax", "jaxlib", "flax", "libtpu", "tensorflow")  # the runtime's builds, which a restart would be needed to swap


def installed_versions(names):
  versions = {}
  for name in names:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def install_in_colab(extras):
  """Clones REPO_URL and pip-installs it (with ``extras``) beside the runtime's JAX, Flax and TensorFlow."""
  if "<" in REPO_URL:
    raise ValueError("set REPO_URL (first code cell) to the git URL of the sparse_restore repository")
  repo = "/content/sparse_restore"
  if not os.path.isdir(repo):
    subprocess.run(["git", "clone", "--depth", "1", "--branch", REPO_BRANCH, REPO_URL, repo], check=True)
  before = installed_versions(KEEP)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{repo}[{extras}]" if extras else repo], check=True)
  importlib.invalidate_caches()
  after = installed_versions(KEEP)
  changed = {name: (before.get(name), after.get(name)) for name in set(before) | set(after)
             if before.get(name) != after.get(name)}
  if changed:
    print(f"pip changed {changed}: Runtime > Restart session, then run all cells again")
  else:
    print("kept the runtime's " + ", ".join(f"{name} {v}" for name, v in sorted(before.items())))
  return repo
'''

# Outside Colab: the repository checkout (for configs/), wherever the notebook is run from.
FIND_REPO = '''
def find_repo():
  """The repository checkout (the folder holding configs/): $SPARSE_RESTORE_REPO, or a parent of the current
  folder, or the folder above the installed package (editable installs)."""
  candidates = [os.environ.get("SPARSE_RESTORE_REPO", "")]
  here = os.path.abspath(os.getcwd())
  while True:
    candidates.append(here)
    if os.path.dirname(here) == here:
      break
    here = os.path.dirname(here)
  try:
    import sparse_restore
    candidates.append(os.path.dirname(os.path.dirname(os.path.abspath(sparse_restore.__file__))))
  except ImportError:
    pass
  for c in candidates:
    if c and os.path.isfile(os.path.join(c, "configs", "default.py")):
      return c
  return None
'''

# ----------------------------------------------------------------------------------------------------------
# colab/train_tpu.ipynb
# ----------------------------------------------------------------------------------------------------------

TRAIN = [
    ("md", f"""
    # Train DRSformer on TPU (or GPU/CPU) with `sparse_restore`

    {colab_badge("train_tpu.ipynb")}

    This notebook trains the DRSformer deraining network (CVPR 2023) with the `sparse_restore` library on its
    built-in **synthetic-rain demo data** (rainy/clean tiles made from scikit-image's bundled photos: no download),
    using **data parallelism over every device** of the runtime (8 TPU cores on a Colab TPU, 1 GPU, or the CPU).
    Then it plots the training curves, loads the checkpoint back and shows rainy / restored / clean test
    images with their PSNR.

    Everything is a call into the library: `configs/demo.py` (the configuration), `train.train_and_evaluate`
    (the same entry point as `python -m sparse_restore.main --config configs/demo.py --workdir ...`),
    `checkpoint.load_model`, `input_pipeline.eval_dataset`, `restore.restore_image` and `metrics.psnr`.

    **In Colab:** *Runtime > Change runtime type > TPU* (or a GPU), check `REPO_URL` in the first code cell (the
    project's git repository, or your fork), then *Runtime > Run all*. The installation cell clones and installs
    the project with its `[train]` extras next to the runtime's own JAX (with `libtpu` on a TPU runtime, its CUDA
    plugin on a GPU runtime), Flax and TensorFlow, which it keeps as they are: no restart is needed.
    Outside Colab, install the project first (`pip install -e ".[all]"`) and run the notebook from the
    repository.
    """),
    ("code", '''
    # Settings.
    import os
    import sys
    import tempfile

    REPO_URL = "{repo_url}"  # Colab: the git repository to install from
    REPO_BRANCH = "main"
    IN_COLAB = "google.colab" in sys.modules

    # SPARSE_RESTORE_NB_SMALL=1 (set by the project's tests): a tiny network for a few steps, so CI runs this on CPU.
    SMALL = os.environ.get("SPARSE_RESTORE_NB_SMALL", "0").lower() not in ("", "0", "false", "no")
    # Where checkpoints, TensorBoard logs, evaluations and the built demo data go. An existing run there is
    # resumed (or, if finished, just loaded): use a new folder to start over.
    WORKDIR = os.environ.get("SPARSE_RESTORE_NB_WORKDIR") or (
        "/content/sparse_restore_demo" if IN_COLAB else os.path.join(tempfile.gettempdir(), "sparse_restore_demo_nb"))
    # Where TensorFlow is installed (Colab), TensorBoard's event reader below imports it: keep its start-up logs quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    '''.replace("{repo_url}", REPO_URL)),
    ("code", '''
    # Installation: in Colab, clone and install the project (the runtime's JAX for its TPU/GPU is kept); elsewhere use
    # the installed package (pip install -e ".[all]") and the repository this notebook is run from.
    import importlib.metadata
    import subprocess


    {install}


    {find_repo}


    if IN_COLAB:
      REPO_DIR = install_in_colab("train")
    else:
      REPO_DIR = find_repo()
      if REPO_DIR is None:
        raise RuntimeError("cannot find the sparse_restore repository (configs/); run this notebook from inside it "
                           "or set SPARSE_RESTORE_REPO")
    print(f"repository: {REPO_DIR}\\nworkdir: {WORKDIR}\\nsmall CI setting: {SMALL}")
    '''.replace("{install}", textwrap.indent(INSTALL_HELPERS.strip("\n"), "    ").lstrip())
         .replace("{find_repo}", textwrap.indent(FIND_REPO.strip("\n"), "    ").lstrip())),
    ("md", """
    ## Devices

    JAX sees the accelerators of the runtime. `train_and_evaluate` builds a one-axis device mesh (`data`) over all
    of them: parameters and optimizer state are replicated, every global batch is split evenly across the devices
    and gradients are averaged by the compiler. On a Colab TPU you should see 8 `TpuDevice`s (the runtime's
    `jax[tpu]`); if you see only a CPU device on a TPU runtime, restart it (*Runtime > Restart session*) and run
    all cells again.
    """),
    ("code", '''
    import jax

    from sparse_restore import sharding

    mesh = sharding.make_mesh()
    print(f"JAX {jax.__version__}, backend {jax.default_backend()!r}: {jax.device_count()} device(s) "
          f"in {jax.process_count()} process(es)")
    for device in jax.devices():
      print("  ", device)
    print("mesh:", dict(mesh.shape))
    if IN_COLAB and jax.default_backend() == "cpu":
      print("No accelerator found: choose a TPU (or GPU) under Runtime > Change runtime type for a faster run.")
    '''),
    ("md", """
    ## Configuration

    `configs/demo.py` is the project's demo configuration (a small DRSformer on the synthetic-rain data). Every
    field is documented in `configs/default.py`; change any of them here before training. The global batch must
    be a multiple of the number of devices, so it is rounded up to one.
    """),
    ("code", '''
    from sparse_restore import config_files

    # get_config() of the file, as `--config` of sparse_restore.main loads it.
    config = config_files.load_config(os.path.join(REPO_DIR, "configs", "demo.py"))
    config.data.num_workers = 0  # decode in threads of this process (no worker processes from a notebook)
    config.eval_every_steps = 200  # evaluate the test tiles during training too, for a PSNR curve

    if SMALL:  # CI: a tiny network for a handful of steps, so the whole notebook runs in a minute or two on CPU
      config.model.dim = 8
      config.model.num_blocks = (1, 1, 1, 1)
      config.model.use_mefc = False
      config.data.patch_size = 32
      config.batch_size = 2
      config.num_train_steps = 6
      config.schedule = "constant"
      config.log_every_steps = 1
      config.checkpoint_every_steps = 3
      config.eval_every_steps = config.num_train_steps  # one evaluation, after the last step
      config.data.max_eval_images = 2

    devices = jax.device_count()
    config.batch_size = -(-config.batch_size // devices) * devices  # a multiple of the device count
    print(config)
    print(f"global batch {config.batch_size} = {config.batch_size // devices} per device x {devices} device(s)")
    '''),
    ("md", """
    ## Train

    `train.train_and_evaluate(config, WORKDIR)` builds the demo data once (under `WORKDIR/tfds`), trains with one
    jitted data-parallel update per step, writes TensorBoard scalars (loss, learning rate, gradient norm,
    steps/s, evaluation PSNR/SSIM) and Orbax checkpoints to `WORKDIR`, and evaluates the held-out test tiles
    with the deraining papers' PSNR/SSIM protocol every `config.eval_every_steps` steps and at the end.
    Re-running this cell resumes from the newest checkpoint.
    """),
    ("code", '''
    import logging as pylogging
    import time

    from absl import logging

    from sparse_restore import train

    # Print the library's progress lines (losses, steps/s, evaluation) and any warning, not the checkpointer's chatter.
    absl_logger = pylogging.getLogger("absl")
    if not any(getattr(h, "sparse_restore_nb", False) for h in absl_logger.handlers):
      handler = pylogging.StreamHandler(sys.stdout)
      handler.setFormatter(pylogging.Formatter("%(message)s"))
      handler.addFilter(lambda record: record.levelno >= pylogging.WARNING or "sparse_restore" in record.pathname)
      handler.sparse_restore_nb = True
      absl_logger.addHandler(handler)
      absl_logger.propagate = False
    logging.set_verbosity(logging.INFO)

    t0 = time.time()
    result = train.train_and_evaluate(config, WORKDIR)
    print(f"trained to step {int(sharding.to_host(result.state.step))} in {time.time() - t0:.0f} s; "
          f"checkpoints in {os.path.join(WORKDIR, 'checkpoints')}")
    if result.eval is not None:
      print(result.eval.describe())
    '''),
    ("md", """
    ## Training curves

    The scalars come from the TensorBoard event files the run wrote to `WORKDIR` (in Colab you can also browse
    them with `%load_ext tensorboard` and `%tensorboard --logdir {WORKDIR}`).
    """),
    ("code", '''
    import matplotlib.pyplot as plt
    import numpy as np
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util


    def read_scalars(logdir):
      """``{tag: (steps, values)}`` of the scalar summaries in the TensorBoard event files of ``logdir``."""
      acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
      acc.Reload()
      scalars = {}
      for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        values = [tensor_util.make_ndarray(e.tensor_proto) for e in events]
        if values and all(v.ndim == 0 and np.issubdtype(v.dtype, np.number) for v in values):
          scalars[tag] = (np.array([e.step for e in events]), np.array(values, dtype=np.float64))
      return scalars


    scalars = read_scalars(WORKDIR)
    print("logged:", ", ".join(sorted(scalars)))
    panels = [("train/loss", "training loss (L1)"), ("train/lr", "learning rate"), ("eval/psnr", "test PSNR (dB)")]
    panels = [(tag, title) for tag, title in panels if tag in scalars]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (tag, title) in zip(axes[0], panels):
      steps, values = scalars[tag]
      ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label="restored")
      if tag == "eval/psnr" and "eval/input_psnr" in scalars:
        ax.plot(*scalars["eval/input_psnr"], linestyle="--", marker="x", label="rainy input")
        ax.legend()
      ax.set_title(title)
      ax.set_xlabel("step")
      ax.grid(alpha=0.3)
    plt.tight_layout()
    plt.show()
    '''),
    ("md", """
    ## Restore test images with the trained checkpoint

    `checkpoint.load_model(WORKDIR)` rebuilds the network from `WORKDIR/model.json` and restores the parameters
    of the newest checkpoint (the same call loads models converted from the authors' PyTorch weights). The test
    tiles come from `input_pipeline.eval_dataset`; PSNR is computed with the dataset's protocol (Y channel of the
    8-bit images, as the deraining papers' MATLAB scripts do). The tiny CI setting trains far too little to
    remove rain; the demo configuration on a TPU gains several dB.
    """),
    ("code", '''
    from sparse_restore import checkpoint, imageio, input_pipeline, metrics, model_eval, restore

    module, params, info = checkpoint.load_model(WORKDIR)
    print(f"loaded {info['arch']} at step {info['step']} from {WORKDIR}")
    apply_fn = restore.make_apply_fn(module, params)
    multiple = restore.model_multiple(module)

    data_config = input_pipeline.resolve_data_config(config.data, WORKDIR)
    protocol = model_eval.protocol_of(data_config)  # {'protocol': 'restormer', 'channel': 'y'} for this data
    examples = input_pipeline.eval_dataset(data_config, max_images=2 if SMALL else 4)

    fig, axes = plt.subplots(len(examples), 3, figsize=(10, 3.4 * len(examples)), squeeze=False)
    for row, example in zip(axes, examples):
      restored = restore.restore_image(apply_fn, example["input"], multiple=multiple)
      clean8 = imageio.to_uint8(example["target"])
      rainy_psnr = metrics.psnr(imageio.to_uint8(example["input"]), clean8, **protocol)
      restored_psnr = metrics.psnr(imageio.to_uint8(restored), clean8, **protocol)
      print(f"{example['name']}: PSNR rainy {rainy_psnr:.2f} dB -> restored {restored_psnr:.2f} dB")
      shown = [(example["input"], f"rainy ({rainy_psnr:.2f} dB)"), (restored, f"restored ({restored_psnr:.2f} dB)"),
               (example["target"], "clean")]
      for ax, (image, title) in zip(row, shown):
        ax.imshow(np.clip(image, 0, 1))
        ax.set_title(title)
        ax.axis("off")
    plt.tight_layout()
    plt.show()
    '''),
    ("md", """
    ## Next steps

    * Longer runs and the paper recipes: `python -m sparse_restore.main --config configs/drsformer_rain200h.py
      --workdir ...` (see the dataset configs for where to put the downloaded data).
    * Restore your own photos with this workdir: `python -m sparse_restore.infer --checkpoint WORKDIR --input
      photos/ --output restored/ --tile 512`, or the `restore_with_pretrained.ipynb` notebook for the authors'
      released weights.
    """),
]

# ----------------------------------------------------------------------------------------------------------
# colab/restore_with_pretrained.ipynb
# ----------------------------------------------------------------------------------------------------------

RESTORE = [
    ("md", f"""
    # Restore photos with the authors' pretrained DRSformer / AST weights

    {colab_badge("restore_with_pretrained.ipynb")}

    The authors of DRSformer (CVPR 2023) and AST (CVPR 2024) released PyTorch checkpoints (`.pth`). This notebook
    converts one of them into a `sparse_restore` model with the library's converter (the file is read without
    running any code from it, and every tensor is checked against the JAX/Flax network), restores photos of any
    size in overlapping tiles, and shows them before and after.

    **In Colab:** check `REPO_URL` in the first code cell and run all cells; you will be asked to upload the `.pth`
    file (or set `CHECKPOINT_PATH` to a file, e.g. on a mounted Google Drive) and then your rainy/hazy photos
    (or set `IMAGES_DIR`). A GPU or TPU runtime is faster, but the CPU works too.
    """),
    ("code", '''
    # Settings.
    import os
    import sys
    import tempfile

    REPO_URL = "{repo_url}"  # Colab: the git repository to install from
    REPO_BRANCH = "main"
    IN_COLAB = "google.colab" in sys.modules

    # The authors' checkpoint (.pth/.pt/.safetensors) and a folder of photos to restore. Empty in Colab: upload them
    # below. The project's tests set them (and SMALL) through environment variables to run this notebook on CPU.
    CHECKPOINT_PATH = os.environ.get("SPARSE_RESTORE_NB_CHECKPOINT", "")
    IMAGES_DIR = os.environ.get("SPARSE_RESTORE_NB_IMAGES", "")
    ARCH = None  # "drsformer" or "ast"; None: recognised from the checkpoint's keys
    SMALL = os.environ.get("SPARSE_RESTORE_NB_SMALL", "0").lower() not in ("", "0", "false", "no")
    # Where the converted model and the restored PNGs go.
    WORKDIR = os.environ.get("SPARSE_RESTORE_NB_WORKDIR") or (
        "/content/sparse_restore_pretrained" if IN_COLAB
        else os.path.join(tempfile.gettempdir(), "sparse_restore_pretrained_nb"))
    # Tiling: the network runs on TILE x TILE pieces overlapping by OVERLAP pixels, blended smoothly, so any photo
    # fits in memory. None runs whole images (the published evaluation protocol; needs more memory).
    TILE = 256 if SMALL else 512
    OVERLAP = 32
    MAX_PHOTOS = 2 if SMALL else None  # restore only the first photos of IMAGES_DIR (None: all)
    '''.replace("{repo_url}", REPO_URL)),
    ("code", '''
    # Installation: in Colab, clone and install the project (the runtime's JAX for its TPU/GPU is kept); elsewhere
    # the installed package is used. Conversion and inference need no extras (and no PyTorch).
    import importlib.metadata
    import subprocess


    {install}


    if IN_COLAB:
      install_in_colab("")
    print(f"workdir: {WORKDIR}\\nsmall CI setting: {SMALL}")
    '''.replace("{install}", textwrap.indent(INSTALL_HELPERS.strip("\n"), "    ").lstrip())),
    ("md", """
    ## Which checkpoint for which photos

    Each released model was trained on one benchmark and works best on images like it. Download the `.pth` files
    from the authors' pages ([DRSformer](https://github.com/cschenxiang/DRSformer#pre-trained-models),
    [AST](https://github.com/joshyZhou/AST#results)); the converter recognises the architecture and its
    variant from the file itself.

    | checkpoint | network | trained on | use it for |
    |---|---|---|---|
    | DRSformer Rain200H | DRSformer with MEFC | Rain200H: heavy synthetic rain streaks | dense, heavy streaks |
    | DRSformer Rain200L | DRSformer **without MEFC** | Rain200L: light synthetic streaks | light streaks |
    | DRSformer DID-Data | DRSformer with MEFC | DID-Data: synthetic streaks of three densities | streaks of mixed density |
    | DRSformer DDN-Data | DRSformer with MEFC | DDN-Data: synthetic streaks of 14 orientations/sizes | varied synthetic streaks |
    | DRSformer SPA-Data | DRSformer **without MEFC** | SPA-Data: real rain videos (638k pairs) | real rainy photos |
    | AST SPAD | AST | SPA-Data: real rain streaks | real rainy photos |
    | AST AGAN | AST | AGAN-Data: raindrops on glass | raindrops on a window or lens |
    | AST Dense-Haze | AST | Dense-Haze: real dense haze | hazy / foggy outdoor photos |

    For real photos start with a model trained on real data (DRSformer SPA-Data or AST SPAD); the synthetic-rain
    models (Rain200H/L, DID, DDN) are tuned to their own kind of streaks and usually transfer less well. The Rain200L and
    SPA-Data DRSformer models are the variant without the mixture-of-experts feature compensator (MEFC); AST
    models pad their input internally to a multiple of 128, so their tiles are rounded to multiples of 128 (the
    authors restore AGAN images in 384-pixel crops overlapping by 80, Dense-Haze ones in 1152-pixel crops
    overlapping by 384).
    """),
    ("code", '''
    if IN_COLAB and not CHECKPOINT_PATH:
      from google.colab import files
      print("Upload the authors' checkpoint (.pth):")
      uploaded = files.upload()
      CHECKPOINT_PATH = os.path.abspath(next(iter(uploaded)))
    if not CHECKPOINT_PATH or not os.path.isfile(CHECKPOINT_PATH):
      raise FileNotFoundError(f"no checkpoint: set CHECKPOINT_PATH (or $SPARSE_RESTORE_NB_CHECKPOINT) to a .pth file, "
                              f"got {CHECKPOINT_PATH!r}")
    print(f"checkpoint: {CHECKPOINT_PATH} ({os.path.getsize(CHECKPOINT_PATH) / 2**20:.1f} MiB)")
    '''),
    ("md", """
    ## Convert

    `convert.convert_checkpoint` reads the file, detects the network's configuration from the tensor names and
    shapes, maps and transposes every tensor into the Flax parameter tree, checks that nothing is missing, left
    over or of the wrong shape, and writes an exported model (`model.json` + Orbax parameters) that
    `checkpoint.load_model`, `python -m sparse_restore.infer` and `python -m sparse_restore.main --mode evaluate`
    all read. (`verify=True` additionally compares the converted layers numerically; with PyTorch installed it
    checks them against PyTorch itself.) The same from a shell:
    `python -m sparse_restore.convert --input model.pth --output exported/`.
    """),
    ("code", '''
    import time

    from sparse_restore import checkpoint, convert, imageio, restore

    EXPORT_DIR = os.path.join(WORKDIR, "model")
    t0 = time.time()
    conversion = convert.convert_checkpoint(CHECKPOINT_PATH, EXPORT_DIR, arch=ARCH, overwrite=True)
    print(f"converted in {time.time() - t0:.1f} s")

    module, params, info = checkpoint.load_model(EXPORT_DIR)
    apply_fn = restore.make_apply_fn(module, params)
    multiple = restore.model_multiple(module)
    print(f"loaded {info['arch']} from {EXPORT_DIR}: {conversion.num_params:,} parameters, inputs padded to "
          f"multiples of {multiple}")
    '''),
    ("md", """
    ## Photos

    Any PNG/JPEG/... works (EXIF rotation, grayscale, alpha and 16-bit files are handled by `imageio.read_image`).
    """),
    ("code", '''
    if IN_COLAB and not IMAGES_DIR:
      from google.colab import files
      IMAGES_DIR = os.path.join(WORKDIR, "uploads")
      os.makedirs(IMAGES_DIR, exist_ok=True)
      print("Upload the photos to restore:")
      for name, data in files.upload().items():
        with open(os.path.join(IMAGES_DIR, os.path.basename(name)), "wb") as f:
          f.write(data)
    if not IMAGES_DIR or not os.path.isdir(IMAGES_DIR):
      raise FileNotFoundError(f"no photos: set IMAGES_DIR (or $SPARSE_RESTORE_NB_IMAGES) to a folder of images, "
                              f"got {IMAGES_DIR!r}")
    photos = imageio.list_images(IMAGES_DIR)[:MAX_PHOTOS]
    if not photos:
      raise FileNotFoundError(f"{IMAGES_DIR}: no images")
    print(f"{len(photos)} photo(s) in {IMAGES_DIR}: {', '.join(os.path.basename(p) for p in photos)}")
    '''),
    ("md", """
    ## Restore

    `restore.restore_image` pads each photo to the network's size multiple, cuts it into `TILE`-pixel tiles that
    overlap by `OVERLAP` pixels (all of one shape, so the network compiles once), runs them in batches and blends
    the outputs with smooth weights. The restored photos are saved as 8-bit PNGs in `WORKDIR/restored`.
    """),
    ("code", '''
    OUTPUT_DIR = os.path.join(WORKDIR, "restored")
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    results = []
    for path in photos:
      rainy = imageio.read_image(path)
      height, width = rainy.shape[:2]
      plan = restore.plan_tiles(height, width, multiple, TILE, OVERLAP)
      t0 = time.time()
      restored = restore.restore_image(apply_fn, rainy, multiple=multiple, tile=TILE, overlap=OVERLAP)
      seconds = time.time() - t0
      out_path = os.path.join(OUTPUT_DIR, os.path.splitext(os.path.basename(path))[0] + ".png")
      imageio.write_png(out_path, restored)
      results.append((path, rainy, restored))
      print(f"restored {os.path.basename(path)} ({width}x{height}, {plan.count} tile(s)) in {seconds:.1f} s "
            f"-> {out_path}")
    print(f"restored {len(results)} photo(s) into {OUTPUT_DIR}")
    '''),
    ("code", '''
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(results), 2, figsize=(12, 4.2 * len(results)), squeeze=False)
    for row, (path, rainy, restored) in zip(axes, results):
      for ax, image, title in ((row[0], rainy, "before"), (row[1], restored, "after")):
        ax.imshow(np.clip(image, 0, 1))
        ax.set_title(f"{os.path.basename(path)}: {title}")
        ax.axis("off")
    plt.tight_layout()
    plt.show()
    '''),
    ("md", """
    ## Next steps

    * Many photos, or from a shell: `python -m sparse_restore.infer --checkpoint EXPORT_DIR --input photos/
      --output restored/ --tile 512` (add `--ensemble` for the 8-way flip/rotation average).
    * Score a converted model on a benchmark with the papers' protocol:
      `python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir ... --mode evaluate
      --checkpoint EXPORT_DIR`.
    * Fine-tune it on your own data: set `config.init_from = EXPORT_DIR` (see `train_tpu.ipynb`).
    """),
]


def build(cells, prefix: str, accelerator: str = "") -> nbformat.NotebookNode:
  """A stripped notebook (no outputs, deterministic ids) from ``(kind, source)`` pairs."""
  nb = v4.new_notebook()
  nb.metadata = {
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
      "colab": {"provenance": [], "toc_visible": True},
  }
  if accelerator:
    nb.metadata["accelerator"] = accelerator
  for i, (kind, text) in enumerate(cells):
    if kind == "md":
      cell = v4.new_markdown_cell(re.sub(r"\n{3,}", "\n\n", _src(text)))  # (an empty badge line)
    else:
      cell = v4.new_code_cell(_src(text))
    cell["id"] = f"{prefix}-{i:02d}"
    nb.cells.append(cell)
  nbformat.validate(nb)
  return nb


NOTEBOOKS = {
    "train_tpu.ipynb": lambda: build(TRAIN, "train", accelerator="TPU"),
    "restore_with_pretrained.ipynb": lambda: build(RESTORE, "restore"),
}


def render(nb) -> str:
  """The file text of ``nb`` (JSON, one-space indents as Jupyter writes it, final newline)."""
  return nbformat.writes(nb) + "\n"


def main(argv=None) -> int:
  """Writes (or with ``--check`` compares) every notebook; returns the exit status."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a notebook is out of date")
  args = parser.parse_args(argv)
  stale = []
  for name, make in NOTEBOOKS.items():
    path = os.path.join(HERE, name)
    text = render(make())
    current = None
    if os.path.exists(path):
      with open(path) as f:
        current = f.read()
    if current == text:
      continue
    stale.append(name)
    if not args.check:
      with open(path, "w") as f:
        f.write(text)
      print(f"wrote {path}")
  if args.check and stale:
    print(f"out of date: {', '.join(stale)} (run python colab/make_notebooks.py)", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
