"""TensorBoard summaries without TensorFlow, and the training loop's progress and profiling hooks.

:class:`SummaryWriter` writes the event files TensorBoard reads (``events.out.tfevents.*``) with the
``tensorboard`` package's record writer and protocol buffers, in the same format as ``tf.summary`` (scalars,
PNG images, hparams and text as tensor summaries with their plugin's metadata), and logs scalars through absl
as one line per call. Nothing here imports TensorFlow, even where it is installed (Colab): the files are written
with plain Python file objects, not ``tf.io.gfile`` (which ``tensorboard``'s own ``EventFileWriter`` resolves to
TensorFlow when it is importable).

:class:`ReportProgress` and :class:`Profile` are the hooks the training loop calls after every step.
"""
from __future__ import annotations

import collections
import contextlib
import io
import itertools
import os
import socket
import time
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
from absl import logging

_file_ids = itertools.count()


def _to_uint8(image: np.ndarray) -> np.ndarray:
  """HxWxC (C in 1, 3, 4) as uint8; floats are taken as [0, 1] (clipped) like ``tf.summary.image``."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"image summary: expected HxWxC with 1, 3 or 4 channels, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image
  return (np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  from PIL import Image
  image = _to_uint8(image)
  out = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out, format="PNG")
  return out.getvalue()


class SummaryWriter:
  """Scalars, images, texts and hparams of a run: an event file in ``logdir`` (None: log lines only).

  Every ``write_*`` call appends its events and flushes the file, so TensorBoard sees a running job's values.
  """

  def __init__(self, logdir: Optional[str] = None, max_images_per_tag: int = 3):
    self._max_images = max_images_per_tag
    self._records = None
    self.path = None
    if logdir:
      from tensorboard.compat.proto import event_pb2
      from tensorboard.summary.writer.record_writer import RecordWriter
      os.makedirs(logdir, exist_ok=True)
      # The file name TensorBoard globs for; the suffix keeps two writers of one process apart.
      self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                                       f"{os.getpid()}.{next(_file_ids)}")
      self._records = RecordWriter(open(self.path, "wb"))
      self._write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  # ------------------------------------------------------------------------------------------------ writing
  def _write_event(self, event):
    self._records.write(event.SerializeToString())
    self._records.flush()

  def _write_summary(self, step: int, summary):
    if self._records is None:
      return
    from tensorboard.compat.proto import event_pb2
    self._write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    values = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(scalars.items())]
    logging.info("[%d] %s", step, ", ".join(values))
    if self._records is None:
      return
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.scalar import metadata
    from tensorboard.util import tensor_util
    summary = summary_pb2.Summary()
    for tag, value in scalars.items():
      summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
                        tensor=tensor_util.make_tensor_proto(np.asarray(value, np.float32)))
    self._write_summary(step, summary)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    """``{tag: NxHxWxC or HxWxC}`` (uint8, or float in [0, 1]); at most ``max_images_per_tag`` of each N."""
    logging.info("[%d] images: %s", step, {k: np.shape(v) for k, v in images.items()})
    if self._records is None:
      return
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.image import metadata
    from tensorboard.util import tensor_util
    summary = summary_pb2.Summary()
    for tag, batch in images.items():
      batch = np.asarray(batch)
      batch = batch[None] if batch.ndim == 3 else batch
      # tf.summary.image's layout: [width, height, png, png, ...] as one string tensor.
      pngs = [encode_png(image) for image in batch[: self._max_images]]
      data = np.array([str(batch.shape[2]).encode(), str(batch.shape[1]).encode(), *pngs], dtype=object)
      summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
                        tensor=tensor_util.make_tensor_proto(data))
    self._write_summary(step, summary)

  def write_texts(self, step: int, texts: Mapping[str, str]):
    logging.info("[%d] texts: %s", step, dict(texts))
    if self._records is None:
      return
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.text import metadata
    from tensorboard.util import tensor_util
    summary = summary_pb2.Summary()
    for tag, text in texts.items():
      summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
                        tensor=tensor_util.make_tensor_proto(np.array(str(text).encode(), dtype=object)))
    self._write_summary(step, summary)

  def write_hparams(self, hparams: Mapping[str, Any]):
    """The run's hyperparameters (bool, int, float or str values) for TensorBoard's HParams tab."""
    logging.info("[Hyperparameters] %s", dict(hparams))
    if self._records is None:
      return
    from tensorboard.plugins.hparams import summary_v2 as hparams_summary
    self._write_summary(0, hparams_summary.hparams_pb(dict(hparams)))

  def flush(self):
    if self._records is not None:
      self._records.flush()

  def close(self):
    if self._records is not None:
      self._records.close()
      self._records = None


# ################################################################################################################
#        Training-loop hooks: called with the number of finished steps after every step (process 0 only)
# ################################################################################################################


class ReportProgress:
  """Training progress: a plain console line at least every ``interval_s`` seconds (step/total, mean loss since
  the previous line, steps/s, ETA, elapsed; one line per report, no carriage returns, so a log file reads well),
  and every ``every_steps`` steps ``steps_per_sec`` to the writer and a log line with the share of time spent in
  the ``timed`` parts of the loop (data, checkpoint, eval).

  Called with the number of finished steps after every step (and the training losses seen so far, oldest first);
  the first call (after the train step compiled and ran once) starts the clocks.
  """

  def __init__(self, num_train_steps: int, writer: Optional[SummaryWriter] = None, every_steps: int = 100,
               interval_s: float = 10.0, console: bool = True):
    self._total = num_train_steps
    self._writer = writer
    self._every = max(1, int(every_steps))
    self._interval = float(interval_s)
    self._console = console
    self._t0 = time.monotonic()
    self._last = None       # (step, time) of the previous writer report, or of the first call
    self._start = None      # (step, time) of the first call
    self._last_line = None  # (time, number of losses seen) at the previous console line
    self._time_per_part: Dict[str, float] = collections.defaultdict(float)

  def __call__(self, step: int, losses: Optional[Sequence[float]] = None):
    now = time.monotonic()
    if self._last is None:  # The first call (after compiling) starts the clock.
      self._last = self._start = (step, now)
      self._last_line = (now, len(losses) if losses is not None else 0)
      return
    if self._console and (now - self._last_line[0] >= self._interval or step == self._total):
      self._print_line(step, now, losses)
    if step % self._every and step != self._total:
      return
    steps_per_sec = (step - self._last[0]) / max(now - self._last[1], 1e-9)
    self._last = (step, now)
    eta = (self._total - step) / steps_per_sec
    message = f"{steps_per_sec:.3g} steps/s, step {step}/{self._total}, ETA {eta / 60:.1f} min"
    if self._time_per_part:
      total = now - self._t0
      message += " (" + ", ".join(f"{100 * dt / total:.1f}% {name}"
                                  for name, dt in sorted(self._time_per_part.items())) + ")"
    logging.info("%s", message)
    if self._writer is not None:
      self._writer.write_scalars(step, {"steps_per_sec": steps_per_sec})

  def line(self, step: int, now: float, losses: Optional[Sequence[float]] = None) -> str:
    """``step 120/500 (24%), loss 0.0412, 2.31 steps/s, ETA 2:45, elapsed 1:12``: the rate and ETA average
    over every step since the clock started (evaluations and checkpoints included)."""
    from sparse_restore import console
    first_step, first_time = self._start
    rate = (step - first_step) / max(now - first_time, 1e-9)
    parts = [f"step {step}/{self._total} ({100 * step / max(self._total, 1):.0f}%)"]
    if losses:
      recent = list(losses[self._last_line[1]:]) or [losses[-1]]
      parts.append(f"loss {float(np.mean(recent)):.4f}")
    parts.append(f"{rate:.3g} steps/s")
    if step < self._total and rate > 0:
      parts.append(f"ETA {console.clock((self._total - step) / rate)}")
    parts.append(f"elapsed {console.clock(now - first_time)}")
    return ", ".join(parts)

  def _print_line(self, step: int, now: float, losses):
    from sparse_restore import console
    console.say(self.line(step, now, losses))
    self._last_line = (now, len(losses) if losses is not None else 0)

  @contextlib.contextmanager
  def timed(self, name: str, wait_jax_async_dispatch: bool = True):
    """Adds the wall time of the block to the part ``name``. The loop's timed parts (data, evaluation,
    checkpoint) wait for their own results, so ``wait_jax_async_dispatch`` (clu's signature) changes nothing."""
    del wait_jax_async_dispatch
    start = time.monotonic()
    try:
      yield
    finally:
      self._time_per_part[name] += time.monotonic() - start


class Profile:
  """A ``jax.profiler`` trace of ``num_steps`` steps from step ``first_step`` into ``logdir`` (TensorBoard's
  profile plugin or XProf read it); stopped early at ``last_step``, the end of the run."""

  def __init__(self, logdir: str, first_step: int, last_step: int, num_steps: int = 5):
    self._logdir = logdir
    self._first = first_step
    self._stop = min(first_step + num_steps, last_step)
    self._running = False

  def __call__(self, step: int):
    import jax
    if not self._running and self._first <= step < self._stop:
      logging.info("Profiling steps %d to %d into %s", step, self._stop, self._logdir)
      jax.profiler.start_trace(self._logdir)
      self._running = True
    elif self._running and step >= self._stop:
      jax.profiler.stop_trace()
      self._running = False

  def close(self):
    """Ends a trace still running (a run stopped or failed inside the profiled steps), so that it is written."""
    if self._running:
      import jax
      jax.profiler.stop_trace()
      self._running = False
