"""Data-parallel sharding: one mesh axis ``data`` over every device of every process.

Parameters and optimizer state are replicated; batches are split along their first dimension. Each process loads
only its own share of a global batch (``global_batch_size // process_count`` examples) and :func:`global_batch` glues
the shares into one global ``jax.Array`` (``jax.make_array_from_process_local_data``), so the same code runs on one
CPU, one GPU, several local devices, or several hosts. :func:`wait_for_all_processes` is the processes' barrier.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with axis ``data`` over ``devices`` (default: all devices of all processes).

  The axis type is ``Auto`` (``jax.make_mesh`` defaults to Explicit axes, which reject some reshapes in the models).
  """
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.array(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the full value."""
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """The first dimension is split over the ``data`` axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def mesh_process_count(mesh: Mesh) -> int:
  """Number of distinct processes owning devices of ``mesh``."""
  return len({d.process_index for d in mesh.devices.flat})


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of a global batch; checks that it splits evenly over the devices."""
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the {n} devices of the mesh; "
                     f"choose a multiple of {n}")
  return global_batch_size // mesh_process_count(mesh)


def global_batch(local_batch, mesh: Mesh):
  """Builds global arrays sharded over ``data`` from this process's share (a pytree of numpy arrays)."""
  sharding = data_sharded(mesh)
  return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                                local_batch)


def replicate(tree, mesh: Mesh):
  """Places a pytree of host values (identical on every process) on every device of ``mesh``."""
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree_util.tree_map(put, tree)


def to_host(tree):
  """Host numpy copy of a pytree of replicated (possibly multi-process) arrays, read from a local shard."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.is_fully_replicated:
        raise ValueError("to_host needs replicated arrays in a multi-process run")
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree_util.tree_map(get, tree)


# A barrier may wait this long: dataset preparation and compiling a full-size train step take minutes on a CPU.
BARRIER_TIMEOUT_S = 3600


def wait_for_all_processes(name: str, timeout_s: int = BARRIER_TIMEOUT_S):
  """Barrier over all processes on the ``jax.distributed`` coordination service (each name used once).

  Not ``multihost_utils.sync_global_devices``: that is a collective, and on CPU the first collective of a device
  set (Gloo) gives up when the processes arrive more than 30 s apart.
  """
  from orbax.checkpoint import multihost
  multihost.sync_global_processes(name, timeout=timeout_s)
