"""Tests of the torch-free, code-free checkpoint reader (sparse_restore.convert.reader)."""
import collections
import io
import os
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from sparse_restore.convert import reader
from sparse_restore.convert.rules import ConversionError

# Without PyTorch, the reader's parity proof is indirect: converting the fixtures' .pth files reproduces the
# stored outputs of the authors' networks (test_convert.py, test_drsformer.py, test_ast.py).
TORCH_REASON = "PyTorch not installed (optional, see README Installation): no torch.load/torch.save to compare with"
FIXTURES = ("drsformer_tiny_mefc", "drsformer_tiny_nomefc", "drsformer_tiny_biasfree", "ast_tiny")


@pytest.fixture(name="torch")
def torch_module():
  """torch, only to write reference files and compare with torch.load (the reader itself never needs it)."""
  return pytest.importorskip("torch", reason=TORCH_REASON)


def _assert_same(ours, theirs, where="root"):
  """Structure, dtypes and values of our reader's output equal torch.load's (tensors compared bit for bit)."""
  import torch  # pylint: disable=g-import-not-at-top  (only tests that have torch call this)
  if isinstance(theirs, torch.Tensor):
    assert isinstance(ours, np.ndarray), f"{where}: {type(ours)} is not an array"
    assert tuple(ours.shape) == tuple(theirs.shape), where
    if theirs.dtype == torch.bfloat16:
      assert ours.dtype == np.dtype(ml_dtypes.bfloat16), where
      np.testing.assert_array_equal(ours.astype(np.float32), theirs.float().numpy(), err_msg=where)
    else:
      expect = theirs.detach().numpy()
      assert ours.dtype == expect.dtype, f"{where}: {ours.dtype} vs {expect.dtype}"
      np.testing.assert_array_equal(ours, expect, err_msg=where)
    assert ours.flags.c_contiguous and ours.flags.writeable, where
  elif isinstance(theirs, dict):
    assert isinstance(ours, dict), where
    assert list(ours.keys()) == list(theirs.keys()), where
    for k in theirs:
      _assert_same(ours[k], theirs[k], f"{where}[{k!r}]")
  elif isinstance(theirs, (list, tuple)):
    assert type(ours) is type(theirs) and len(ours) == len(theirs), where
    for i, (a, b) in enumerate(zip(ours, theirs)):
      _assert_same(a, b, f"{where}[{i}]")
  else:
    assert ours == theirs and type(ours) is type(theirs), f"{where}: {ours!r} vs {theirs!r}"


@pytest.mark.parametrize("case", FIXTURES)
def test_fixture_matches_torch_load(fixtures_dir, case, torch):
  path = fixtures_dir / f"{case}.pth"
  ours = reader.read_checkpoint(path)
  theirs = torch.load(path, weights_only=True, map_location="cpu")
  _assert_same(ours, theirs)
  n_tensors = sum(isinstance(v, np.ndarray) for v in (ours.get("params") or ours.get("state_dict")).values())
  assert n_tensors > 100


def _awkward_checkpoint(torch):
  """Views, strides, offsets, shared storage, many dtypes, parameters and an Adam optimizer state."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 10, generator=g)
  lin = torch.nn.Linear(5, 3)
  opt = torch.optim.Adam(lin.parameters(), lr=1e-3, betas=(0.9, 0.99))
  lin(torch.randn(2, 5, generator=g)).sum().backward()
  opt.step()
  return {
      "transposed": base.t(),                          # stride (1, 10)
      "sliced": base[1:, ::3],                         # offset 10, stride (10, 3)
      "expanded": torch.arange(4.0).expand(3, 4),      # stride (0, 1)
      "permuted4d": torch.randn(2, 3, 4, 5, generator=g).permute(2, 0, 3, 1),
      "same_storage": base[2],                         # shares base's storage with the views above
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 4),
      "half": torch.randn(3, 7, generator=g).half(),
      "bf16": torch.randn(5, 3, generator=g).to(torch.bfloat16).t(),
      "float64": torch.randn(4, generator=g).double(),
      "int64": torch.arange(-5, 7).reshape(3, 4)[:, 1:],
      "int32": torch.arange(6, dtype=torch.int32),
      "uint8": torch.arange(250, 256, dtype=torch.uint8),
      "bool": torch.tensor([True, False, True]),
      "parameter": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
      "state": lin.state_dict(),
      "optimizer": opt.state_dict(),
      "misc": [1, 2.5, "text", None, (True, b"raw-bytes"), {"nested": {3, 4}}],
      "epoch": 7,
  }


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_noncontiguous_and_dtypes_match_torch(tmp_path, zipped, torch):
  path = tmp_path / "awkward.pth"
  torch.save(_awkward_checkpoint(torch), path, _use_new_zipfile_serialization=zipped)
  assert reader.detect_format(path) == ("zip" if zipped else "legacy")
  ours = reader.read_checkpoint(path)
  theirs = torch.load(path, weights_only=True)
  _assert_same(ours, theirs)
  # Views of one storage stay consistent with each other.
  np.testing.assert_array_equal(ours["sliced"], ours["transposed"].T[1:, ::3])
  np.testing.assert_array_equal(ours["same_storage"], ours["transposed"][:, 2])
  assert ours["expanded"].strides != (0, 8)  # an independent copy, not a stride-0 view
  assert ours["bf16"].dtype == np.dtype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(reader.to_float32(ours["bf16"]), theirs["bf16"].float().numpy())


class _Evil:
  """Unpickling this runs ``touch <marker>`` (what a booby-trapped checkpoint would do)."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, zipped, torch):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"params": {"w": torch.ones(2, 2)}, "payload": _Evil(marker)}, path,
             _use_new_zipfile_serialization=zipped)
  with pytest.raises(ConversionError) as e:
    reader.read_checkpoint(path)
  msg = str(e.value)
  assert str(path) in msg
  assert f"disallowed global '{os.system.__module__}.system'" in msg
  assert "was executed" in msg and "Nothing" in msg
  assert not marker.exists()
  # Control: the file really is armed (an unrestricted load runs the payload).
  torch.load(path, weights_only=False)
  assert marker.exists()


def _torch_zip(path, pickled: bytes, storages):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickled)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for key, data in storages.items():
      z.writestr(f"archive/data/{key}", data)


class _StoragePickler(pickle.Pickler):
  """Writes torch's persistent storage ids for our placeholder objects."""

  def persistent_id(self, obj):
    import torch  # pylint: disable=g-import-not-at-top
    if isinstance(obj, tuple) and obj and obj[0] == "STORAGE":
      return ("storage", torch.FloatStorage, obj[1], "cpu", obj[2])
    return None


class _Tensor:
  def __init__(self, size, stride, offset=0, numel=4):
    self.args = (("STORAGE", "0", numel), offset, size, stride, False, collections.OrderedDict())

  def __reduce__(self):
    import torch  # pylint: disable=g-import-not-at-top
    return (torch._utils._rebuild_tensor_v2, self.args)


def test_malicious_handmade_archive_is_refused_without_torch(tmp_path):
  """The refusal of a booby-trapped pickle, on an archive written without PyTorch (torch's zip layout)."""
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  _torch_zip(path, pickle.dumps({"payload": _Evil(marker)}, protocol=2), {})
  with pytest.raises(ConversionError, match=f"disallowed global '{os.system.__module__}.system'"):
    reader.read_checkpoint(path)
  assert not marker.exists()
  pickle.loads(pickle.dumps(_Evil(marker)))  # control: the payload is armed
  assert marker.exists()


@pytest.mark.parametrize("size,stride,offset", [((10,), (1,), 0), ((2, 2), (2, 1), 1), ((3,), (2,), 0)])
def test_out_of_bounds_tensor_is_refused(tmp_path, size, stride, offset, torch):
  buf = io.BytesIO()
  _StoragePickler(buf, protocol=2).dump({"w": _Tensor(size, stride, offset)})
  path = tmp_path / "oob.pth"
  _torch_zip(path, buf.getvalue(), {"0": np.arange(4, dtype=np.float32).tobytes()})
  with pytest.raises(ConversionError, match="reads past the end"):
    reader.read_checkpoint(path)


def test_handmade_zip_in_bounds_reads(tmp_path, torch):
  buf = io.BytesIO()
  _StoragePickler(buf, protocol=2).dump({"w": _Tensor((2, 2), (1, 2), 0)})
  path = tmp_path / "ok.pth"
  _torch_zip(path, buf.getvalue(), {"0": np.arange(4, dtype=np.float32).tobytes()})
  np.testing.assert_array_equal(reader.read_checkpoint(path)["w"], [[0, 2], [1, 3]])
  np.testing.assert_array_equal(torch.load(path, weights_only=True)["w"].numpy(), [[0, 2], [1, 3]])


def test_missing_storage_is_reported(tmp_path, torch):
  buf = io.BytesIO()
  _StoragePickler(buf, protocol=2).dump({"w": _Tensor((4,), (1,))})
  path = tmp_path / "nostorage.pth"
  _torch_zip(path, buf.getvalue(), {})
  with pytest.raises(ConversionError, match="archive/data/0 is missing"):
    reader.read_checkpoint(path)


@pytest.mark.parametrize("how", ["truncated", "random", "empty", "zip_without_pickle", "truncated_legacy"])
def test_corrupt_files_name_the_file(tmp_path, fixtures_dir, how):
  path = tmp_path / f"{how}.pth"
  good = (fixtures_dir / "drsformer_tiny_nomefc.pth").read_bytes()
  if how == "truncated":
    path.write_bytes(good[: len(good) // 2])
  elif how == "random":
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  elif how == "empty":
    path.write_bytes(b"")
  elif how == "zip_without_pickle":
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("readme.txt", "hello")
  else:
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    legacy = tmp_path / "legacy_full.pth"
    torch.save({"w": torch.randn(100, 10)}, legacy, _use_new_zipfile_serialization=False)
    path.write_bytes(legacy.read_bytes()[:-200])
  with pytest.raises(ConversionError) as e:
    reader.read_checkpoint(path)
  msg = str(e.value)
  assert msg.startswith(str(path) + ":"), msg
  expect = {"random": "not a PyTorch checkpoint", "empty": "empty file", "zip_without_pickle": "not a PyTorch"}
  assert expect.get(how, "corrupt or truncated") in msg, msg


def test_missing_file(tmp_path):
  with pytest.raises(ConversionError, match="no such file"):
    reader.read_checkpoint(tmp_path / "nope.pth")


def test_safetensors_roundtrip(tmp_path):
  import safetensors.numpy
  rng = np.random.default_rng(1)
  tensors = {"a.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "b.half": rng.standard_normal((5,)).astype(np.float16),
             "c.index": np.arange(12, dtype=np.int64).reshape(3, 4)}
  path = tmp_path / "w.safetensors"
  safetensors.numpy.save_file(tensors, str(path))
  assert reader.detect_format(path) == "safetensors"
  got = reader.read_checkpoint(path)
  assert sorted(got) == sorted(tensors)
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype
    np.testing.assert_array_equal(got[k], v)


def test_safetensors_bfloat16_and_truncation(tmp_path, torch):
  import safetensors.torch
  t = {"x": torch.randn(3, 5).to(torch.bfloat16), "y": torch.randn(2)}
  path = tmp_path / "bf.safetensors"
  safetensors.torch.save_file(t, str(path))
  got = reader.read_checkpoint(path)
  assert got["x"].dtype == np.dtype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(got["x"].astype(np.float32), t["x"].float().numpy())
  np.testing.assert_array_equal(got["y"], t["y"].numpy())
  bad = tmp_path / "cut.safetensors"
  bad.write_bytes(path.read_bytes()[:-4])
  with pytest.raises(ConversionError, match=str(bad)):
    reader.read_checkpoint(bad)


def test_reader_works_without_torch(fixtures_dir):
  """Reading and converting never import torch (a blocked import proves it)."""
  code = ("import sys; sys.modules['torch'] = None\n"
          "from sparse_restore.convert import reader, load_state_dict\n"
          f"d = reader.read_checkpoint({str(fixtures_dir / 'drsformer_tiny_nomefc.pth')!r})\n"
          f"s = load_state_dict({str(fixtures_dir / 'ast_tiny.pth')!r})\n"
          "print(len(d['params']), len(s), 'torch' in sys.modules and sys.modules['torch'] is not None)\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ["190", "234", "False"]
