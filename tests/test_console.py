"""The command-line tools' console (sparse_restore/console.py): quiet filtering, plain progress lines, the
wording of rounded values. The whole-CLI checks (a training job's console by default and with --verbosity) are
in tests/test_main.py; infer's tiling line in tests/test_infer.py."""
import io
import logging
import sys

import pytest

from sparse_restore import console


def _record(level, message, name="orbax"):
  return logging.LogRecord(name, level, "/somewhere/lib.py", 1, message, None, None)


def test_quiet_filter_drops_info_and_harmless_warnings_only():
  f = console.QuietFilter()
  assert not f.filter(_record(logging.INFO, "[process=0] Saving checkpoint at step 2"))
  assert not f.filter(_record(logging.DEBUG, "anything"))
  assert not f.filter(_record(logging.INFO, "Unable to initialize backend 'tpu': INTERNAL: libtpu.so", "jax"))
  assert not f.filter(_record(logging.WARNING, "Variant folder /x/synthetic_rain/1.0.0 has no dataset_info.json"))
  assert not f.filter(_record(logging.WARNING, "OpenCV is not installed. We recommend using OpenCV ..."))
  assert f.filter(_record(logging.WARNING, "An NVIDIA GPU may be present on this machine, but ...", "jax"))
  assert f.filter(_record(logging.ERROR, "checkpoint write failed"))


def test_progress_prints_plain_lines_when_not_a_terminal():
  out = io.StringIO()
  p = console.Progress(4, desc="restoring", unit="images", interval=0.0, file=out, tty=False)
  for name in ("a.png", "b.png", "c.png", "d.png"):
    p.set_postfix(name)
    p.update()
  p.write("skipped: e.png: not an image")
  p.close()
  lines = out.getvalue().splitlines()
  # One line per finished item (interval 0) except the last, which the caller's closing line reports.
  assert [line.split(",")[0] for line in lines[:3]] == ["restoring: 1/4 images (25%)", "restoring: 2/4 images (50%)",
                                                         "restoring: 3/4 images (75%)"]
  assert "ETA" in lines[0] and "images/s" in lines[0] and lines[0].endswith("last a.png")
  assert lines[3] == "skipped: e.png: not an image"
  assert "\r" not in out.getvalue()


def test_progress_waits_for_the_interval_and_can_be_off():
  out = io.StringIO()
  p = console.Progress(100, desc="scoring", interval=3600, file=out, tty=False)
  for _ in range(99):
    p.update()
  p.close()
  assert out.getvalue() == ""  # everything went by within the interval
  p = console.Progress(3, desc="scoring", interval=0, enabled=False, file=out, tty=False)
  p.update()
  p.update()
  assert out.getvalue() == ""


def test_rounded_values_say_what_was_asked_and_what_is_used():
  assert console.tiling(256, 128, 128) == "256 overlap 128"
  assert console.tiling(250, 32, 128) == ("256 (asked 250: rounded up to the network's multiple 128) overlap 128 "
                                          "(asked 32: rounded up to the network's multiple 128)")
  assert console.tiling(100, 5, 8) == ("104 (asked 100: rounded up to the network's multiple 8) overlap 8 "
                                       "(asked 5: rounded up to the network's multiple 8)")


@pytest.mark.parametrize("seconds, text", [(3.25, "3.2 s"), (42, "42 s"), (185, "3 min 05 s"), (3720, "1 h 02 min")])
def test_durations(seconds, text):
  assert console.duration(seconds) == text


def test_clock():
  assert console.clock(65) == "1:05" and console.clock(3725) == "1:02:05"


def test_bench_states_the_size_ast_pads_to():
  """bench --model ast --size 100 times a 128x128 forward pass (AST pads inside): it says so on stderr."""
  from sparse_restore import bench
  assert bench.padding_note("ast", 100, None) == (
      "ast pads 100x100 inputs to 128x128 inside the network (multiple 128): the times are those of 128x128; "
      "us_per_pixel counts the 100x100 output pixels")
  assert bench.padding_note("ast", 256, 384) is None
  assert bench.padding_note("drsformer", 100, None) is None  # no internal padding (a non-multiple is an error)


def test_quiet_mode_drops_orbax_orphaned_read_coroutines_only(capsys):
  """After a damaged checkpoint is reported in one line, Orbax's un-awaited read coroutines must not print their
  TensorStore specs when collected (seen after infer's error line); other unraisable exceptions still show."""
  import types

  @types.coroutine
  def suspend():
    yield

  async def _read_array_index_and_device_put():  # the name of Orbax's coroutine
    try:
      await suspend()
    finally:
      raise RuntimeError("boom orbax")

  async def something_else():
    try:
      await suspend()
    finally:
      raise RuntimeError("boom other")

  sys.unraisablehook = sys.__unraisablehook__  # Python's own printer (pytest's collector is restored afterwards)
  console.setup()
  for make in (_read_array_index_and_device_put, something_else):
    make().send(None)  # suspended, then collected: closing it raises into sys.unraisablehook
  err = capsys.readouterr().err
  assert "_read_array_index_and_device_put" not in err and "boom orbax" not in err
  assert "something_else" in err and "boom other" in err
