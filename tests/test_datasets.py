"""TFDS builders for paired restoration sets: real files written, built to array_record and read back exactly."""
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from doc_commands import COMMANDS, doc_command
from sparse_restore import datasets, imageio, metrics
from sparse_restore.datasets import synthetic_rain

REPO = pathlib.Path(__file__).resolve().parents[1]


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _raw_set(root, layout=(("train", 3), ("test", 2)), size=(12, 16), dirs=("input", "target"),
             names=lambda split, i: (str(i + 1), str(i + 1)), seed=0):
  """Writes paired noise PNGs in the authors' layout under ``root``; returns {split: [(name, in, tgt)]}."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in layout:
    out[split] = []
    for i in range(n):
      x = rng.integers(0, 256, size + (3,), dtype=np.uint8)
      y = rng.integers(0, 256, size + (3,), dtype=np.uint8)
      in_name, tgt_name = names(split, i)
      _png(root / split / dirs[0] / f"{in_name}.png", x)
      _png(root / split / dirs[1] / f"{tgt_name}.png", y)
      out[split].append((in_name, x, y))
  return out


def _build(name, manual_dir, data_dir):
  return datasets.get_builder(name, data_dir=str(data_dir), manual_dir=str(manual_dir)).build()


def test_registry_names_protocols_and_channels():
  assert datasets.names() == sorted(["rain200h", "rain200l", "did", "ddn", "spa", "agan", "densehaze",
                                     "synthetic_rain"])
  expected = {"rain200h": ("restormer", "y"), "rain200l": ("restormer", "y"), "spa": ("restormer", "y"),
              "did": ("rcdnet", "y"), "ddn": ("rcdnet", "y"), "agan": ("basicsr", "rgb"),
              "densehaze": ("basicsr", "rgb"), "synthetic_rain": ("restormer", "y")}
  for name, (protocol, channel) in expected.items():
    spec = datasets.get_spec(name)
    assert (spec.protocol, spec.channel) == (protocol, channel), name
    cls = datasets.builder_class(name)
    assert cls.name == name
    if name != "synthetic_rain":
      assert f"tfds build data/{name}" in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert "test_a/data/" in datasets.Agan.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert "valid_dense/gt/" in datasets.Densehaze.MANUAL_DOWNLOAD_INSTRUCTIONS
  with pytest.raises(datasets.DatasetError, match="unknown dataset 'nope'.*rain200h"):
    datasets.get_builder("nope")


_READ_BACK_SCRIPT = textwrap.dedent("""
    import sys, time, json
    import numpy as np
    from PIL import Image
    import tensorflow_datasets as tfds
    from sparse_restore import datasets, imageio, metrics
    manual, data_dir = sys.argv[1], sys.argv[2]
    t = time.perf_counter()
    builder = datasets.get_builder('rain200h', data_dir=data_dir, manual_dir=manual).build()
    build_s = time.perf_counter() - t
    checked = []
    for split in ('train', 'test'):
      for source in (tfds.data_source('rain200h', split=split, data_dir=data_dir), builder.as_data_source(split)):
        names = [source[i]['name'].decode() for i in range(len(source))]
        assert names == ['1', '2', '3'], names
        for i, name in enumerate(names):
          for key, folder in (('input', 'input'), ('target', 'target')):
            ref = np.asarray(Image.open(f'{manual}/{split}/{folder}/{name}.png').convert('RGB'))
            got = source[i][key]
            assert got.dtype == np.uint8 and np.array_equal(got, ref), (split, name, key)
            checked.append(got.shape)
    assert builder.info.metadata['protocol'] == 'restormer' and builder.info.metadata['channel'] == 'y'
    print(json.dumps({'tf_imported': 'tensorflow' in sys.modules, 'build_s': build_s, 'n': len(checked),
                      'shapes': sorted(set(map(str, checked)))}))
""")


def test_build_rain200h_sample_reads_back_exact_pixels_without_tensorflow(data_dir, tmp_path):
  """Real Rain200H pairs -> array_record -> tfds.data_source: identical pixels, names, and no TF import."""
  import json
  manual = data_dir / "rain200h_sample"
  script = tmp_path / "read_back.py"
  script.write_text(_READ_BACK_SCRIPT)
  out = subprocess.run([sys.executable, str(script), str(manual), str(tmp_path / "tfds")], capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["tf_imported"] is False
  assert result["n"] == 2 * 2 * 3 * 2  # splits x sources x images x (input, target)
  assert result["shapes"] == ["(321, 481, 3)", "(481, 321, 3)"]
  files = sorted(p.name for p in (tmp_path / "tfds" / "rain200h" / "1.0.0").iterdir())
  assert "rain200h-train.array_record-00000-of-00001" in files and "rain200h-test.array_record-00000-of-00001" in files


def test_build_is_idempotent_and_prepared_data_needs_no_manual_dir(tmp_path):
  _raw_set(tmp_path / "raw")
  b = _build("rain200l", tmp_path / "raw", tmp_path / "tfds")
  record = next((tmp_path / "tfds" / "rain200l" / "1.0.0").glob("*train.array_record*"))
  mtime = record.stat().st_mtime_ns
  shutil.rmtree(tmp_path / "raw")  # not needed any more once prepared
  t = time.perf_counter()
  b2 = datasets.get_builder("rain200l", data_dir=str(tmp_path / "tfds")).build()
  assert time.perf_counter() - t < 2.0
  assert record.stat().st_mtime_ns == mtime
  assert len(b2.as_data_source("train")) == 3 and len(b.as_data_source("test")) == 2


def test_pairs_by_name_not_position_and_sorts_naturally(tmp_path):
  """Input 10.png must pair with target 10.png even though sorted listings would interleave differently."""
  rng = np.random.default_rng(1)
  raw = tmp_path / "raw"
  imgs = {}
  for split in ("train", "test"):
    for name in ("10", "2", "1"):
      x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      _png(raw / split / "input" / f"{name}.png", x)
      _png(raw / split / "target" / f"{name}.png", 255 - x)
      imgs[split, name] = x
  # A JPEG input pairs with a PNG target of the same stem and is stored as its original bytes.
  x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  Image.fromarray(x).save(raw / "train" / "input" / "7.jpg", quality=95)
  _png(raw / "train" / "target" / "7.png", x)
  b = _build("did", raw, tmp_path / "tfds")
  src = b.as_data_source("train")
  assert [src[i]["name"].decode() for i in range(len(src))] == ["1", "2", "7", "10"]
  for i in range(len(src)):
    ex = src[i]
    name = ex["name"].decode()
    if name == "7":
      assert np.array_equal(ex["input"], np.asarray(Image.open(raw / "train" / "input" / "7.jpg")))
    else:
      assert np.array_equal(ex["input"], imgs["train", name])
      assert np.array_equal(ex["target"], 255 - imgs["train", name])


def test_agan_layout_and_suffix_pairing(tmp_path):
  """AST's raindrop layout: train/ and test_a/ with data/ and gt/, files 0_rain.png <-> 0_clean.png."""
  raw = tmp_path / "raw"
  made = _raw_set(raw, layout=(("train", 3), ("test_a", 2)), dirs=("data", "gt"),
                  names=lambda s, i: (f"{i}_rain", f"{i}_clean"))
  b = _build("agan", raw, tmp_path / "tfds")
  for split, raw_split in (("train", "train"), ("test", "test_a")):
    src = b.as_data_source(split)
    assert len(src) == len(made[raw_split])
    for i, (name, x, y) in enumerate(made[raw_split]):
      assert src[i]["name"].decode() == name
      assert np.array_equal(src[i]["input"], x) and np.array_equal(src[i]["target"], y)


def test_ddn_many_inputs_per_target_and_nested_authors_layout(tmp_path):
  """DDN-style '<id>_<k>' inputs share target '<id>'; the authors' Datasets/train/DDN-Data/ layout is accepted."""
  raw = tmp_path / "Datasets"
  rng = np.random.default_rng(2)
  for split, ids in (("train", (1, 2)), ("test", (3,))):
    for i in ids:
      clean = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
      _png(raw / split / "DDN-Data" / "target" / f"{i}.png", clean)
      for k in (1, 2, 3):
        _png(raw / split / "DDN-Data" / "input" / f"{i}_{k}.png", clean // k)
  b = _build("ddn", raw, tmp_path / "tfds")
  src = b.as_data_source("train")
  assert [src[i]["name"].decode() for i in range(len(src))] == ["1_1", "1_2", "1_3", "2_1", "2_2", "2_3"]
  for i in range(len(src)):
    k = int(src[i]["name"].decode().split("_")[1])
    assert np.array_equal(src[i]["input"], src[i]["target"] // k)


def test_non_rgb_images_are_converted_to_rgb(tmp_path):
  raw = tmp_path / "raw"
  rng = np.random.default_rng(3)
  grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
  rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
  pal = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).convert("P")
  for split in ("train", "test"):
    (raw / split / "input").mkdir(parents=True)
    (raw / split / "target").mkdir(parents=True)
    Image.fromarray(grey).save(raw / split / "input" / "a.png")
    Image.fromarray(rgba).save(raw / split / "target" / "a.png")
    pal.save(raw / split / "input" / "b.png")
    Image.fromarray(grey).save(raw / split / "target" / "b.png")
  src = _build("rain200h", raw, tmp_path / "tfds").as_data_source("train")
  a, b = src[0], src[1]
  assert np.array_equal(a["input"], np.repeat(grey[..., None], 3, -1))
  assert np.array_equal(a["target"], rgba[..., :3])
  assert np.array_equal(b["input"], np.asarray(pal.convert("RGB")))


def test_listing_and_order_are_imageios(tmp_path):
  """The folders are listed by sparse_restore.imageio (its extensions, its natural, case-insensitive order):
  'a' sorts before 'B', and a WebP input pairs with a PPM target."""
  raw = tmp_path / "raw"
  rng = np.random.default_rng(4)
  for split in ("train", "test"):
    for name, ext_in, ext_tgt in (("B", "png", "png"), ("a", "png", "png"), ("img10", "png", "png"),
                                  ("IMG9", "png", "png"), ("w", "webp", "ppm")):
      x = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
      (raw / split / "input").mkdir(parents=True, exist_ok=True)
      (raw / split / "target").mkdir(parents=True, exist_ok=True)
      lossless = {"lossless": True} if ext_in == "webp" else {}
      Image.fromarray(x).save(raw / split / "input" / f"{name}.{ext_in}", **lossless)
      Image.fromarray(255 - x).save(raw / split / "target" / f"{name}.{ext_tgt}")
  src = _build("rain200l", raw, tmp_path / "tfds").as_data_source("test")
  names = [src[i]["name"].decode() for i in range(len(src))]
  assert names == sorted(names, key=imageio.natural_key) == ["a", "B", "IMG9", "img10", "w"]
  w = src[names.index("w")]
  assert np.array_equal(w["input"], 255 - w["target"])  # the lossless WebP pairs with its PPM target


def test_specs_use_the_metrics_protocol_table():
  for spec in datasets.SPECS.values():
    assert spec.protocol in metrics.PROTOCOLS and spec.channel in metrics.CHANNELS, spec.name
  with pytest.raises(ValueError, match="protocol must be one of"):
    datasets.DatasetSpec(name="x", title="x", protocol="matlab", channel="y")


def test_dataset_modules_import_no_cycle():
  """specs <- folders <- builders <- synthetic_rain, registry in the package: no submodule imports one that
  imports it back (synthetic_rain used to import paired.py, which imported it for the registry)."""
  import ast as pyast
  package = REPO / "sparse_restore" / "datasets"
  deps = {}
  for path in package.glob("*.py"):
    if path.name == "__init__.py":
      continue
    found = set()
    for node in pyast.walk(pyast.parse(path.read_text())):
      if isinstance(node, pyast.ImportFrom) and node.module == "sparse_restore.datasets":
        found |= {a.name for a in node.names}
      elif isinstance(node, pyast.ImportFrom) and (node.module or "").startswith("sparse_restore.datasets."):
        found.add(node.module.rsplit(".", 1)[1])
      elif isinstance(node, pyast.Import):
        found |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("sparse_restore.datasets.")}
    deps[path.stem] = found
  assert set(deps) == {"specs", "folders", "builders", "synthetic_rain"}, deps

  def reachable(start):
    seen, todo = set(), [start]
    while todo:
      for d in deps.get(todo.pop(), ()):
        if d not in seen:
          seen.add(d)
          todo.append(d)
    return seen

  for name in deps:
    assert name not in reachable(name), (name, deps)


# ---------------------------------------------------------------------------------------------------------------
# DatasetError cases
# ---------------------------------------------------------------------------------------------------------------


def _expect_error(name, raw, tmp_path, *patterns):
  with pytest.raises(datasets.DatasetError) as e:
    _build(name, raw, tmp_path / "tfds")
  msg = str(e.value)
  for p in patterns:
    assert p in msg, f"{p!r} not in:\n{msg}"
  # Nothing half-written is left behind as if it were prepared.
  assert not datasets.get_builder(name, data_dir=str(tmp_path / "tfds")).is_prepared()
  return msg


def test_error_missing_manual_dir(tmp_path):
  _expect_error("rain200h", tmp_path / "nowhere", tmp_path, str(tmp_path / "nowhere"), "does not exist",
                "<manual_dir>/train/input/*.png")


def test_error_missing_split_folder_names_expected_path(tmp_path):
  raw = tmp_path / "raw"
  _raw_set(raw, layout=(("train", 2),))
  _expect_error("rain200h", raw, tmp_path, "missing test split folder", str(raw / "test"), "input/", "target/")


def test_error_missing_target_folder(tmp_path):
  raw = tmp_path / "raw"
  _raw_set(raw)
  shutil.rmtree(raw / "test" / "target")
  _expect_error("spa", raw, tmp_path, f"missing folder {raw / 'test' / 'target'}", "clean test images")


def test_error_agan_expects_its_own_folder_names(tmp_path):
  raw = tmp_path / "raw"
  _raw_set(raw, layout=(("train", 2), ("test", 2)))  # DRSformer-style names: wrong for AGAN
  _expect_error("agan", raw, tmp_path, str(raw / "train"), "data/", "gt/")


def test_error_unpaired_files_listed_both_ways(tmp_path):
  raw = tmp_path / "raw"
  _raw_set(raw, layout=(("train", 4), ("test", 2)))
  (raw / "train" / "target" / "2.png").rename(raw / "train" / "target" / "20.png")
  (raw / "train" / "input" / "4.png").unlink()
  msg = _expect_error("rain200h", raw, tmp_path, "unpaired files", str(raw / "train" / "input"),
                      "1 in input/ but not in target/: 2", "2 in target/ but not in input/: 4, 20")
  assert "pairs are matched by file name" in msg


def test_error_empty_folder(tmp_path):
  raw = tmp_path / "raw"
  _raw_set(raw)
  for p in (raw / "test" / "input").iterdir():
    p.unlink()
  _expect_error("rain200h", raw, tmp_path, str(raw / "test" / "input"), "contains no images")


def test_error_unreadable_image_names_the_file(tmp_path):
  raw = tmp_path / "raw"
  _raw_set(raw)
  bad = raw / "train" / "target" / "2.png"
  bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
  _expect_error("rain200h", raw, tmp_path, f"cannot read image {bad}")


def test_error_size_mismatch_names_pair_and_sizes(tmp_path):
  raw = tmp_path / "raw"
  _raw_set(raw)
  _png(raw / "test" / "target" / "2.png", np.zeros((10, 16, 3), np.uint8))
  _expect_error("rain200h", raw, tmp_path, "test pair '2'", str(raw / "test" / "input" / "2.png"), "16x12",
                str(raw / "test" / "target" / "2.png"), "16x10")


def test_error_duplicate_stems(tmp_path):
  raw = tmp_path / "raw"
  _raw_set(raw)
  Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(raw / "train" / "input" / "1.jpg")
  _expect_error("rain200h", raw, tmp_path, "two images with the same name '1'", str(raw / "train" / "input"))


# ---------------------------------------------------------------------------------------------------------------
# Synthetic rain
# ---------------------------------------------------------------------------------------------------------------


def _psnr(a, b):
  return 10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def test_synthetic_rain_is_deterministic_and_plausible():
  clean = synthetic_rain.random_tile(synthetic_rain.source_image("astronaut"), 96, 0).astype(np.float32) / 255
  r1, p1 = synthetic_rain.synthesize_rain(clean, 7)
  r2, p2 = synthetic_rain.synthesize_rain(clean, 7)
  r3, p3 = synthetic_rain.synthesize_rain(clean, 8)
  assert np.array_equal(r1, r2) and p1 == p2
  assert not np.array_equal(r1, r3) and p1 != p3
  assert r1.shape == clean.shape and r1.dtype == np.float32 and 0 <= r1.min() and r1.max() <= 1
  assert np.all(r1 >= clean - 1e-6)  # screen blend only brightens
  psnrs = [_psnr(synthetic_rain.synthesize_rain(clean, s)[0], clean) for s in range(40)]
  assert 13 < np.median(psnrs) < 30, np.median(psnrs)
  assert min(psnrs) > 8 and max(psnrs) < 45, (min(psnrs), max(psnrs))
  assert np.std(psnrs) > 1.5  # random density/brightness give a spread of rain strengths


def test_streak_kernel_follows_angle_length_and_width():
  vertical = synthetic_rain.streak_kernel(length=21, width=0.6, angle=0)
  assert vertical.max() == pytest.approx(1.0)
  c = vertical.shape[0] // 2
  assert vertical[c - 8, c] > 0.5 and vertical[c, c - 8] < 1e-6  # extends vertically, not sideways
  slanted = synthetic_rain.streak_kernel(length=21, width=0.6, angle=45)
  assert slanted[c + 6, c + 6] > 0.5 and slanted[c + 6, c - 6] < 1e-6  # down-right diagonal
  wide = synthetic_rain.streak_kernel(length=21, width=2.0, angle=0)
  assert wide[c, c + 2] > 0.5 > vertical[c, c + 2]


def test_rain_layer_density_controls_coverage():
  base = synthetic_rain.RainLayerParams(density=0.001, angle=10, length=20, width=0.8, brightness=0.7)
  sparse = synthetic_rain.rain_layer((128, 128), base, 0)
  dense = synthetic_rain.rain_layer((128, 128), synthetic_rain.RainLayerParams(0.008, 10, 20, 0.8, 0.7), 0)
  assert (dense > 0.1).mean() > 3 * (sparse > 0.1).mean() > 0
  assert sparse.max() <= 0.7 + 1e-6


def test_demo_sources_are_bundled_and_held_out():
  assert not set(synthetic_rain.TRAIN_SOURCES) & set(synthetic_rain.TEST_SOURCES)
  for name in synthetic_rain.TRAIN_SOURCES + synthetic_rain.TEST_SOURCES:
    img = synthetic_rain.source_image(name)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256


def test_synthetic_rain_builder_prepares_quickly(tmp_path):
  t = time.perf_counter()
  b = datasets.get_builder("synthetic_rain", data_dir=str(tmp_path)).build()
  seconds = time.perf_counter() - t
  assert seconds < 60, seconds
  train, test = b.as_data_source("train"), b.as_data_source("test")
  B = datasets.SyntheticRain
  assert (len(train), len(test)) == (B.TRAIN_EXAMPLES, B.TEST_EXAMPLES)
  assert train[0]["input"].shape == (B.TRAIN_TILE, B.TRAIN_TILE, 3)
  assert test[0]["input"].shape == (B.TEST_TILE, B.TEST_TILE, 3)
  sources = lambda src: {src[i]["name"].decode().split("_", 2)[2] for i in range(len(src))}  # noqa: E731
  assert sources(train) == set(synthetic_rain.TRAIN_SOURCES)
  assert sources(test) == set(synthetic_rain.TEST_SOURCES)
  psnrs = [_psnr(test[i]["input"] / 255.0, test[i]["target"] / 255.0) for i in range(len(test))]
  assert 15 < np.median(psnrs) < 30 and min(psnrs) > 8
  # Generation is deterministic: the same first pair comes out of a fresh generator.
  srcs = {n: synthetic_rain.source_image(n) for n in synthetic_rain.TEST_SOURCES}
  rainy, clean, _ = synthetic_rain.make_pair(srcs, 0, size=B.TEST_TILE, seed=(B.SEED, 1))
  assert np.array_equal(test[0]["input"], rainy) and np.array_equal(test[0]["target"], clean)


def test_tfds_cli_build_subcommand_builds_the_data_folder(data_dir, tmp_path):
  """`tfds build data/rain200h --manual_dir ...` through the TFDS CLI's build command (data/tfds_build.py)."""
  out = subprocess.run(
      [sys.executable, str(REPO / "data" / "tfds_build.py"), str(REPO / "data" / "rain200h"), "--manual_dir",
       str(data_dir / "rain200h_sample"), "--data_dir", str(tmp_path)],
      capture_output=True, text=True, timeout=300, cwd=tmp_path,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
  assert out.returncode == 0, out.stderr[-3000:]
  src = tfds.data_source("rain200h", split="test", data_dir=str(tmp_path))
  ref = np.asarray(Image.open(data_dir / "rain200h_sample" / "test" / "target" / "2.png"))
  assert src[1]["name"] == b"2" and np.array_equal(src[1]["target"], ref)
  # The package builder sees the same prepared data.
  assert datasets.get_builder("rain200h", data_dir=str(tmp_path)).is_prepared()


def test_build_with_python_c(data_dir, tmp_path):
  """data/README.md: the `python -c "...get_builder(...).build()"` command, run by a shell-like subprocess with
  $HOME in the temporary folder: `~/tensorflow_datasets` is expanded (no folder named `~` appears)."""
  words = [w for w in COMMANDS if w.tokens[:2] == ("python", "-c")]
  assert len(words) == 1, [c.text for c in words]
  code = words[0].tokens[2].replace("/path/to/Rain200H", str(data_dir / "rain200h_sample"))
  work = tmp_path / "cwd"
  work.mkdir()
  r = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300,
                     env=dict(os.environ, HOME=str(tmp_path)))
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.listdir(work) == []
  built = datasets.get_builder("rain200h", data_dir=str(tmp_path / "tensorflow_datasets"))
  assert built.is_prepared()
  assert len(built.as_data_source("train")) == 3 and len(built.as_data_source("test")) == 3


def test_tfds_build_synthetic_rain(tmp_path):
  """data/README.md: `python data/tfds_build.py data/synthetic_rain --data_dir ~/tensorflow_datasets` (the TFDS
  CLI's build command), from the repository root, `~` expanded as the shell would with $HOME = tmp_path."""
  words = doc_command("python data/tfds_build.py data/synthetic_rain --data_dir ~/tensorflow_datasets")
  args = [str(tmp_path) + w[1:] if w.startswith("~/") else w for w in words[1:]]
  r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                     env=dict(os.environ, HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3"))
  assert r.returncode == 0, r.stderr[-3000:]
  built = datasets.get_builder("synthetic_rain", data_dir=str(tmp_path / "tensorflow_datasets"))
  assert built.is_prepared()
  B = datasets.SyntheticRain
  assert (len(built.as_data_source("train")), len(built.as_data_source("test"))) == (B.TRAIN_EXAMPLES,
                                                                                     B.TEST_EXAMPLES)
