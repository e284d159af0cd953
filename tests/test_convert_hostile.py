"""Hostile and broken conditions for the converter: unusable --output paths fail before any work with one clear
error line, and work folders left by killed conversions are cleaned up by the next conversion."""
import json
import os
import subprocess
import sys

import pytest

from sparse_restore.convert import __main__ as cli


def _assert_one_error_line(text, path):
  lines = [line for line in text.splitlines() if line.strip()]
  assert len(lines) == 1, text
  assert lines[0].startswith(f"error: {path}: "), text
  assert "Traceback" not in text


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "sparse_restore.convert", *map(str, args)], capture_output=True,
                        text=True, env=env, timeout=600)


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
