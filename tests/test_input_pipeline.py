"""grain input pipeline over TFDS array_record sources: crops, augmentation, determinism, sharding, resume."""
import json
import subprocess
import sys
import textwrap
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

from sparse_restore import datasets, input_pipeline

N_TRAIN = 10
SIZES = [(40, 52), (48, 48), (36, 60), (64, 40), (33, 33)]


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _write_set(raw, images_by_split, relation=lambda x: 255 - x):
  for split, images in images_by_split.items():
    for name, x in images.items():
      _png(raw / split / "input" / f"{name}.png", x)
      _png(raw / split / "target" / f"{name}.png", relation(x))


def _id_image(i, size, rng):
  """Channel 0 holds the image id (constant), channels 1-2 noise: a patch tells which image it came from."""
  x = rng.integers(0, 256, size + (3,), dtype=np.uint8)
  x[..., 0] = 20 * i
  return x


def _config(data_dir, **kw):
  cfg = input_pipeline.default_data_config()
  cfg.name = "rain200h"
  cfg.data_dir = str(data_dir)
  cfg.patch_size = 32
  cfg.update(kw)
  return cfg


@pytest.fixture(scope="module")
def id_set(tmp_path_factory):
  """10 training pairs (target = 255 - input) of different sizes, 3 test pairs; built to array_record."""
  root = tmp_path_factory.mktemp("id_set")
  rng = np.random.default_rng(0)
  train = {str(i): _id_image(i, SIZES[i % len(SIZES)], rng) for i in range(N_TRAIN)}
  test = {str(i): rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8) for i in (1, 2, 10)}
  _write_set(root / "raw", {"train": train, "test": test})
  datasets.get_builder("rain200h", data_dir=str(root / "tfds"), manual_dir=str(root / "raw")).build()
  return root, train, test


def _take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def _ids(batch):
  return np.round(batch["input"][:, 0, 0, 0] * 255 / 20).astype(int).tolist()


def test_batches_have_fixed_shapes_and_keep_the_pair_aligned(id_set):
  root, _, _ = id_set
  cfg = _config(root / "tfds", random_flip=True, random_rot90=True)
  for batch in _take(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=0), 6):
    assert set(batch) == {"input", "target"}
    for key in ("input", "target"):
      assert batch[key].shape == (4, 32, 32, 3) and batch[key].dtype == np.float32
      assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
    # The same crop/flip/rotation of input and target: target = 1 - input pixel by pixel (noise channels would
    # not match for any other crop or orientation).
    np.testing.assert_allclose(batch["target"], 1.0 - batch["input"], atol=1e-6)
    assert np.all(batch["input"][..., 0] == batch["input"][:, :1, :1, 0])  # one source image per patch


def test_same_seed_same_stream_other_seed_differs(id_set):
  root, _, _ = id_set
  cfg = _config(root / "tfds")
  a = _take(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=5), 4)
  b = _take(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=5), 4)
  c = _take(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=6), 4)
  for x, y in zip(a, b):
    assert np.array_equal(x["input"], y["input"]) and np.array_equal(x["target"], y["target"])
  assert not all(np.array_equal(x["input"], z["input"]) for x, z in zip(a, c))


def test_epochs_visit_every_image_once_and_reshuffle(id_set):
  root, _, _ = id_set
  batches = _take(input_pipeline.train_dataset(_config(root / "tfds"), global_batch_size=5, seed=1), 4)
  epochs = [sum((_ids(b) for b in batches[k:k + 2]), []) for k in (0, 2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(N_TRAIN))
  assert epochs[0] != epochs[1]


def test_iterator_state_restores_the_exact_stream(id_set):
  root, _, _ = id_set
  ds = input_pipeline.train_dataset(_config(root / "tfds"), global_batch_size=3, seed=2)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  it2 = iter(input_pipeline.train_dataset(_config(root / "tfds"), global_batch_size=3, seed=2))
  it2.set_state(json.loads(json.dumps(state)))  # the state survives serialisation (it goes into checkpoints)
  for e in expected:
    got = next(it2)
    assert np.array_equal(got["input"], e["input"]) and np.array_equal(got["target"], e["target"])


@pytest.mark.parametrize("process_count", [2, 3])
def test_process_shards_are_disjoint_and_cover_the_data(id_set, process_count):
  root, _, _ = id_set
  seen = []
  for p in range(process_count):
    ds = input_pipeline.train_dataset(_config(root / "tfds"), global_batch_size=process_count, seed=0,
                                      process_index=p, process_count=process_count)
    shard = len(range(p, N_TRAIN, process_count))
    ids = sum((_ids(b) for b in _take(ds, shard)), [])
    assert len(set(ids)) == shard  # one epoch of the shard
    seen.append(set(ids))
  assert set().union(*seen) == set(range(N_TRAIN))
  assert sum(len(s) for s in seen) == N_TRAIN


def _dihedral(x):
  out = []
  for k in range(4):
    r = np.rot90(x, k)
    out += [r, r[:, ::-1]]
  return out


@pytest.mark.parametrize("flip,rot,expected", [(False, False, 1), (False, True, 4), (True, False, 4),
                                               (True, True, 8)])
def test_flips_and_rotations(tmp_path, flip, rot, expected):
  """A 32x32 image cropped at 32: every output is one of its 8 flips/rotations; the options choose which."""
  x = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  _write_set(tmp_path / "raw", {"train": {"a": x}, "test": {"a": x}})
  datasets.get_builder("rain200h", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw")).build()
  cfg = _config(tmp_path / "tfds", random_flip=flip, random_rot90=rot)
  variants = [v.astype(np.float32) / 255 for v in _dihedral(x)]
  hits = set()
  for batch in _take(input_pipeline.train_dataset(cfg, global_batch_size=8, seed=0), 6):
    for patch, target in zip(batch["input"], batch["target"]):
      match = [i for i, v in enumerate(variants) if np.array_equal(patch, v)]
      assert len(match) == 1
      np.testing.assert_allclose(target, 1 - patch, atol=1e-6)
      hits.add(match[0])
  assert len(hits) == expected, hits
  if not rot:  # flips only: identity, vertical, horizontal, both
    assert hits <= {0, 1, 4, 5}


def test_images_smaller_than_the_patch_are_mirror_padded(tmp_path):
  x = np.random.default_rng(4).integers(0, 256, (20, 40, 3), dtype=np.uint8)
  _write_set(tmp_path / "raw", {"train": {"a": x}, "test": {"a": x}})
  datasets.get_builder("rain200h", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "raw")).build()
  cfg = _config(tmp_path / "tfds", random_flip=False, random_rot90=False)
  padded = np.pad(x, ((0, 12), (0, 0), (0, 0)), mode="symmetric").astype(np.float32) / 255
  assert np.array_equal(padded[20:], x[::-1][:12].astype(np.float32) / 255)  # edge row repeated, then mirrored
  lefts = set()
  for batch in _take(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=0), 4):
    for patch in batch["input"]:
      match = [l for l in range(9) if np.array_equal(patch, padded[:, l:l + 32])]
      assert match, "patch is not a crop of the mirror-padded image"
      lefts.add(match[0])
  assert len(lefts) > 1


def test_eval_dataset_gives_full_images_in_name_order(id_set):
  root, _, test = id_set
  cfg = _config(root / "tfds")
  ev = input_pipeline.eval_dataset(cfg)
  assert len(ev) == 3 and [e["name"] for e in ev] == ["1", "2", "10"]
  for e in ev:
    x = test[e["name"]]
    assert e["input"].shape == x.shape and e["input"].dtype == np.float32
    assert np.array_equal(e["input"], x.astype(np.float32) / 255)
    assert np.array_equal(e["target"], (255 - x).astype(np.float32) / 255)
  cfg.max_eval_images = 2
  assert [e["name"] for e in input_pipeline.eval_dataset(cfg)] == ["1", "2"]
  assert len(input_pipeline.eval_dataset(cfg, max_images=1)) == 1
  train = input_pipeline.eval_dataset(cfg, split="train", max_images=0)
  assert len(train) == N_TRAIN and train[-1]["input"].shape[:2] == SIZES[(N_TRAIN - 1) % len(SIZES)]


def test_prepare_builds_into_the_workdir_once(tmp_path):
  rng = np.random.default_rng(5)
  _write_set(tmp_path / "raw", {"train": {"1": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)},
                                "test": {"1": rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)}})
  cfg = _config("", manual_dir=str(tmp_path / "raw"))
  with pytest.raises(datasets.DatasetError, match="not prepared.*input_pipeline.prepare"):
    input_pipeline.train_dataset(_config(tmp_path / "elsewhere"), global_batch_size=2, seed=0)
  resolved = input_pipeline.resolve_data_config(cfg, str(tmp_path / "work"))
  assert resolved.data_dir == str(tmp_path / "work" / "tfds")
  assert cfg.data_dir == ""  # resolved once into a copy; nothing is written back into the caller's config
  builder = input_pipeline.prepare(resolved)
  assert builder.is_prepared() and (tmp_path / "work" / "tfds" / "rain200h" / "1.0.0").is_dir()
  t = time.perf_counter()
  again = input_pipeline.prepare(resolved)
  assert time.perf_counter() - t < 2.0 and again.data_dir == builder.data_dir
  batch = next(iter(input_pipeline.train_dataset(resolved, global_batch_size=2, seed=0)))
  assert batch["input"].shape == (2, 32, 32, 3)


def test_argument_errors(id_set):
  root, _, _ = id_set
  cfg = _config(root / "tfds")
  with pytest.raises(ValueError, match="multiple of process_count"):
    input_pipeline.train_dataset(cfg, global_batch_size=3, seed=0, process_count=2)
  with pytest.raises(datasets.DatasetError, match="none left for process 11"):
    input_pipeline.train_dataset(cfg, global_batch_size=12, seed=0, process_index=11, process_count=12)


def test_demo_dataset_end_to_end(tmp_path):
  cfg = ml_collections.ConfigDict(input_pipeline.default_data_config().to_dict())
  cfg.patch_size = 64
  cfg = input_pipeline.resolve_data_config(cfg, str(tmp_path))
  input_pipeline.prepare(cfg)
  batch = next(iter(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=0)))
  assert batch["input"].shape == (4, 64, 64, 3)
  assert np.mean(batch["input"]) > np.mean(batch["target"])  # rain brightens
  ev = input_pipeline.eval_dataset(cfg, max_images=2)
  assert [e["input"].shape for e in ev] == [(128, 128, 3)] * 2


_WORKERS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from sparse_restore import input_pipeline

    def equal(a, b):
      return len(a) == len(b) and all(np.array_equal(x['input'], y['input']) and
                                      np.array_equal(x['target'], y['target']) for x, y in zip(a, b))

    if __name__ == '__main__':
      cfg = input_pipeline.default_data_config()
      cfg.name, cfg.data_dir, cfg.patch_size = 'rain200h', sys.argv[1], 32
      ref_it = iter(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=9))
      ref = [next(ref_it) for _ in range(6)]
      cfg.num_workers = 2
      it = iter(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=9))
      two = [next(it) for _ in range(3)]
      state = it.get_state()
      two += [next(it) for _ in range(3)]
      it.close()
      it = iter(input_pipeline.train_dataset(cfg, global_batch_size=4, seed=9))
      it.set_state(json.loads(json.dumps(state)))
      resumed = [next(it) for _ in range(3)]
      it.close()
      print(json.dumps({'same': equal(ref, two), 'resumed': equal(ref[3:], resumed),
                        'shape': list(two[0]['input'].shape)}))
""")


def test_worker_processes_give_the_same_stream_and_resume(id_set, tmp_path):
  """num_workers=0 and 2 yield identical batches; a worker iterator's state restores the exact stream."""
  root, _, _ = id_set
  script = tmp_path / "workers.py"
  script.write_text(_WORKERS_SCRIPT)
  out = subprocess.run([sys.executable, str(script), str(root / "tfds")], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result == {"same": True, "resumed": True, "shape": [4, 32, 32, 3]}
