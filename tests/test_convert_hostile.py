"""Hostile and broken inputs for the converter, each built here byte by byte (pickle opcodes, zip members,
safetensors headers). Every one must end in one clear error line naming the file (exit status 1 from the CLI, no
traceback), with memory bounded by the file's real tensor data; unusable --output paths fail before any work, and
work folders left by killed conversions are cleaned up by the next one."""
import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from sparse_restore.convert import __main__ as cli
from sparse_restore.convert import reader
from sparse_restore.convert.rules import ConversionError
from rss_probe import RSS_KIB_SOURCE

# --------------------------------------------------------------------------------------------------------------
# A small pickle assembler (protocol 2 opcodes, what torch.save writes).
# --------------------------------------------------------------------------------------------------------------


def _global(module, name):
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"        # GLOBAL


def _str(text):
  data = text.encode()
  return b"X" + struct.pack("<I", len(data)) + data                   # BINUNICODE


def _int(n):
  if -(1 << 31) <= n < (1 << 31):
    return b"J" + struct.pack("<i", n)                                  # BININT
  data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
  return b"\x8a" + bytes([len(data)]) + data                           # LONG1 (beyond int32, beyond int64)


def _tuple(*items):
  return b"(" + b"".join(items) + b"t"                                 # MARK ... TUPLE


def _call(func, *args):
  return func + _tuple(*args) + b"R"                                   # REDUCE


def _dict(items):
  return b"}(" + b"".join(_str(k) + v for k, v in items.items()) + b"u"  # EMPTY_DICT MARK ... SETITEMS


def _storage(key="0", numel=4, kind="FloatStorage"):
  return _tuple(_str("storage"), _global("torch", kind), _str(key), _str("cpu"), _int(numel)) + b"Q"  # BINPERSID


def _tensor(storage, size, stride, offset=0):
  return _call(_global("torch._utils", "_rebuild_tensor_v2"), storage, _int(offset),
               _tuple(*map(_int, size)), _tuple(*map(_int, stride)), b"\x89",  # NEWFALSE: requires_grad
               _call(_global("collections", "OrderedDict")))


def _pickle(body):
  return b"\x80\x02" + body + b"."                                     # PROTO 2 ... STOP


def _torch_zip(path, pkl, storages=None, compression=zipfile.ZIP_STORED):
  with zipfile.ZipFile(path, "w", compression=compression) as z:
    z.writestr("archive/data.pkl", pkl)
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for key, data in (storages or {}).items():
      z.writestr(f"archive/data/{key}", data)
  return path


def _legacy(path, body, storages=None, key_list=None):
  """A pre-1.6 ``torch.save`` file: magic number, protocol, system info, the object, its storage keys, then each
  storage as an int64 element count and its bytes. Legacy storage ids have a sixth field (a view, None here)."""
  import pickle  # pylint: disable=g-import-not-at-top  (only to write the plain header values)
  storages = {"0": _F32x6} if storages is None else storages
  head = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
  keys = pickle.dumps(list(storages) if key_list is None else key_list, protocol=2)
  data = b"".join(struct.pack("<q", len(v) // 4) + v for v in storages.values())
  path.write_bytes(head + _pickle(body) + keys + data)
  return path


def _legacy_storage(key="0", numel=6):
  return _tuple(_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _int(numel),
                b"N") + b"Q"


def _safetensors(path, header, data=b""):
  raw = header if isinstance(header, bytes) else json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
  return path


def _raw(path, data):
  path.write_bytes(data)
  return path


_F32x6 = np.arange(6, dtype=np.float32).tobytes()


def test_assembler_writes_what_torch_reads(tmp_path):
  """The hand-written records are real checkpoints: our reader and torch.load agree on them."""
  pkl = _pickle(_dict({"w": _tensor(_storage("0", 6), (2, 3), (1, 2)), "n": _int(1 << 40)}))
  path = _torch_zip(tmp_path / "ok.pth", pkl, {"0": _F32x6})
  ours = reader.read_checkpoint(path)
  np.testing.assert_array_equal(ours["w"], [[0, 2, 4], [1, 3, 5]])
  assert ours["n"] == 1 << 40
  legacy = _legacy(tmp_path / "legacy.pth", _dict({"w": _tensor(_legacy_storage(), (3, 2), (2, 1))}))
  np.testing.assert_array_equal(reader.read_checkpoint(legacy)["w"], [[0, 1], [2, 3], [4, 5]])
  torch = pytest.importorskip("torch")
  theirs = torch.load(path, weights_only=True)
  np.testing.assert_array_equal(theirs["w"].numpy(), ours["w"])
  np.testing.assert_array_equal(torch.load(legacy, weights_only=True)["w"].numpy(), [[0, 1], [2, 3], [4, 5]])


# --------------------------------------------------------------------------------------------------------------
# 1. Malformed files: one clear error naming the file.
# --------------------------------------------------------------------------------------------------------------

def _zip_case(body, storages=None):
  return lambda p: _torch_zip(p, _pickle(body), {"0": _F32x6} if storages is None else storages)


def _deep_lists(depth):
  return b"]" * depth + b"a" * (depth - 1)  # EMPTY_LIST x depth, then APPEND each into the one below


def _corrupt_deflate(path):
  noise = np.random.default_rng(0).standard_normal(300).astype(np.float32).tobytes()  # does not compress
  _torch_zip(path, _pickle(_dict({"w": _tensor(_storage("0", 300), (300,), (1,))})), {"0": noise},
             compression=zipfile.ZIP_DEFLATED)
  data = bytearray(path.read_bytes())
  start = data.index(b"archive/data/0") + len("archive/data/0") + 20  # inside the deflated storage
  data[start:start + 40] = b"\xff" * 40
  path.write_bytes(bytes(data))
  return path


MALFORMED = {
    # Seen by the probe: LookupError, OverflowError, RecursionError.
    "codec_lookup": (_zip_case(_dict({"b": _call(_global("_codecs", "encode"), _str("x"), _str("no-such-codec"))})),
                     "_codecs.encode('x', 'no-such-codec') failed (LookupError"),
    "storage_numel_beyond_int64": (_zip_case(_dict({"w": _tensor(_storage("0", 1 << 64), (1,), (1,))})),
                                   "storage size 18446744073709551616 is not an integer in [0, 2**63)"),
    "storage_bytes_beyond_int64": (_zip_case(_dict({"w": _tensor(_storage("0", 1 << 62), (1,), (1,))})),
                                   "exceeds int64 bytes"),
    "size_beyond_int64": (_zip_case(_dict({"w": _tensor(_storage(), (1 << 64,), (1,))})),
                          "size 18446744073709551616 is not an integer"),
    "stride_beyond_int64": (_zip_case(_dict({"w": _tensor(_storage(), (1, 4), (1 << 70, 1))})),
                            "stride 1180591620717411303424 is not an integer"),
    "offset_beyond_int64": (_zip_case(_dict({"w": _tensor(_storage(), (1,), (1,), offset=1 << 64)})),
                            "storage offset 18446744073709551616"),
    "empty_tensor_overflowing_dims": (_zip_case(_dict({"w": _tensor(_storage(), (0, 1 << 40, 1 << 40), (1, 1, 1))})),
                                      "exceeds int64"),
    "negative_size": (_zip_case(_dict({"w": _tensor(_storage(), (-1,), (1,))})), "size -1 is not an integer"),
    "too_many_dims": (_zip_case(_dict({"w": _tensor(_storage(), (1,) * 70, (1,) * 70)})), "at most 64 dimensions"),
    "deep_pickle_nesting": (_zip_case(_dict({"x": _deep_lists(100_000)})), "nested more than 100 levels"),
    "huge_memo_index": (_zip_case(_dict({"x": _str("a") + b"r\xff\xff\xff\xff"})),  # LONG_BINPUT 2**32-1
                        "more than 128.0 MiB of Python objects"),
    "bytearray_from_int": (_zip_case(_dict({"b": _call(_global("__builtin__", "bytearray"), _int(1500 << 20))})),
                           "bytearray(1572864000,) would create more than 128.0 MiB"),
    "bytearray_from_small_int": (_zip_case(_dict({"b": _call(_global("builtins", "bytearray"), _int(10))})),
                                 "bytearray of int (only bytes or text are allowed)"),
    "codec_on_bytes": (_zip_case(_dict({"b": _call(_global("_codecs", "encode"), b"C\x01x", _str("latin1"))})),
                       "_codecs.encode with bytes"),
    "tensor_as_dict_key": (_zip_case(b"}" + _tensor(_storage("0", 6), (6,), (1,)) + _str("v") + b"s"),
                           "used as a dict key"),
    "storage_declared_twice": (_zip_case(_dict({"a": _tensor(_storage("0", 6), (6,), (1,)),
                                                "b": _tensor(_storage("0", 5), (5,), (1,))})), "declared twice"),
    "short_storage": (_zip_case(_dict({"w": _tensor(_storage("0", 100), (100,), (1,))})),
                      "archive/data/0 holds 24 bytes, the pickle expects 400"),
    "corrupt_deflate": (_corrupt_deflate, "corrupt or truncated PyTorch checkpoint"),
    "legacy_bytearray_from_int": (lambda p: _legacy(p, _dict({"b": _call(_global("builtins", "bytearray"),
                                                                          _int(1500 << 20))})),
                                  "bytearray(1572864000,) would create more than 128.0 MiB"),
    "legacy_string_longer_than_file": (lambda p: _legacy(p, b"\x8d" + struct.pack("<Q", 1 << 40) + b"abc"),
                                       "corrupt or truncated legacy PyTorch checkpoint"),  # BINUNICODE8
    "legacy_storage_past_end": (lambda p: _legacy(p, _dict({"w": _tensor(_legacy_storage("0", 1 << 40), (1,), (1,))}),
                                                  {"0": _F32x6}), "storage 0 has 6 elements, the pickle expects"),
    "legacy_deep_nesting": (lambda p: _legacy(p, _dict({"x": _deep_lists(100_000)}), {}),
                            "nested more than 100 levels"),
    "safetensors_deep_json": (lambda p: _safetensors(p, b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
                              "nests deeper than 8 levels"),
    "safetensors_header_past_end": (lambda p: _raw(p, struct.pack("<Q", 99 << 20) + b"{" + b" " * 100),
                                    "a header of 103,809,024 bytes does not fit"),
    "safetensors_offsets_past_end": (lambda p: _safetensors(p, {"w": {"dtype": "F32", "shape": [1 << 28],
                                                                      "data_offsets": [0, 1 << 30]}}, b"\0" * 16),
                                     "do not fit shape (268435456,) x float32 in 16 bytes"),
    "safetensors_shape_beyond_int64": (lambda p: _safetensors(p, {"w": {"dtype": "F32", "shape": [1 << 64],
                                                                        "data_offsets": [0, 4]}}, b"\0" * 4),
                                       "is not an integer in [0, 2**63)"),
    "safetensors_overlap": (lambda p: _safetensors(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                                       "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                                                   b"\0" * 8), "overlap or leave a gap"),
    "safetensors_entry_not_object": (lambda p: _safetensors(p, {"w": 5}), "tensor 'w': unsupported entry 5"),
    "safetensors_bad_dtype": (lambda p: _safetensors(p, {"w": {"dtype": "F128", "shape": [1],
                                                               "data_offsets": [0, 16]}}, b"\0" * 16),
                              "unsupported entry"),
}


def _assert_one_error_line(text, path):
  lines = [line for line in text.splitlines() if line.strip()]
  assert len(lines) == 1, text
  assert lines[0].startswith(f"error: {path}: "), text
  assert "Traceback" not in text


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_one_clear_error(tmp_path, case, capsys):
  build, expect = MALFORMED[case]
  path = build(tmp_path / ("w.safetensors" if case.startswith("safetensors") else "w.pth"))
  with pytest.raises(ConversionError) as e:
    reader.read_checkpoint(path)
  msg = str(e.value)
  assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
  assert expect in msg, msg
  assert len(msg) < 700, msg
  # The CLI reports the same problem as one line, exit status 1, and writes nothing.
  out = tmp_path / "out"
  assert cli.main(["--input", str(path), "--output", str(out)]) == 1
  _assert_one_error_line(capsys.readouterr().err, path)
  assert not out.exists()


def test_cli_last_resort_turns_unexpected_errors_into_one_line(tmp_path, capsys, monkeypatch):
  """Whatever a future reader bug raises is still `error: <file>: ...`, exit 1 (KeyboardInterrupt is not caught)."""
  from sparse_restore.convert import engine
  path = tmp_path / "w.pth"
  path.write_bytes(b"anything")

  def broken(*args, **kwargs):
    raise KeyError("a bug")

  monkeypatch.setattr(engine.reader, "read_checkpoint", broken)
  assert cli.main(["--input", str(path), "--output", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  _assert_one_error_line(err, path)
  assert "KeyError" in err and "a bug" in err

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(engine.reader, "read_checkpoint", interrupted)
  with pytest.raises(KeyboardInterrupt):
    cli.main(["--input", str(path), "--output", str(tmp_path / "out")])


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "sparse_restore.convert", *map(str, args)], capture_output=True,
                        text=True, env=env, timeout=600)


@pytest.mark.parametrize("case", ["codec_lookup", "storage_numel_beyond_int64", "safetensors_deep_json"])
def test_cli_end_to_end_seen_cases(tmp_path, case):
  """The three exception types the probe saw as tracebacks, through the real command line."""
  build, expect = MALFORMED[case]
  path = build(tmp_path / ("w.safetensors" if case.startswith("safetensors") else "w.pth"))
  r = _cli("--input", path, "--output", tmp_path / "out")
  assert r.returncode == 1, r.stderr
  _assert_one_error_line(r.stderr, path)
  assert expect in r.stderr


# --------------------------------------------------------------------------------------------------------------
# 2. Memory bounded by the file's real tensor data (peak RSS of a subprocess running the CLI).
# --------------------------------------------------------------------------------------------------------------

BOMB_BYTES = 1536 << 20   # the probe's zip member inflated to 1.5 GiB
MEMORY_BOUND_MB = 200     # extra peak RSS allowed for converting any of these files


@pytest.fixture(scope="module", name="bomb_zip")
def bomb_zip_fixture(tmp_path_factory):
  """A 1.5 MB archive whose storage member ``x/data/000`` inflates to 1.5 GiB of zeros (written in chunks, never
  held in memory). Each case appends its own ``x/data.pkl`` to a copy (no recompression)."""
  path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    z.writestr("x/byteorder", "little")
    with z.open("x/data/000", "w", force_zip64=True) as f:
      chunk = bytes(16 << 20)
      for _ in range(BOMB_BYTES // len(chunk)):
        f.write(chunk)
  return path


def _with_pickle(bomb, path, pkl):
  path.write_bytes(bomb.read_bytes())
  with zipfile.ZipFile(path, "a") as z:
    z.writestr("x/data.pkl", pkl)
  return path


_PEAK_SCRIPT = RSS_KIB_SOURCE + textwrap.dedent("""
    import json, sys

    from sparse_restore import checkpoint                    # what the CLI imports (jax, flax) is the baseline
    from sparse_restore.convert import __main__ as cli, engine
    baseline, _ = rss_kib()
    rc = cli.main(sys.argv[1:])
    _, peak = rss_kib()
    print(json.dumps({"rc": rc, "baseline_kib": baseline, "peak_kib": peak}))
""")


def _peak(*args):
  """(exit status, stderr, peak RSS in MB above the RSS after the CLI's imports) of one conversion in a fresh
  process."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *map(str, args)], capture_output=True, text=True,
                     env=env, timeout=600)
  assert r.returncode == 0, r.stderr
  result = json.loads(r.stdout.strip().splitlines()[-1])
  return result["rc"], r.stderr, (result["peak_kib"] - result["baseline_kib"]) / 1024


def _memory_case(case, tmp_path, bomb):
  """The probe's three memory cases (and the zip bomb's variants); returns (path, expected error text)."""
  path = tmp_path / f"{case}.pth"
  if case == "big_builtin":        # 290 bytes that asked for a 1.5 GB bytearray
    body = _dict({"params": _dict({"w": _tensor(_storage("0", 6), (6,), (1,))}),
                  "x": _call(_global("__builtin__", "bytearray"), _int(1500 << 20))})
    return _torch_zip(path, _pickle(body), {"0": _F32x6}), "would create more than 128.0 MiB of Python objects"
  if case == "stride0":            # one stored float viewed as a 20000 x 20000 tensor
    body = _dict({"params": _dict({"w": _tensor(_storage("0", 1), (20000, 20000), (0, 0))})})
    return _torch_zip(path, _pickle(body), {"0": b"\0" * 4}), "stride-0/overlapping views"
  if case == "opcode_flood":       # 16M empty sets (EMPTY_SET, APPEND), deflated: ~3.6 GB of Python objects
    body = _dict({"params": b"]" + b"\x8fa" * (16 << 20)})
    return _torch_zip(path, _pickle(body), {}, compression=zipfile.ZIP_DEFLATED), "of Python objects"
  if case == "bomb_declared":      # the pickle admits to the 1.5 GiB storage and a tensor using all of it
    body = _dict({"params": _dict({"w": _tensor(_storage("000", BOMB_BYTES // 4), (BOMB_BYTES // 4,), (1,))})})
    return _with_pickle(bomb, path, _pickle(body)), "compressed storages expand the stored data"
  if case == "bomb_undeclared":    # the pickle declares 6 floats: only 24 bytes may be inflated
    body = _dict({"params": _dict({"w": _tensor(_storage("000", 6), (6,), (1,))})})
    return _with_pickle(bomb, path, _pickle(body)), "cannot tell the architecture"
  if case == "bomb_pickle":        # the pickle itself inflates to 1.5 GiB: the same archive, member renamed
    return _raw(path, bomb.read_bytes().replace(b"x/data/000", b"x/data.pkl")), "more than 64.0 MiB"
  raise AssertionError(case)


@pytest.mark.parametrize("case", ["big_builtin", "stride0", "opcode_flood", "bomb_declared", "bomb_undeclared",
                                  "bomb_pickle"])
def test_small_files_cannot_allocate_gigabytes(tmp_path, case, bomb_zip):
  path, expect = _memory_case(case, tmp_path, bomb_zip)
  assert os.path.getsize(path) < (2 << 20)
  rc, err, extra_mb = _peak("--input", path, "--output", tmp_path / "out")
  assert rc == 1, err
  _assert_one_error_line(err, path)
  assert expect in err, err
  assert extra_mb < MEMORY_BOUND_MB, f"{case}: peak RSS grew by {extra_mb:.0f} MB"


def test_bounded_inflation_still_reads_the_declared_data(tmp_path, bomb_zip):
  """A member longer than its storage is inflated only as far as the pickle declares (not refused)."""
  path, _ = _memory_case("bomb_undeclared", tmp_path, bomb_zip)
  np.testing.assert_array_equal(reader.read_checkpoint(path)["params"]["w"], np.zeros(6, np.float32))


def test_limits_on_genuine_data(tmp_path):
  """max_bytes caps real tensor data; views may share storage up to the expansion allowance."""
  data = np.arange(1 << 20, dtype=np.float32)            # 4 MiB stored
  pkl = _pickle(_dict({"a": _tensor(_storage("0", data.size), (data.size,), (1,)),
                       "b": _tensor(_storage("0", data.size), (1024, 1024), (1, 1024))}))  # a transposed view
  path = _torch_zip(tmp_path / "views.pth", pkl, {"0": data.tobytes()})
  got = reader.read_checkpoint(path)
  np.testing.assert_array_equal(got["b"], data.reshape(1024, 1024).T)
  with pytest.raises(ConversionError, match=r"tensors take 8\.0 MiB, more than the limit of 6\.0 MiB.*"
                                            r"--max-tensor-bytes"):
    reader.read_checkpoint(path, max_bytes=6 << 20)
  # Expanding 4 bytes by stride 0 is allowed while small (a broadcast buffer), refused once it is not.
  small = _torch_zip(tmp_path / "small.pth", _pickle(_dict({"w": _tensor(_storage("0", 1), (100, 100), (0, 0))})),
                     {"0": np.float32(2).tobytes()})
  np.testing.assert_array_equal(reader.read_checkpoint(small)["w"], np.full((100, 100), 2, np.float32))
  big = _torch_zip(tmp_path / "big.pth", _pickle(_dict({"w": _tensor(_storage("0", 1), (8192, 4096), (0, 0))})),
                   {"0": np.float32(2).tobytes()})
  with pytest.raises(ConversionError, match=r"128\.0 MiB from a file of .* bytes .*size \(8192, 4096\), stride "
                                            r"\(0, 0\), from a storage of 4 bytes"):
    reader.read_checkpoint(big)


def test_cli_max_tensor_bytes_flag(fixtures_dir, tmp_path):
  src = fixtures_dir / "drsformer_tiny_nomefc.pth"
  r = _cli("--arch", "drsformer", "--input", src, "--output", tmp_path / "out", "--max-tensor-bytes", "1K")
  assert r.returncode == 1
  _assert_one_error_line(r.stderr, src)
  assert "more than the limit of 1,024 bytes" in r.stderr and "--max-tensor-bytes" in r.stderr
  assert not (tmp_path / "out").exists()
  assert cli._byte_size("2G") == 2 << 30 and cli._byte_size("1.5GiB") == 3 << 29 and cli._byte_size("77") == 77
  with pytest.raises(SystemExit):
    cli.main(["--input", str(src), "--output", str(tmp_path / "o"), "--max-tensor-bytes", "lots"])
  assert "--max-tensor-bytes" in cli.build_parser().format_help()


# --------------------------------------------------------------------------------------------------------------
# 3. Output folders.
# --------------------------------------------------------------------------------------------------------------

def test_output_under_a_file_fails_before_reading(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  missing_input = tmp_path / "never_read.pth"  # the output is checked first, so this is never reported
  r = _cli("--input", missing_input, "--output", blocker / "sub" / "out")
  assert r.returncode == 1
  _assert_one_error_line(r.stderr, blocker / "sub" / "out")
  assert f"cannot be created: {blocker} is not a directory" in r.stderr
  assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="running as root: a chmod 555 folder does not stop root from writing into it; "
                           "test_output_in_a_system_location covers the same probe with /proc")
def test_read_only_output_folder(tmp_path, capsys):
  parent = tmp_path / "ro"
  parent.mkdir()
  parent.chmod(0o555)
  try:
    assert cli.main(["--input", str(tmp_path / "never_read.pth"), "--output", str(parent / "out")]) == 1
  finally:
    parent.chmod(0o755)
  err = capsys.readouterr().err
  _assert_one_error_line(err, parent / "out")
  assert f"cannot be created in {parent} (Permission denied)" in err and "never_read" not in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc, where no one can create folders")
def test_output_in_a_system_location(tmp_path, capsys):
  """A location where no one, root included, can create a folder: refused before the input is read."""
  target = "/proc/sparse_restore_test/out"
  assert cli.main(["--input", str(tmp_path / "never_read.pth"), "--output", target]) == 1
  err = capsys.readouterr().err
  _assert_one_error_line(err, target)
  assert "cannot be created in /proc (" in err and "never_read" not in err


def test_save_model_errors_are_checkpoint_errors(tmp_path, monkeypatch):
  """An OS failure while creating the work folder (e.g. read-only file system) is a CheckpointError, not a trace."""
  from sparse_restore import checkpoint

  def refuse(*args, **kwargs):
    raise OSError(30, "Read-only file system")

  monkeypatch.setattr(checkpoint.tempfile, "mkdtemp", refuse)
  with pytest.raises(checkpoint.CheckpointError, match="Read-only file system"):
    checkpoint.save_model(str(tmp_path / "out"), "drsformer", {}, {})
  assert not (tmp_path / "out").exists()


def test_stale_work_folders_are_removed_by_the_next_run(fixtures_dir, tmp_path):
  import fcntl
  from sparse_restore import convert
  out = tmp_path / "export"
  out.mkdir()
  (out / "model.json").write_text("{}")            # an earlier export, replaced below
  old = 1_000_000_000                              # 2001: long before this run
  stale = {".export.tmp-k1ll3d": "params/partial", ".export.tmp-0ld.old": "model.json"}
  for name, inner in stale.items():
    (tmp_path / name / inner).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name / inner).write_text("left by a killed run")
    os.utime(tmp_path / name, (old, old))
  busy = tmp_path / ".export.tmp-running"          # a live run's folder: locked, so it must stay
  busy.mkdir()
  os.utime(busy, (old, old))
  keep = ["export.old", ".other.tmp-x", ".export.tmp-afile"]  # not ours: a user folder, another export, a file
  (tmp_path / keep[0]).mkdir()
  (tmp_path / keep[1]).mkdir()
  (tmp_path / keep[2]).write_text("a file")
  fd = os.open(busy, os.O_RDONLY)
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  try:
    convert.convert_checkpoint(fixtures_dir / "drsformer_tiny_nomefc.pth", out, "drsformer", overwrite=True,
                               log=None)
  finally:
    os.close(fd)
  names = sorted(p.name for p in tmp_path.iterdir())
  assert names == sorted([".export.tmp-running", "export", *keep]), names
  assert sorted(p.name for p in out.iterdir()) == ["model.json", "params"]
  assert json.loads((out / "model.json").read_text())["arch"] == "drsformer"
  # Once its owner is gone, the next run removes it too.
  convert.convert_checkpoint(fixtures_dir / "drsformer_tiny_nomefc.pth", out, "drsformer", overwrite=True, log=None)
  assert not busy.exists()


def test_damaged_reference_npz_is_a_clear_error(tmp_path):
  """--verify-npz files are read with the same care: a truncated archive is an error naming it."""
  from sparse_restore.convert import verify
  good = tmp_path / "ref.npz"
  np.savez(good, input=np.zeros((1, 3, 8, 8), np.float32), output=np.zeros((1, 3, 8, 8), np.float32))
  bad = tmp_path / "bad.npz"
  bad.write_bytes(good.read_bytes()[:-30])
  with pytest.raises(ConversionError, match=f"{bad}: not a reference file .*BadZipFile"):
    verify.npz_check(None, None, bad)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_export_folder_gets_the_usual_permissions(tmp_path, umask):
  """The export is renamed from a mkdtemp work folder (0700): it ends with what mkdir would give (0777 & ~umask)."""
  from sparse_restore import checkpoint
  old = os.umask(umask)
  try:
    out = checkpoint.save_model(str(tmp_path / "export"), "drsformer", {"dim": 8}, {"w": np.zeros((2,), np.float32)})
  finally:
    os.umask(old)
  assert os.stat(out).st_mode & 0o777 == 0o777 & ~umask
