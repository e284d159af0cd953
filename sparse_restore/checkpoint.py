"""The project's model checkpoint format, written by the converter and by training, read by everything else.

An *exported model* is a directory::

    DIR/model.json   {"format": "sparse_restore.model", "version": 1, "arch": "drsformer",
                      "config": {...constructor arguments...}, "source": "...", ...}
    DIR/params/      Orbax checkpoint of the Flax ``params`` tree (float32)

A *training workdir* (see ``sparse_restore.train``) holds the same ``model.json`` next to an Orbax
``CheckpointManager`` directory ``checkpoints/<step>/`` (:class:`Checkpoints`) whose item ``params`` is the same
tree. :func:`load_model` accepts either, so ``infer``/``evaluate`` work on converted weights and on training runs
alike. Training also checks a workdir's ``model.json`` against its config here (:func:`check_model_json`,
:class:`ModelMismatchError`) and loads ``config.init_from`` (:func:`load_init_params`).
"""
from __future__ import annotations

import json
import logging as std_logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
from absl import logging

from sparse_restore import imageio, models, sharding
from sparse_restore.models import policy as policy_lib

MODEL_JSON = "model.json"
PARAMS_DIR = "params"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_ITEMS = ("params", "opt_state", "meta", "data")  # items of a training workdir's checkpoints/<step>/
FORMAT = "sparse_restore.model"
VERSION = 1


class CheckpointError(RuntimeError):
  """A checkpoint directory is missing, incomplete or inconsistent; the message names the path."""


class CheckpointDamagedError(CheckpointError):
  """A checkpoint's files are damaged: a step folder that is empty or was never finished, or data that is
  truncated, missing or unreadable (as opposed to intact data of another network: a plain CheckpointError)."""


class ModelMismatchError(ValueError):
  """The workdir's model.json describes a different network than the config."""


def _ocp():
  import orbax.checkpoint as ocp  # Imported lazily: orbax start-up is slow and not every tool needs it.
  return ocp


def write_model_json(directory: str, arch: str, config: Dict[str, Any], **metadata) -> str:
  """Writes ``model.json`` describing the network (registry name + constructor arguments)."""
  info = {"format": FORMAT, "version": VERSION, "arch": arch, "config": _jsonable(config)}
  info.update(_jsonable(metadata))
  path = os.path.join(directory, MODEL_JSON)
  with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)
  return path


def read_model_json(directory: str) -> Dict[str, Any]:
  path = os.path.join(directory, MODEL_JSON)
  if not os.path.isfile(path):
    raise CheckpointError(f"{directory}: no {MODEL_JSON}; not a sparse_restore model export or training workdir")
  try:
    with open(path) as f:
      info = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path}: unreadable ({e})") from None
  if info.get("format") != FORMAT or "arch" not in info or not isinstance(info.get("config"), dict):
    raise CheckpointError(f"{path}: not a sparse_restore model description (needs format/arch/config)")
  # Older files may list how the network ran (conv_impl, dtype, ...): that is the policy's business now.
  info["config"] = {k: v for k, v in info["config"].items() if k not in policy_lib.LEGACY_RUNTIME_FIELDS}
  return info


def _tmp_prefix(directory: str) -> str:
  """Name prefix of save_model's hidden work folders beside ``directory`` (``.<name>.tmp-``)."""
  return "." + os.path.basename(directory) + ".tmp-"


def check_output_dir(directory: str, *, overwrite: bool = False) -> str:
  """Raises :class:`CheckpointError` unless :func:`save_model` can create (or, with ``overwrite``, replace)
  ``directory``; returns it as an absolute path. Cheap, so callers run it before any long work.

  The nearest existing ancestor must be a directory in which a folder can really be created: a probe folder is
  made there and removed, which also catches read-only file systems and ACLs that permission bits do not show.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.lexists(directory):
    if not os.path.isdir(directory):
      raise CheckpointError(f"{directory}: exists and is not a directory")
    try:
      entries = os.listdir(directory)
    except OSError as e:
      raise CheckpointError(f"{directory}: cannot be read ({e.strerror or e})") from None
    if entries and not overwrite:
      raise CheckpointError(f"{directory}: exists and is not empty (pass overwrite=True / --overwrite to replace)")
  ancestor = os.path.dirname(directory)
  while not os.path.lexists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise CheckpointError(f"{directory}: cannot be created: {ancestor} is not a directory")
  try:
    os.rmdir(tempfile.mkdtemp(prefix=_tmp_prefix(directory), dir=ancestor))
  except OSError as e:
    raise CheckpointError(f"{directory}: cannot be created in {ancestor} ({e.strerror or e})") from None
  return directory


# A work folder whose owner cannot be asked (no flock on this platform/file system) counts as abandoned after this.
_STALE_UNLOCKED_S = 3600


def _lock(path: str):
  """An exclusive, non-blocking flock on directory ``path``: the open descriptor, ``None`` if another process
  holds it, ``False`` if locks are not available here. The kernel drops it when the holder dies, however it dies."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
  except ImportError:
    return False
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd
  except BlockingIOError:
    os.close(fd)
    return None
  except OSError:  # e.g. a network file system without locks
    os.close(fd)
    return False


def _remove_stale(directory: str, started: float, *, keep_old: bool) -> None:
  """Removes work folders (``.<name>.tmp-*``) that earlier, killed runs left beside ``directory``: only real
  directories last modified before this run ``started`` and not locked by a live run. With ``keep_old``, the
  ``*.old`` ones (a previous export moved aside during a replace) stay: they may be the only copy left."""
  parent, prefix = os.path.dirname(directory), _tmp_prefix(directory)
  try:
    names = [n for n in os.listdir(parent) if n.startswith(prefix)]
  except OSError:
    return
  for name in names:
    path = os.path.join(parent, name)
    if keep_old and name.endswith(".old"):
      continue
    try:
      if os.path.islink(path) or not os.path.isdir(path) or os.path.getmtime(path) >= started:
        continue
    except OSError:
      continue
    fd = _lock(path)
    if fd is None:
      continue  # in use by a live run
    try:
      if fd is False and time.time() - os.path.getmtime(path) < _STALE_UNLOCKED_S:
        continue  # cannot ask its owner, and recent
      shutil.rmtree(path, ignore_errors=True)
    except OSError:
      continue
    finally:
      if fd is not False:
        os.close(fd)


def save_model(directory: str, arch: str, config: Dict[str, Any], params, *, overwrite: bool = False,
               **metadata) -> str:
  """Exports ``params`` for network ``arch(**config)`` to ``directory`` atomically.

  Everything is written to a hidden sibling work folder (``.<name>.tmp-XXXX``, locked while in use) first and
  renamed at the end, so an interrupted or failed export never leaves a half-written model behind; work folders
  of earlier runs that were killed are removed. An existing non-empty ``directory`` is refused unless
  ``overwrite`` (then it is replaced only after the new export is complete). A ``directory`` that cannot be
  created is a :class:`CheckpointError` before anything is written.
  """
  started = time.time()
  directory = check_output_dir(directory, overwrite=overwrite)
  parent = os.path.dirname(directory)
  try:
    os.makedirs(parent, exist_ok=True)
    _remove_stale(directory, started, keep_old=not os.path.isdir(directory))
    tmp = tempfile.mkdtemp(prefix=_tmp_prefix(directory), dir=parent)
    os.chmod(tmp, 0o777 & ~imageio.process_umask())  # mkdtemp makes it 0700; the export is a plain folder
  except OSError as e:
    raise CheckpointError(f"{directory}: cannot be created ({e.strerror or e})") from None
  lock = _lock(tmp)
  try:
    ckptr = _ocp().StandardCheckpointer()
    ckptr.save(os.path.join(tmp, PARAMS_DIR), jax.tree_util.tree_map(np.asarray, params))
    ckptr.wait_until_finished()
    write_model_json(tmp, arch, config, **metadata)
    if os.path.lexists(directory):
      old = tmp + ".old"  # hidden and ours: a later run removes it if this one dies before the rmtree below
      os.replace(directory, old)
      os.replace(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    if lock is not None and lock is not False:
      os.close(lock)
  _remove_stale(directory, started, keep_old=False)
  return directory


def build_module(info: Dict[str, Any], **overrides):
  """The Flax module described by a ``model.json`` dict; ``overrides`` replace constructor arguments
  (e.g. ``policy``)."""
  config = dict(info["config"])
  config.update(overrides)
  return models.create(info["arch"], **config)


def _restore_target(abstract):
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)


STEP_METADATA = "_CHECKPOINT_METADATA"  # written by Orbax when a step is finalised
DAMAGED_DIR = "checkpoints_damaged"     # where training moves damaged steps newer than the one it resumes from


def step_folders(workdir: str) -> List[int]:
  """Steps with a folder under ``workdir/checkpoints``, newest first, whether intact or not."""
  ckdir = os.path.join(workdir, CHECKPOINTS_DIR)
  try:
    names = os.listdir(ckdir)
  except OSError:
    return []
  return sorted((int(d) for d in names if d.isdigit() and os.path.isdir(os.path.join(ckdir, d))), reverse=True)


def _short_cause(e: BaseException) -> str:
  """The innermost useful line of an Orbax/TensorStore error (their messages embed pages of JSON specs)."""
  while (e.__cause__ or e.__context__) is not None and "See full TensorStore details" in str(e):
    e = e.__cause__ or e.__context__
  text = str(e).strip() or type(e).__name__
  for cut in (" [tensorstore_spec", "See full TensorStore details", "\n"):
    text = text.split(cut)[0]
  text = text.strip()
  return text if len(text) <= 300 else text[:297] + "..."


def step_problem(step_dir: str, items=("params",)) -> Optional[str]:
  """Why ``step_dir`` (``checkpoints/<step>``) cannot be a finished checkpoint with ``items``, or None.

  Cheap checks of the layout Orbax leaves when a save completes: the folder is not empty, its step metadata
  exists and parses, every item folder exists and is not empty, and the small JSON items (``meta``, ``data``)
  parse. Truncated array data is only found by restoring it.
  """
  try:
    names = os.listdir(step_dir)
  except OSError as e:
    return f"cannot be read ({e.strerror or e})"
  if not names:
    return "empty folder"
  meta_file = os.path.join(step_dir, STEP_METADATA)
  if not os.path.isfile(meta_file):
    return f"no {STEP_METADATA} (the save did not finish)"
  try:
    with open(meta_file) as f:
      json.load(f)
  except (OSError, ValueError) as e:
    return f"{STEP_METADATA} is unreadable ({e})"
  for item in items:
    folder = os.path.join(step_dir, item)
    try:
      files = os.listdir(folder)
    except OSError:
      return f"item {item}/ is missing"
    if not files:
      return f"item {item}/ is empty"
    if item in ("meta", "data"):  # small JSON items: a truncated one would only fail once training has started
      for name in files:
        if name == "commit_success.txt":
          continue
        try:
          with open(os.path.join(folder, name)) as f:
            json.load(f)
        except (OSError, ValueError) as e:
          return f"{item}/{name} is unreadable ({e})"
  return None


def latest_step(workdir: str, items=("params",)) -> Optional[int]:
  """The newest step under ``workdir/checkpoints`` that passes :func:`step_problem` (None if there is none).

  Damaged folders newer than it are passed over; :func:`load_model` (which also restores the data, and so
  detects truncated files) reports them.
  """
  for step in step_folders(workdir):
    if step_problem(os.path.join(workdir, CHECKPOINTS_DIR, str(step)), items) is None:
      return step
  return None


def _flat(tree) -> Dict[str, Tuple[int, ...]]:
  """``{"a/b/kernel": shape}`` of a params tree (arrays, ShapeDtypeStructs or Orbax array metadata)."""
  def name(k):
    return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
  return {"/".join(name(k) for k in kp): tuple(getattr(leaf, "shape", ()) or ())
          for kp, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _differences(stored, wanted, limit: int = 4) -> str:
  """What differs between two :func:`_flat` maps ('' if nothing): missing, unexpected and mis-shaped entries."""
  def listed(keys):
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")
  parts = []
  missing, unexpected = set(wanted) - set(stored), set(stored) - set(wanted)
  if missing:
    parts.append(f"{len(missing)} missing: {listed(missing)}")
  if unexpected:
    parts.append(f"{len(unexpected)} unexpected: {listed(unexpected)}")
  shapes = [k for k in sorted(set(stored) & set(wanted)) if stored[k] != wanted[k]]
  if shapes:
    parts.append(f"{len(shapes)} with other shapes: " + ", ".join(
        f"{k} {stored[k]} stored, {wanted[k]} needed" for k in shapes[:limit])
                 + (f" (+{len(shapes) - limit} more)" if len(shapes) > limit else ""))
  return "; ".join(parts)


_QUIETED = []


def _quiet_failed_restore_aftermath() -> None:
  """After a restore of damaged data fails, Orbax's remaining TensorStore reads still fail in the background:
  each one prints a traceback ("Event loop is closed", via sys.unraisablehook) and asyncio logs "exception was
  never retrieved" with pages of TensorStore specs. The damage has been reported by then, so those two kinds
  of messages (and only those) are dropped from then on."""
  if _QUIETED:
    return
  _QUIETED.append(True)
  previous = sys.unraisablehook

  def unraisable(info):
    if isinstance(info.exc_value, RuntimeError) and "Event loop is closed" in str(info.exc_value):
      return
    previous(info)

  sys.unraisablehook = unraisable
  std_logging.getLogger("asyncio").addFilter(
      lambda record: not ("exception was never retrieved" in record.getMessage()
                          and "tensorstore" in repr(record.exc_info or record.getMessage()).lower()))


def _restore_tree(item_dir: str, abstract, what: str, mismatch: str):
  """Restores the Orbax StandardSave at ``item_dir`` into ``abstract`` (ShapeDtypeStructs with shardings).

  The stored tree's metadata is compared with ``abstract`` first: different entries or shapes are a
  :class:`CheckpointError` ("``mismatch``: ..."). When they agree (or the metadata itself is unreadable), a
  failing restore means damaged data: :class:`CheckpointDamagedError` naming ``item_dir``.
  """
  ckptr = _ocp().StandardCheckpointer()
  try:
    stored = _flat(ckptr.metadata(item_dir).item_metadata)
  except Exception:
    stored = None
  # Unreadable metadata (Orbax hands out an empty tree when _METADATA is missing or broken) is damage, unless
  # the data still restores without it.
  if stored:
    diff = _differences(stored, _flat(abstract))
    if diff:
      raise CheckpointError(f"{mismatch}: {diff}")
  try:
    return ckptr.restore(item_dir, abstract)
  except Exception as e:
    _quiet_failed_restore_aftermath()
    raise CheckpointDamagedError(f"{item_dir}: {what} data is damaged or truncated ({_short_cause(e)})") from None


def load_model(path: str, *, step: Optional[int] = None, policy: Optional[policy_lib.Policy] = None,
               **overrides) -> Tuple[Any, Any, Dict[str, Any]]:
  """Loads an exported model or the params of a training workdir.

  Returns ``(module, params, info)`` where ``info`` is the ``model.json`` dict (plus ``"step"`` for workdirs).
  The module runs with ``policy`` (default: the one for JAX's first device, where ``restore`` runs it);
  ``overrides`` are passed to its constructor.

  Parameters of another network (other names or shapes) are a :class:`CheckpointError` listing the
  differences; damaged or truncated files a :class:`CheckpointDamagedError` naming the folder. Without
  ``step``, a workdir's newest intact checkpoint is used: newer damaged ones are skipped with a warning each
  (listed in ``info["skipped"]``).
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such checkpoint directory")
  info = read_model_json(path)
  module = build_module(info, policy=policy or policy_lib.for_device(), **overrides)
  target = _restore_target(models.abstract_params(module))
  mismatch = f"{path}: parameters do not match {info['arch']}({info['config']})"
  if os.path.isdir(os.path.join(path, PARAMS_DIR)):
    params = _restore_tree(os.path.join(path, PARAMS_DIR), target, "parameter", mismatch)
    return module, params, info
  steps = step_folders(path)
  if not steps:
    raise CheckpointError(f"{path}: has {MODEL_JSON} but neither {PARAMS_DIR}/ nor any {CHECKPOINTS_DIR}/<step>")
  if step is not None:
    if int(step) not in steps:
      raise CheckpointError(f"{path}: no checkpoint of step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    steps = [int(step)]
  skipped = []
  for s in steps:
    step_dir = os.path.join(path, CHECKPOINTS_DIR, str(s))
    try:
      problem = step_problem(step_dir)
      if problem is not None:
        raise CheckpointDamagedError(f"{step_dir}: {problem}")
      params = _restore_tree(os.path.join(step_dir, PARAMS_DIR), target, "parameter", mismatch)
    except CheckpointDamagedError as e:
      if step is not None:
        raise
      skipped.append(str(e))
      continue
    for reason in skipped:
      logging.warning("Skipped a damaged checkpoint: %s", reason)
    info = dict(info, step=int(s))
    if skipped:
      info["skipped"] = skipped
    return module, params, info
  raise CheckpointDamagedError(f"{path}: no intact checkpoint: " + "; ".join(skipped))


# ---------------------------------------------------------------------------------------------------------------
# Training workdirs: model.json checks, the Orbax CheckpointManager, initialisation from a saved model
# ---------------------------------------------------------------------------------------------------------------


def check_model_json(workdir: str, arch: str, description: Dict[str, Any], *, replace_unused: bool = False) -> bool:
  """Raises :class:`ModelMismatchError` if ``<workdir>/model.json`` describes another network.

  Returns whether the file exists and describes this network. With ``replace_unused`` (the caller knows the
  workdir has no checkpoint, e.g. an earlier run failed before its first save), a different or unreadable file
  blocks nothing: a warning says it is being replaced and False is returned, so that the caller writes its own.
  """
  path = os.path.join(workdir, MODEL_JSON)
  if not os.path.isfile(path):
    return False
  try:
    info = read_model_json(workdir)
  except CheckpointError as e:
    if replace_unused:
      logging.warning("Replacing %s, which no checkpoint uses: %s", path, e)
      return False
    raise
  old_arch, old = info["arch"], info["config"]
  if old_arch == arch and old == description:
    return True
  if old_arch != arch:
    diff = f"arch {old_arch!r} in the workdir vs {arch!r} in the config"
  else:
    keys = sorted(set(old) | set(description))
    diff = ", ".join(f"{k}: {old.get(k, '<unset>')!r} in the workdir vs {description.get(k, '<unset>')!r} in the config"
                     for k in keys if old.get(k) != description.get(k))
  if replace_unused:
    logging.warning("Replacing %s: it describes a different model (%s), but no checkpoint was saved with it "
                    "(an earlier run stopped before its first checkpoint).", path, diff)
    return False
  raise ModelMismatchError(
      f"{path} describes a different model than the config ({diff}). "
      "Refusing to resume: use a new --workdir, or set the config back to the workdir's model.")


def load_init_params(path: str, arch: str, abstract_params, mesh):
  """Params of an exported model or training workdir at ``path``, checked against the config's network."""
  _, params, info = load_model(path)
  if info["arch"] != arch:
    raise ModelMismatchError(f"config.init_from={path} holds a {info['arch']!r} model; the config trains {arch!r}")
  want = jax.tree_util.tree_structure(abstract_params)
  got = jax.tree_util.tree_structure(params)
  if want != got:
    raise ModelMismatchError(f"config.init_from={path}: parameter tree does not match the config's model "
                             f"({info['config']} vs config.model)")
  for (kp, a), b in zip(jax.tree_util.tree_leaves_with_path(abstract_params), jax.tree_util.tree_leaves(params)):
    if tuple(a.shape) != tuple(np.shape(b)):
      raise ModelMismatchError(f"config.init_from={path}: {jax.tree_util.keystr(kp)} has shape {np.shape(b)}, "
                               f"the config's model needs {a.shape}")
  logging.info("Initialised params from %s (%s).", path, info["arch"])
  return sharding.replicate(jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params), mesh)


class Checkpoints:
  """Orbax CheckpointManager at ``<workdir>/checkpoints`` with items params / opt_state / meta / data.

  ``params`` is a StandardSave of the params tree (what :func:`sparse_restore.checkpoint.load_model` reads),
  ``meta`` a JSON dict ``{"step", "stage", "stage_step"}``, ``data`` the grain iterator position (one JSON file per
  process). Saves are asynchronous for arrays; the data position is taken at save time.

  Resuming (:meth:`restore_newest`) takes the newest *intact* step: step folders that are empty, unfinished or
  whose data fails to restore are skipped with a warning and, once an older step has restored, moved to
  ``<workdir>/checkpoints_damaged/`` (kept for inspection; the run saves those step numbers again).
  """

  def __init__(self, workdir: str, max_to_keep: int):
    ocp = self._ocp = _ocp()
    self.workdir = workdir
    self.directory = os.path.join(workdir, CHECKPOINTS_DIR)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=CHECKPOINT_ITEMS,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep or None, create=True))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, state, data_iter, stage):
    """Saves ``state`` (a ``train.TrainState``), the position of ``data_iter`` and ``stage`` (a
    ``schedules.Stage``) as step ``state.step``."""
    import grain.checkpoint as grain_ckpt
    ocp = self._ocp
    step = int(sharding.to_host(state.step))
    meta = {"step": step, "stage": stage.index, "stage_step": step - stage.start}
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
        meta=ocp.args.JsonSave(meta), data=grain_ckpt.CheckpointSave(data_iter)))

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def restore_meta(self, step: int) -> Dict[str, Any]:
    ocp = self._ocp
    try:
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:
      raise CheckpointDamagedError(f"{self._step_dir(step)}: meta item is unreadable ({_short_cause(e)})") from None

  def _check_shapes(self, step: int, item: str, abstract) -> None:
    """A :class:`CheckpointError` (not damage) when the stored ``item`` holds other entries or shapes."""
    try:
      stored = _flat(self._ocp.StandardCheckpointer().metadata(os.path.join(self._step_dir(step), item))
                     .item_metadata)
    except Exception:
      return  # unreadable metadata: the restore decides
    diff = _differences(stored, _flat(abstract)) if stored else ""
    if diff:
      raise CheckpointError(f"{self._step_dir(step)}: the {item} item does not match this config's model and "
                            f"optimizer: {diff}")

  def restore(self, step: int, abstract_state, data_iter=None, *, with_opt_state: bool = True):
    """Restores params (and optimizer state and data position) of ``step`` into the shardings of
    ``abstract_state`` (a TrainState of ShapeDtypeStructs).

    Raises :class:`CheckpointError` when the stored trees do not match ``abstract_state`` and
    :class:`CheckpointDamagedError` when they match but the data cannot be read."""
    import grain.checkpoint as grain_ckpt
    ocp = self._ocp
    self._check_shapes(step, "params", abstract_state.params)
    items = dict(params=ocp.args.StandardRestore(abstract_state.params))
    if with_opt_state:
      self._check_shapes(step, "opt_state", abstract_state.opt_state)
      items["opt_state"] = ocp.args.StandardRestore(abstract_state.opt_state)
    if data_iter is not None:
      items["data"] = grain_ckpt.CheckpointRestore(data_iter)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
      _quiet_failed_restore_aftermath()
      raise CheckpointDamagedError(
          f"{self._step_dir(step)}: the training state is damaged or truncated ({_short_cause(e)})") from None
    return restored

  def restore_data(self, step: int, data_iter) -> None:
    """Moves ``data_iter`` to the data position saved with ``step``."""
    import grain.checkpoint as grain_ckpt
    try:
      self.manager.restore(step, args=self._ocp.args.Composite(data=grain_ckpt.CheckpointRestore(data_iter)))
    except Exception as e:
      raise CheckpointDamagedError(
          f"{self._step_dir(step)}: the data-iterator position is unreadable ({_short_cause(e)})") from None

  def restore_newest(self, abstract_state_at, with_opt_state_at):
    """Restores the newest intact step: ``(step, meta, restored)``, or None when there is no checkpoint.

    ``abstract_state_at(step)`` gives the TrainState of ShapeDtypeStructs to restore into,
    ``with_opt_state_at(step, meta)`` whether the optimizer state is wanted too. Steps that fail
    :func:`step_problem` or whose data does not restore are skipped with a warning naming them, newest first,
    and moved aside once an older one has restored. When none restores, :class:`CheckpointDamagedError` lists
    them all and nothing is moved. Another network's checkpoint is a :class:`CheckpointError` at once.
    """
    damaged = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        problem = step_problem(self._step_dir(step), CHECKPOINT_ITEMS)
        if problem is not None:
          raise CheckpointDamagedError(f"{self._step_dir(step)}: {problem}")
        meta = self.restore_meta(step)
        restored = self.restore(step, abstract_state_at(step), with_opt_state=with_opt_state_at(step, meta))
      except CheckpointDamagedError as e:
        logging.warning("Skipping a damaged checkpoint: %s", e)
        damaged.append((step, str(e)))
        continue
      if damaged:
        self._set_aside([s for s, _ in damaged], resumed=step)
      return step, meta, restored
    if damaged:
      raise CheckpointDamagedError(
          f"{self.directory}: no intact checkpoint to resume from: " + "; ".join(m for _, m in damaged)
          + ". Nothing was changed: move the damaged step folders away to start again from step 0, or use a new "
          "--workdir.")
    return None

  def _set_aside(self, steps, *, resumed: int) -> None:
    """Moves the damaged ``steps`` to ``<workdir>/checkpoints_damaged/`` (process 0; the others wait), so that
    the run can save those steps again."""
    if jax.process_index() == 0:
      target_root = os.path.join(self.workdir, DAMAGED_DIR)
      os.makedirs(target_root, exist_ok=True)
      for step in steps:
        target, n = os.path.join(target_root, str(step)), 1
        while os.path.lexists(target):
          target, n = os.path.join(target_root, f"{step}-{n}"), n + 1
        os.replace(self._step_dir(step), target)
        logging.warning("Moved the damaged checkpoint %s to %s; resuming from step %d.", self._step_dir(step),
                        target, resumed)
    if jax.process_count() > 1:
      sharding.wait_for_all_processes(f"sparse_restore:damaged_checkpoints_moved:{resumed}")
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if hasattr(obj, "dtype") and not hasattr(obj, "shape"):
    return str(obj)
  if isinstance(obj, type) or callable(obj):
    return getattr(obj, "__name__", str(obj))
  return obj
