"""What the command-line tools print: quiet by default, plain progress lines, everything on request.

Every CLI (``main``, ``infer``, ``evaluate``, ``convert``, ``bench``) calls :func:`setup` first, before JAX or
any library with native code is imported. By default it hides other libraries' INFO chatter (Orbax's checkpoint
steps, JAX's backend probes such as ``Unable to initialize backend 'tpu'``, TFDS's "Downloading and preparing"
banner and progress bars, TensorFlow's C++ INFO lines such as the oneDNN notice) and a short list of harmless
warnings (:data:`HARMLESS`), while every other warning and error still shows. ``--verbosity=0`` / ``=1`` (absl, in
``main``) or ``-v`` / ``--verbose`` (the argparse tools) show everything again.

The tools' own messages go through :func:`say` (one plain line on stderr, flushed) and :class:`Progress`
(a tqdm bar on a terminal, otherwise one plain line at most every ``interval`` seconds, so a log file stays
readable).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
from typing import Iterator, Optional, Sequence

# Messages of other libraries that look like problems to a newcomer but are not (matched anywhere in the
# message, any level): the probe for a TPU runtime on machines without one, TFDS noting that a dataset folder is
# still being built and that it decodes with Pillow instead of OpenCV.
HARMLESS = (
    re.compile(r"Unable to initialize backend"),
    re.compile(r"has no dataset_info\.json"),
    re.compile(r"OpenCV is not installed"),
    re.compile(r"oneDNN custom operations are on"),
)

# Unraisable exceptions that are known leftovers, not problems: Orbax leaves the other read coroutines of a failed
# restore (a damaged checkpoint, already reported in one line) un-awaited, and Python prints each, with its whole
# TensorStore spec, when it is collected (often at exit, after our error line).
HARMLESS_UNRAISABLE = (re.compile(r"<coroutine object (\S*\.)?_read_array_index_and_device_put\b"),)

_state = {"verbose": False, "setup": False}


def verbose() -> bool:
  """Whether :func:`setup` was asked to show everything."""
  return bool(_state["verbose"])


class QuietFilter(logging.Filter):
  """Drops log records below WARNING and the :data:`HARMLESS` messages at any level."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.WARNING:
      return False
    try:
      message = record.getMessage()
    except Exception:  # pylint: disable=broad-except  (a malformed record: let the handler report it)
      return True
    return not any(p.search(message) for p in HARMLESS)


_FILTER = QuietFilter()


def _quiet_unraisablehook(unraisable, *, fallback=sys.__unraisablehook__) -> None:
  """sys.unraisablehook in quiet mode: drops :data:`HARMLESS_UNRAISABLE`, passes everything else on."""
  try:
    text = repr(unraisable.object)
  except Exception:  # pylint: disable=broad-except
    text = ""
  if any(p.search(text) for p in HARMLESS_UNRAISABLE):
    return
  fallback(unraisable)


def setup(verbose: bool = False) -> None:  # pylint: disable=redefined-outer-name
  """Configures the console of a command-line tool; call it first (before importing JAX or TFDS).

  Quiet (default): ``TF_CPP_MIN_LOG_LEVEL=1`` unless the environment sets it (hides the C++ INFO lines of XLA and
  TensorFlow), log records below WARNING dropped (our own detail lines too: the tools say what matters with
  :func:`say`) and so are the :data:`HARMLESS` warnings; TFDS's banners and bars are hidden by
  :func:`library_output`. Verbose: every log record at INFO and up, in absl's format (time, file and line).

  Only the root logger's level and its handlers' filters change (no library logger is touched), so calling it
  inside another program (tests) does not hide log records from that program's own handlers.
  """
  _state.update(verbose=bool(verbose), setup=True)
  from absl import logging as absl_logging
  root = logging.getLogger()
  if absl_logging.get_absl_handler() not in root.handlers:
    absl_logging.use_absl_handler()  # the argparse tools: the same format as main's (absl.app installs it)
  if verbose:
    for handler in root.handlers:
      handler.removeFilter(_FILTER)
    if root.level > logging.INFO or root.level == logging.NOTSET:
      absl_logging.set_verbosity(absl_logging.INFO)
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  if not getattr(sys.unraisablehook, "_sparse_restore_quiet", False):
    previous = sys.unraisablehook
    hook = lambda unraisable: _quiet_unraisablehook(unraisable, fallback=previous)
    hook._sparse_restore_quiet = True  # pylint: disable=protected-access
    sys.unraisablehook = hook
  absl_logging.set_verbosity(absl_logging.WARNING)  # the root logger's level (absl's handler is on it)
  for handler in root.handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)


def absl_verbosity_requested(flag_values=None) -> bool:
  """True when absl's ``--verbosity``/``-v`` was given on the command line (``main``'s way to show everything)."""
  from absl import flags
  fv = flag_values or flags.FLAGS
  try:
    return bool(fv["verbosity"].present)
  except KeyError:
    return False


@contextlib.contextmanager
def library_output() -> Iterator[None]:
  """Around a library call that prints banners to stdout or draws progress bars (TFDS building a dataset): in
  quiet mode its stdout is swallowed and TFDS's bars are off; verbose, it prints as usual."""
  if verbose():
    yield
    return
  try:
    from tensorflow_datasets.core.utils import tqdm_utils
    tqdm_utils.disable_progress_bar()
  except ImportError:  # pragma: no cover - TFDS is only needed for training data
    pass
  sink = io.StringIO()
  with contextlib.redirect_stdout(sink):
    yield


# ----------------------------------------------------------------------------------------------------------
# Our own lines
# ----------------------------------------------------------------------------------------------------------


def say(message: str, *, file=None) -> None:
  """One plain line on stderr (or ``file``), flushed at once."""
  stream = file or sys.stderr
  print(message, file=stream, flush=True)


def duration(seconds: float) -> str:
  """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
  seconds = max(0.0, float(seconds))
  if seconds < 60:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
  minutes, sec = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f"{minutes} min {sec:02d} s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes:02d} min"


def clock(seconds: float) -> str:
  """``m:ss`` or ``h:mm:ss`` (for ETA / elapsed fields of progress lines)."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, sec = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{sec:02d}" if hours else f"{minutes}:{sec:02d}"


def is_tty(stream=None) -> bool:
  stream = stream or sys.stderr
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


class Progress:
  """Progress of ``total`` items: a tqdm bar when ``file`` (stderr) is a terminal, otherwise plain lines
  (``desc: 12/48 images (25%), 2.1 images/s, ETA 0:17, elapsed 0:06``, then ``, last <postfix>`` if set) when an
  item finishes at least ``interval`` seconds after the previous line (the caller says when it is done).
  ``enabled=False`` prints nothing; :meth:`write` always prints (above the bar on a terminal).
  """

  def __init__(self, total: int, *, desc: str, unit: str = "images", interval: float = 10.0, enabled: bool = True,
               file=None, leave: bool = True, tty: Optional[bool] = None):
    self.total = int(total)
    self.desc = desc
    self.unit = unit
    self.interval = float(interval)
    self.enabled = enabled
    self.file = file or sys.stderr
    self.count = 0
    self.postfix = ""
    self._t0 = time.monotonic()
    self._last = self._t0
    self._bar = None
    self._closed = False
    if enabled and (is_tty(self.file) if tty is None else tty):
      from tqdm import tqdm
      self._bar = tqdm(total=self.total, unit=unit[:-1] if unit.endswith("s") else unit, desc=desc,
                       file=self.file, leave=leave)

  def set_postfix(self, text: str) -> None:
    self.postfix = text
    if self._bar is not None:
      self._bar.set_postfix_str(text)

  def update(self, n: int = 1) -> None:
    self.count += n
    if self._bar is not None:
      self._bar.update(n)
      return
    now = time.monotonic()
    if self.enabled and now - self._last >= self.interval and self.count < self.total:
      self._last = now
      say(self.line(now), file=self.file)

  def line(self, now: Optional[float] = None) -> str:
    """The plain progress line for the current count."""
    now = time.monotonic() if now is None else now
    elapsed = now - self._t0
    text = f"{self.desc}: {self.count}/{self.total} {self.unit}"
    if self.total:
      text += f" ({100 * self.count / self.total:.0f}%)"
    if self.count and elapsed > 0:
      rate = self.count / elapsed
      text += f", {rate:.3g} {self.unit}/s"
      if self.count < self.total:
        text += f", ETA {clock((self.total - self.count) / rate)}"
    text += f", elapsed {clock(elapsed)}"
    if self.postfix:
      text += f", last {self.postfix}"
    return text

  def write(self, message: str) -> None:
    if self._bar is not None:
      self._bar.write(message, file=self.file)
    else:
      say(message, file=self.file)

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self._bar is not None:
      self._bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False


def rounded(asked: int, used: int, multiple: int) -> str:
  """``256`` when nothing changed, else ``256 (asked 250: rounded up to the network's multiple 8)``."""
  if int(asked) == int(used):
    return str(used)
  return f"{used} (asked {asked}: rounded up to the network's multiple {multiple})"


def tiling(tile: int, overlap: int, multiple: int) -> str:
  """What tiled inference uses for a requested ``tile`` / ``overlap``: both are rounded up to ``multiple`` (so
  every tile starts on the network's down-sampling grid), e.g. ``128 (asked 100: ...) overlap 128 (asked 32:
  ...)``."""
  from sparse_restore import restore
  return (f"{rounded(tile, restore.round_up(tile, multiple), multiple)} overlap "
          f"{rounded(overlap, restore.round_up(max(0, int(overlap)), multiple), multiple)}")


def plural(n: int, word: str, words: Optional[str] = None) -> str:
  return f"{n} {word if n == 1 else (words or word + 's')}"


def join(parts: Sequence[str]) -> str:
  return ", ".join(p for p in parts if p)
