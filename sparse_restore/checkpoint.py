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
import os
import shutil
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from absl import logging

from sparse_restore import models, sharding
from sparse_restore.models import policy as policy_lib

MODEL_JSON = "model.json"
PARAMS_DIR = "params"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_ITEMS = ("params", "opt_state", "meta", "data")  # items of a training workdir's checkpoints/<step>/
FORMAT = "sparse_restore.model"
VERSION = 1


class CheckpointError(RuntimeError):
  """A checkpoint directory is missing, incomplete or inconsistent; the message names the path."""


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


def latest_step(workdir: str) -> Optional[int]:
  """The newest finished step saved under ``workdir/checkpoints`` (None if there is none)."""
  ckdir = os.path.join(workdir, CHECKPOINTS_DIR)
  if not os.path.isdir(ckdir):
    return None
  steps = [int(d) for d in os.listdir(ckdir) if d.isdigit() and os.path.isdir(os.path.join(ckdir, d))]
  return max(steps) if steps else None


def load_model(path: str, *, step: Optional[int] = None, policy: Optional[policy_lib.Policy] = None,
               **overrides) -> Tuple[Any, Any, Dict[str, Any]]:
  """Loads an exported model or the params of a training workdir.

  Returns ``(module, params, info)`` where ``info`` is the ``model.json`` dict (plus ``"step"`` for workdirs).
  The module runs with ``policy`` (default: the one for JAX's first device, where ``restore`` runs it);
  ``overrides`` are passed to its constructor.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such checkpoint directory")
  info = read_model_json(path)
  module = build_module(info, policy=policy or policy_lib.for_device(), **overrides)
  target = _restore_target(models.abstract_params(module))
  ocp = _ocp()
  if os.path.isdir(os.path.join(path, PARAMS_DIR)):
    try:
      params = ocp.StandardCheckpointer().restore(os.path.join(path, PARAMS_DIR), target)
    except Exception as e:  # Orbax raises a zoo of types for shape/structure mismatches.
      raise CheckpointError(f"{path}: parameters do not match {info['arch']}({info['config']}): {e}") from None
    return module, params, info
  step = latest_step(path) if step is None else step
  if step is None:
    raise CheckpointError(f"{path}: has {MODEL_JSON} but neither {PARAMS_DIR}/ nor any {CHECKPOINTS_DIR}/<step>")
  mngr = ocp.CheckpointManager(os.path.join(path, CHECKPOINTS_DIR), item_names=("params",))
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  except Exception as e:
    raise CheckpointError(f"{path}: could not restore params of step {step}: {e}") from None
  info = dict(info, step=int(step))
  return module, restored["params"], info


# ---------------------------------------------------------------------------------------------------------------
# Training workdirs: model.json checks, the Orbax CheckpointManager, initialisation from a saved model
# ---------------------------------------------------------------------------------------------------------------


def check_model_json(workdir: str, arch: str, description: Dict[str, Any]) -> bool:
  """Raises :class:`ModelMismatchError` if ``<workdir>/model.json`` describes another network.

  Returns whether the file exists.
  """
  if not os.path.isfile(os.path.join(workdir, MODEL_JSON)):
    return False
  info = read_model_json(workdir)
  old_arch, old = info["arch"], info["config"]
  if old_arch == arch and old == description:
    return True
  if old_arch != arch:
    diff = f"arch {old_arch!r} in the workdir vs {arch!r} in the config"
  else:
    keys = sorted(set(old) | set(description))
    diff = ", ".join(f"{k}: {old.get(k, '<unset>')!r} in the workdir vs {description.get(k, '<unset>')!r} in the config"
                     for k in keys if old.get(k) != description.get(k))
  raise ModelMismatchError(
      f"{os.path.join(workdir, MODEL_JSON)} describes a different model than the config ({diff}). "
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
  """

  def __init__(self, workdir: str, max_to_keep: int):
    ocp = self._ocp = _ocp()
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

  def restore_meta(self, step: int) -> Dict[str, Any]:
    ocp = self._ocp
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state, data_iter=None, *, with_opt_state: bool = True):
    """Restores params (and optimizer state and data position) of ``step`` into the shardings of
    ``abstract_state`` (a TrainState of ShapeDtypeStructs)."""
    import grain.checkpoint as grain_ckpt
    ocp = self._ocp
    items = dict(params=ocp.args.StandardRestore(abstract_state.params))
    if with_opt_state:
      items["opt_state"] = ocp.args.StandardRestore(abstract_state.opt_state)
    if data_iter is not None:
      items["data"] = grain_ckpt.CheckpointRestore(data_iter)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # Orbax raises many exception types for structure/shape mismatches.
      raise CheckpointError(
          f"{self.directory}/{step}: could not restore the training state ({type(e).__name__}: {e})") from None
    return restored

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
