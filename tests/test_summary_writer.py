"""``sparse_restore.summary_writer``: TensorBoard event files written and read back without TensorFlow, the
progress and profiling hooks of the training loop."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sparse_restore import summary_writer

REPO = pathlib.Path(__file__).resolve().parents[1]
# Writes and reads back events; with "block", `import tensorflow` fails (as where it is not installed).
_WRITE_AND_READ = textwrap.dedent("""
    import io, json, sys
    if sys.argv[2] == "block":
      sys.modules["tensorflow"] = None
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util
    from sparse_restore import summary_writer

    logdir = sys.argv[1]
    rng = np.random.default_rng(0)
    strip = rng.uniform(-0.1, 1.1, (2, 5, 12, 3)).astype(np.float32)  # floats in [0, 1] after clipping
    gray = rng.integers(0, 256, (7, 4, 1), dtype=np.uint8)
    w = summary_writer.SummaryWriter(logdir)
    w.write_hparams({"lr": 2e-4, "model.name": "drsformer", "remat": False, "batch": 4})
    w.write_scalars(1, {"train/loss": 0.5, "train/lr": 1e-4})
    w.write_scalars(2, {"train/loss": 0.25, "train/lr": 2e-4})
    w.write_images(2, {"eval/strip": strip, "eval/gray": gray})
    w.write_texts(2, {"config": "batch_size: 4"})
    w.close()
    tf_imported_by_writer = sys.modules.get("tensorflow") is not None

    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    out = {"tags": sorted(acc.Tags()["tensors"]), "scalars": {}, "plugins": {}}
    for tag in out["tags"]:
      out["plugins"][tag] = acc.SummaryMetadata(tag).plugin_data.plugin_name
    for tag in ("train/loss", "train/lr"):
      out["scalars"][tag] = [[e.step, float(tensor_util.make_ndarray(e.tensor_proto))] for e in acc.Tensors(tag)]
    images = {}
    for tag in ("eval/strip", "eval/gray"):
      (event,) = acc.Tensors(tag)
      values = tensor_util.make_ndarray(event.tensor_proto)
      images[tag] = {"step": event.step, "size": [int(values[0]), int(values[1])],
                     "pixels": [np.asarray(Image.open(io.BytesIO(v))).tolist() for v in values[2:]]}
    out["images"] = images
    want = (np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8)
    out["strip_exact"] = [np.array_equal(np.array(p, np.uint8), want[i])
                          for i, p in enumerate(images["eval/strip"]["pixels"])]
    out["gray_exact"] = np.array_equal(np.array(images["eval/gray"]["pixels"][0], np.uint8), gray[..., 0])
    (text,) = acc.Tensors("config")
    out["text"] = tensor_util.make_ndarray(text.tensor_proto).item().decode()
    (hp,) = acc.Tensors("_hparams_/session_start_info")
    data = plugin_data_pb2.HParamsPluginData.FromString(
        acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content)
    hparams = data.session_start_info.hparams
    out["hparams"] = {"lr": hparams["lr"].number_value, "model.name": hparams["model.name"].string_value,
                      "remat": hparams["remat"].bool_value, "batch": hparams["batch"].number_value}
    out["tf_imported_by_writer"] = tf_imported_by_writer
    print(json.dumps(out))
""")


def _write_and_read(tmp_path, tensorflow):
  script = tmp_path / "write_and_read.py"
  script.write_text(_WRITE_AND_READ)
  logdir = tmp_path / "logs"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
  r = subprocess.run([sys.executable, str(script), str(logdir), tensorflow], capture_output=True, text=True,
                     timeout=300, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  return logdir, json.loads(r.stdout.strip().splitlines()[-1])


def test_events_written_and_read_back_without_tensorflow(tmp_path):
  """Scalars, PNG images (float and uint8, tf.summary.image's [width, height, png...] layout), a text and the
  hparams come back from the event file through TensorBoard's EventAccumulator, with TensorFlow blocked."""
  logdir, out = _write_and_read(tmp_path, "block")
  assert out["tf_imported_by_writer"] is False
  assert out["scalars"]["train/loss"] == [[1, 0.5], [2, 0.25]]
  assert [s for s, _ in out["scalars"]["train/lr"]] == [1, 2]
  np.testing.assert_allclose([v for _, v in out["scalars"]["train/lr"]], [1e-4, 2e-4], rtol=1e-7)  # float32
  assert out["plugins"]["train/loss"] == "scalars" and out["plugins"]["eval/strip"] == "images"
  assert out["plugins"]["config"] == "text" and out["plugins"]["_hparams_/session_start_info"] == "hparams"
  assert out["images"]["eval/strip"]["step"] == 2 and out["images"]["eval/strip"]["size"] == [12, 5]
  assert out["strip_exact"] == [True, True]
  assert out["images"]["eval/gray"]["size"] == [4, 7] and out["gray_exact"] is True
  assert out["text"] == "batch_size: 4"
  assert out["hparams"] == {"lr": 2e-4, "model.name": "drsformer", "remat": False, "batch": 4.0}
  assert len(list(logdir.glob("events.out.tfevents.*"))) == 1


def _logged_info(monkeypatch):
  """The INFO lines summary_writer logs (through absl), captured at the call: independent of how earlier tests in
  this process left the logging configuration."""
  lines = []
  monkeypatch.setattr(summary_writer.logging, "info", lambda msg, *args: lines.append(msg % args if args else msg))
  return lines


def test_without_logdir_only_logs(tmp_path, monkeypatch):
  """Processes other than 0 get a writer without a logdir: the scalars are logged, no file is written."""
  monkeypatch.chdir(tmp_path)
  logged = _logged_info(monkeypatch)
  w = summary_writer.SummaryWriter(None)
  w.write_scalars(3, {"train/loss": 0.123456789, "count": 2})
  w.write_images(3, {"eval/x": np.zeros((1, 2, 2, 3), np.float32)})
  w.flush()
  w.close()
  assert any("[3] count=2, train/loss=0.123457" in line for line in logged), logged
  assert list(tmp_path.iterdir()) == []


class _Recorder:
  def __init__(self):
    self.scalars = []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))


def test_report_progress_writes_steps_per_second_and_time_shares(monkeypatch):
  logged_lines = _logged_info(monkeypatch)
  rec = _Recorder()
  report = summary_writer.ReportProgress(num_train_steps=5, writer=rec, every_steps=2)
  for step in range(1, 6):
    with report.timed("data", wait_jax_async_dispatch=False):
      pass
    report(step)
  # The first call starts the clock; then every 2nd step and the last one.
  assert [s for s, _ in rec.scalars] == [2, 4, 5]
  assert all(set(v) == {"steps_per_sec"} and v["steps_per_sec"] > 0 for _, v in rec.scalars)
  logged = "\n".join(logged_lines)
  assert "step 5/5" in logged and "% data" in logged


def test_profile_traces_the_chosen_steps(tmp_path, monkeypatch):
  import jax
  calls = []
  monkeypatch.setattr(jax.profiler, "start_trace", lambda logdir: calls.append(("start", logdir)))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
  hook = summary_writer.Profile(str(tmp_path), first_step=3, last_step=6, num_steps=5)
  steps = []
  for step in range(1, 7):
    hook(step)
    steps.append((step, len(calls)))
  # Started after step 3, stopped at the end of the run (step 6) although 5 steps were asked for.
  assert calls == [("start", str(tmp_path)), ("stop",)]
  assert steps == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1), (6, 2)]


def test_profile_stopped_early_still_ends_its_trace(tmp_path, monkeypatch):
  """A run that stops (or fails) inside the profiled steps: close() ends the trace, so that it is written; a
  second close() and a close() without a trace do nothing."""
  import jax
  calls = []
  monkeypatch.setattr(jax.profiler, "start_trace", lambda logdir: calls.append("start"))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append("stop"))
  hook = summary_writer.Profile(str(tmp_path), first_step=1, last_step=100, num_steps=5)
  hook(1)
  hook(2)
  hook.close()
  hook.close()
  assert calls == ["start", "stop"]
  summary_writer.Profile(str(tmp_path), first_step=10, last_step=100).close()
  assert calls == ["start", "stop"]


def test_profile_writes_a_jax_trace(tmp_path):
  """The real profiler writes its trace under <logdir>/plugins/profile (what TensorBoard's profile tab reads)."""
  import jax.numpy as jnp
  hook = summary_writer.Profile(str(tmp_path), first_step=1, last_step=3, num_steps=1)
  for step in range(1, 4):
    hook(step)
    jnp.ones(4).block_until_ready()
  assert list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))


def test_writer_leaves_an_installed_tensorflow_unimported(tmp_path):
  """Where TensorFlow is installed (Colab), writing events does not import it (TensorBoard's own
  EventFileWriter would, through tf.io.gfile)."""
  import importlib.util
  if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("TensorFlow is not installed here: test_events_written_and_read_back_without_tensorflow covers it")
  _, out = _write_and_read(tmp_path, "allow")
  assert out["tf_imported_by_writer"] is False and out["scalars"]["train/loss"] == [[1, 0.5], [2, 0.25]]


def test_report_progress_prints_plain_time_based_lines(capsys):
  """The console line: step/total, the mean loss since the previous line, steps/s, ETA and elapsed time, one
  plain line per report (interval 0 here: every step after the first, which starts the clock)."""
  report = summary_writer.ReportProgress(num_train_steps=4, writer=None, every_steps=100, interval_s=0.0)
  losses = []
  for step, loss in zip(range(1, 5), (0.4, 0.3, 0.2, 0.1)):
    losses.append(loss)
    report(step, losses)
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 3 and "\r" not in "".join(lines)
  assert lines[0].startswith("step 2/4 (50%), loss 0.3000, ") and "steps/s, ETA " in lines[0]
  assert lines[1].startswith("step 3/4 (75%), loss 0.2000, ")
  assert lines[2].startswith("step 4/4 (100%), loss 0.1000, ") and "ETA" not in lines[2] and "elapsed" in lines[2]


def test_report_progress_waits_for_its_interval(capsys):
  report = summary_writer.ReportProgress(num_train_steps=50, writer=None, every_steps=100, interval_s=3600)
  for step in range(1, 51):
    report(step, [0.5] * step)
  lines = capsys.readouterr().err.splitlines()
  # Only the last step is reported within the hour, with the mean of the losses since the clock started.
  assert len(lines) == 1 and lines[0].startswith("step 50/50 (100%), loss 0.5000, "), lines
