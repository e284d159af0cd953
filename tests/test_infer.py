"""The inference CLI end to end with a tiny exported DRSformer: formats, failures, tiling, refusing to overwrite."""
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from doc_commands import COMMANDS, cli_args, substitute, variants
from sparse_restore import checkpoint
from sparse_restore import imageio
from sparse_restore import models
from sparse_restore import restore

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1]}


def _random_params(module, seed=0):
  """Sensibly scaled random parameters from the abstract tree (no init compilation)."""
  abstract = models.abstract_params(module)
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      bound = 1.0 / np.sqrt(np.prod(a.shape[:-1]))
      return rng.uniform(-bound, bound, a.shape).astype(np.float32)
    lo, hi = {"bias": (-0.05, 0.05), "scale": (0.8, 1.2), "temperature": (0.5, 1.5)}.get(name, (0.1, 0.3))
    return rng.uniform(lo, hi, a.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  module = models.create("drsformer", **TINY)
  path = tmp_path_factory.mktemp("model") / "tiny"
  checkpoint.save_model(str(path), "drsformer", TINY, _random_params(module))
  return str(path)


@pytest.fixture(scope="module")
def tiny_apply(tiny_model):
  module, params, _ = checkpoint.load_model(tiny_model)
  return restore.make_apply_fn(module, params)


def _cli(*args):
  env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)  # One CPU device is enough for the CLI.
  return subprocess.run([sys.executable, "-m", "sparse_restore.infer", *map(str, args)], capture_output=True,
                        text=True, env=env, timeout=900)


def _rng(seed):
  return np.random.default_rng(seed)


def test_folder_with_mixed_formats_and_a_corrupt_file(tiny_model, tiny_apply, tmp_path):
  src = tmp_path / "in"
  src.mkdir()
  # All sizes pad to 24x32, so the network compiles once.
  Image.fromarray(_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(src / "good.png")
  Image.fromarray(_rng(1).integers(0, 256, (17, 27), dtype=np.uint8), mode="L").save(src / "gray.jpg")
  Image.fromarray(_rng(2).integers(0, 256, (20, 30, 4), dtype=np.uint8), mode="RGBA").save(src / "rgba.png")
  Image.fromarray(_rng(3).integers(0, 65536, (19, 25)).astype(np.uint16)).save(src / "deep.png")
  good = (src / "good.png").read_bytes()
  (src / "corrupt.png").write_bytes(good[: len(good) // 2])
  out = tmp_path / "out"
  r = _cli("--checkpoint", tiny_model, "--input", src, "--output", out, "--quiet")
  assert r.returncode == 1, r.stderr
  assert "corrupt.png" in r.stderr and "restored 4/5" in r.stderr and "Traceback" not in r.stderr
  sizes = {n: Image.open(out / n).size for n in sorted(os.listdir(out))}
  assert sizes == {"deep.png": (25, 19), "good.png": (30, 20), "gray.png": (27, 17), "rgba.png": (30, 20)}
  for n in sizes:
    im = Image.open(out / n)
    assert im.mode == "RGB" and im.format == "PNG"
  assert (src / "good.png").read_bytes() == good  # Inputs untouched.
  # The CLI writes exactly what the library computes (rounded to 8 bits).
  expected = imageio.to_uint8(restore.restore_image(tiny_apply, imageio.read_image(str(src / "good.png")),
                                                    multiple=8))
  np.testing.assert_array_equal(np.asarray(Image.open(out / "good.png")), expected)


def test_tiled_ensemble_cli_matches_library(tiny_model, tiny_apply, tmp_path):
  img = _rng(4).integers(0, 256, (30, 37, 3), dtype=np.uint8)
  Image.fromarray(img).save(tmp_path / "photo.bmp")
  r = _cli("--checkpoint", tiny_model, "--input", tmp_path / "photo.bmp", "--output", tmp_path / "o",
           "--tile", "16", "--tile-overlap", "8", "--batch", "2", "--ensemble")
  assert r.returncode == 0, r.stderr
  got = np.asarray(Image.open(tmp_path / "o" / "photo.png"))
  expected = restore.restore_image(tiny_apply, img.astype(np.float32) / 255.0, multiple=8, tile=16, overlap=8,
                                   batch=2, ensemble=True)
  np.testing.assert_array_equal(got, imageio.to_uint8(expected))


def test_refuses_to_overwrite_inputs(tiny_model, tmp_path):
  src = tmp_path / "in"
  src.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "1.png")
  before = (src / "1.png").read_bytes()
  for target in (src, tmp_path / "in" / ".." / "in"):
    r = _cli("--checkpoint", tiny_model, "--input", src, "--output", target)
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr and "1.png" in r.stderr
  r = _cli("--checkpoint", tiny_model, "--input", src / "1.png", "--output", src)
  assert r.returncode == 2
  assert (src / "1.png").read_bytes() == before and os.listdir(src) == ["1.png"]


def test_usage_errors(tiny_model, tmp_path):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.jpg")
  r = _cli("--checkpoint", tiny_model, "--input", tmp_path / "nope", "--output", tmp_path / "o")
  assert r.returncode == 2 and "nope" in r.stderr
  r = _cli("--checkpoint", tiny_model, "--input", tmp_path, "--output", tmp_path / "o")
  assert r.returncode == 2 and "same output name" in r.stderr  # a.png and a.jpg would both be a.png.
  os.remove(tmp_path / "a.jpg")
  r = _cli("--checkpoint", tmp_path, "--input", tmp_path, "--output", tmp_path / "o")
  assert r.returncode == 2 and "model.json" in r.stderr and "Traceback" not in r.stderr
  r = _cli("--checkpoint", tiny_model, "--input", tmp_path, "--output", tmp_path / "o", "--tile", "16",
           "--tile-overlap", "16")
  assert r.returncode == 2 and "smaller than the tile" in r.stderr


def _assert_one_error_line(stderr, *needles):
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
  for n in needles:
    assert str(n) in lines[0], stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc, where no one can create files")
def test_output_folder_that_cannot_be_created_or_written(tiny_model, tmp_path):
  """Exit status 2 and one error line, decided before the model is loaded: a folder that cannot be created
  (under a file; in /proc), and an existing folder that cannot be written into (/proc, even for root)."""
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  (tmp_path / "file").write_text("x")
  for out, what in ((tmp_path / "file" / "sub", "cannot create the output folder"),
                    ("/proc/sparse_restore_test/out", "cannot create the output folder"),
                    ("/proc", "cannot write into the output folder")):
    # A checkpoint that does not exist proves that the output is checked first.
    r = _cli("--checkpoint", tmp_path / "no_model", "--input", tmp_path / "a.png", "--output", out)
    assert r.returncode == 2, r.stderr
    _assert_one_error_line(r.stderr, f"error: --output {out}: {what}")
  assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into a chmod 555 folder; the /proc case covers the probe for root")
def test_read_only_output_folder_is_refused_before_any_image(tiny_model, tmp_path):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  out = tmp_path / "ro"
  out.mkdir()
  out.chmod(0o555)
  try:
    r = _cli("--checkpoint", tiny_model, "--input", tmp_path / "a.png", "--output", out)
  finally:
    out.chmod(0o755)
  assert r.returncode == 2
  _assert_one_error_line(r.stderr, f"--output {out}: cannot write into the output folder (Permission denied)")


def test_failed_start_leaves_no_empty_output_folder(tmp_path):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  r = _cli("--checkpoint", tmp_path / "no_model", "--input", tmp_path / "a.png", "--output", tmp_path / "new")
  assert r.returncode == 2 and "no_model" in r.stderr
  assert not (tmp_path / "new").exists()


def test_restored_files_get_the_usual_permissions(tiny_model, tmp_path):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  env = dict(os.environ, PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, "-m", "sparse_restore.infer", "--checkpoint", tiny_model, "--input",
                      str(tmp_path / "a.png"), "--output", str(tmp_path / "out"), "--quiet"],
                     capture_output=True, text=True, env=env, timeout=900, preexec_fn=lambda: os.umask(0o022))
  assert r.returncode == 0, r.stderr
  assert os.stat(tmp_path / "out" / "a.png").st_mode & 0o777 == 0o644
  assert os.listdir(tmp_path / "out") == ["a.png"]  # no probe or temporary file left


def test_truncated_checkpoint_is_reported_as_damaged(tiny_model, tmp_path):
  """Not "parameters do not match": the folder and the damage are named, exit status 2."""
  import shutil
  model = tmp_path / "model"
  shutil.copytree(tiny_model, model)
  files = [os.path.join(d, f) for d, _, fs in os.walk(model / "params") for f in fs]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  r = _cli("--checkpoint", model, "--input", tmp_path / "a.png", "--output", tmp_path / "out")
  assert r.returncode == 2
  _assert_one_error_line(r.stderr, f"error: {model}/params: parameter data is damaged or truncated (")
  assert "do not match" not in r.stderr and not (tmp_path / "out").exists()


def test_rounded_tile_and_overlap_are_stated(tiny_model, tmp_path):
  """--tile / --tile-overlap are rounded up to the network's multiple (8 here): the start line says what was asked
  and what is used, and --help says that they are rounded. Without a terminal, progress is plain lines."""
  Image.fromarray(_rng(5).integers(0, 256, (30, 37, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
  r = _cli("--checkpoint", tiny_model, "--input", tmp_path / "photo.png", "--output", tmp_path / "o",
           "--tile", "20", "--tile-overlap", "5")
  assert r.returncode == 0, r.stderr
  assert ("tiles 24 (asked 20: rounded up to the network's multiple 8) overlap 8 (asked 5: rounded up to the "
          "network's multiple 8)") in r.stderr
  assert "\r" not in r.stderr and "restored 1/1 image(s)" in r.stderr
  assert re.search(r"^compilation cache: \S", r.stderr, re.M), r.stderr
  r = _cli("--checkpoint", tiny_model, "--input", tmp_path / "photo.png", "--output", tmp_path / "o2",
           "--tile", "24", "--tile-overlap", "8", "--quiet")
  assert r.returncode == 0 and "tiles 24 overlap 8 batch 4" in r.stderr and "asked" not in r.stderr
  help_text = " ".join(_cli("--help").stdout.split())
  assert "rounded up to the network's size multiple" in help_text and "32 becomes 128" in help_text


def test_infer_docstring_options(fixtures_dir, tmp_path, capsys):
  """infer.py's usage line with every option put in (`--tile --tile-overlap --ensemble --batch --dtype bfloat16`),
  scaled to a 40x56 photo and 32 px tiles, on a converted tiny DRSformer (no MEFC: half the compile time). That
  the CLI computes what the library does is test_infer.py's job; here: the options are taken and it restores."""
  import numpy as np
  from PIL import Image
  from sparse_restore import infer
  from sparse_restore.convert import __main__ as convert_cli
  words = [c for c in COMMANDS if c.source.startswith("sparse_restore/infer.py") and "[--ensemble]" in c.tokens]
  assert len(words) == 1
  full = variants(words[0].tokens)[-1]  # every optional part put in, the last `a|b` alternative
  assert full[full.index("--dtype") + 1] == "bfloat16"
  model = tmp_path / "exports" / "drsformer"
  assert convert_cli.main(["--input", str(fixtures_dir / "drsformer_tiny_nomefc.pth"), "--output", str(model),
                           "--quiet"]) == 0
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(photos / "rainy.jpg")
  args = substitute(cli_args(full, "sparse_restore.infer"), {
      "exports/drsformer_rain200h": str(model), "photos/": str(photos), "restored/": str(tmp_path / "restored")})
  args += ["--tile", "32", "--tile-overlap", "8", "--quiet"]
  assert infer.main(args) == 0
  err = capsys.readouterr().err
  assert "tiles 32 overlap 8 batch 4; 8x ensemble; bfloat16" in err, err
  out = Image.open(tmp_path / "restored" / "rainy.png")
  assert out.format == "PNG" and out.mode == "RGB" and out.size == (56, 40)
  assert os.listdir(photos) == ["rainy.jpg"]
