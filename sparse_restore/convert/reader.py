"""Reads PyTorch checkpoints and ``.safetensors`` files into numpy arrays without running any code from them.

A PyTorch checkpoint (``torch.save``) is a pickle, and unpickling can call any importable function, so loading an
untrusted ``.pth`` with plain ``pickle``/``torch.load(weights_only=False)`` can run arbitrary code. This reader
never does that and does not need torch:

* Zip format (torch >= 1.6): ``<prefix>/data.pkl`` is unpickled by :class:`_RestrictedUnpickler`, whose
  ``find_class`` hands out only our own stand-ins for the handful of globals that rebuild tensors and plain
  containers (``torch._utils._rebuild_tensor_v2`` & co., storage types such as ``torch.FloatStorage``,
  ``collections.OrderedDict``, ``torch.Size``...). Any other global (``os.system``, ``builtins.eval``, a model
  class...) stops the load *before* anything is called, with a :class:`ConversionError` naming it. Tensor data
  comes from the raw storages ``<prefix>/data/<key>`` (byte order from ``<prefix>/byteorder``), viewed with the
  saved size/stride/offset (bounds-checked) and copied.
* Legacy format (``_use_new_zipfile_serialization=False``): magic-number pickles followed by the same kind of
  object pickle and the raw storages one after another; read the same way.
* ``.safetensors``: the JSON header and the data offsets are validated, then each tensor is read.

Hostile or broken files are refused before anything large is allocated; every check lives in one place:

* **Pickles** (:func:`_load_pickle`): at most :data:`MAX_PICKLE_BYTES` of pickle (a zip member is inflated only that
  far), walked opcode by opcode with ``pickletools`` *before* unpickling, each opcode charged an upper estimate of
  the objects it creates (memo-table growth included) against :data:`PICKLE_BUDGET`. Every allowed global is a
  :class:`_Global`: its call is charged from its arguments first (an ``int`` argument counts as a size), and any
  exception it raises becomes an error naming it. Containers may nest :data:`MAX_NESTING` levels.
* **Storages** (``_RestrictedUnpickler.persistent_load``) and **views** (:func:`_make_ref`): sizes, strides,
  offsets and element counts are Python ints checked against int64, :data:`MAX_NDIM` and the storage's bounds.
* **Totals** (:meth:`_Limits.check`), before any storage is read: the tensors and the storages they are cut from
  may take at most ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`) and at most :data:`EXPANSION_FACTOR` x the
  file's size + :data:`EXPANSION_SLACK`, so a small file cannot expand into a large allocation (stride-0 views,
  compressed storages). Storages are then inflated only up to the bytes the pickle declares.
* **safetensors headers**: at most :data:`MAX_SAFETENSORS_HEADER` bytes, :data:`MAX_JSON_DEPTH` levels, tensors
  exactly tiling the data section.

Values come back as they were saved: dicts/OrderedDicts/lists/tuples, numbers, strings, ``None`` and tensors as
numpy arrays of the saved dtype (bfloat16 as ``ml_dtypes.bfloat16``; :func:`to_float32` widens it exactly).
Every failure (unknown format, truncated or corrupt file, disallowed content, a limit exceeded) is a
:class:`ConversionError` whose message starts with the file name and fits on one line.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import dataclasses
import io
import json
import math
import os
import pickle
import pickletools
import re
import reprlib
import struct
import sys
import zipfile
import zlib
from typing import Any, Callable, Dict, List, Tuple

import ml_dtypes
import numpy as np

from sparse_restore.convert.rules import ConversionError

# Limits (see the module docstring; README "Converting the authors' checkpoints" documents them for users).
# Default cap on tensor bytes: AST_B is 65.4M float32 parameters (262 MB) and its training files also hold Adam's
# two moments (~785 MB in all); DRSformer is 33.7M (135 MB). 2 GiB leaves room for both; raise it with max_bytes.
DEFAULT_MAX_BYTES = 2 << 30
EXPANSION_FACTOR = 4           # tensors may take 4x the file (shared/overlapping views) ...
EXPANSION_SLACK = 64 << 20     # ... plus 64 MiB (small broadcast views, tiny files)
MAX_PICKLE_BYTES = 64 << 20    # a full-size AST_B file with optimizer state has a 0.2 MB pickle
PICKLE_BUDGET = 128 << 20      # estimated Python objects one pickle may create (AST_B + Adam: ~5 MB)
MAX_NESTING = 100              # container depth in a pickle (real checkpoints: < 10)
MAX_NDIM = 64                  # numpy's limit
MAX_SAFETENSORS_HEADER = 16 << 20
MAX_JSON_DEPTH = 8             # a safetensors header is 3 deep
_INT64_MAX = (1 << 63) - 1
_READ_CHUNK = 16 << 20

# torch.serialization.MAGIC_NUMBER / PROTOCOL_VERSION of the legacy (pre-zip) format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Legacy typed-storage classes (as pickled: ``torch.FloatStorage`` ...) and the element type they hold.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),  # Raw bytes; the tensor's dtype comes with _rebuild_tensor_v3.
}

# ``torch.<dtype>`` globals (arguments of _rebuild_tensor_v3) that have a numpy equivalent.
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16,
    "short": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}

_FORMAT_NAMES = {"zip": "PyTorch checkpoint", "legacy": "legacy PyTorch checkpoint",
                 "safetensors": ".safetensors file"}


# ----------------------------------------------------------------------------------------------------------------
# Errors and messages.
# ----------------------------------------------------------------------------------------------------------------

class _Refused(Exception):
  """Content we will not load (a disallowed global...); the reader turns it into a ConversionError naming the file."""


class _Corrupt(_Refused):
  """Damaged or inconsistent records (truncated storages, impossible sizes...)."""


class _TooBig(_Refused):
  """Content that would need more memory than the limits allow."""


# Exceptions that damaged content makes the standard library / numpy raise while we parse it (a truncated stream,
# a bad CRC, an int beyond int64, a codec that does not exist...). read_checkpoint turns them into one line.
# MemoryError is not one of them: the limits keep allocations to the file's real data, so it means "too little
# memory for a genuine file" and is left to the caller.
_DAMAGE = (ArithmeticError, AttributeError, EOFError, LookupError, OSError, RuntimeError, TypeError, ValueError,
           pickle.UnpicklingError, struct.error, zipfile.BadZipFile, zlib.error)

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40


def describe(value) -> str:
  """A short one-line repr of file-controlled data (long strings, huge ints and deep nesting are abbreviated)."""
  try:
    return _REPR.repr(value)
  except Exception:  # pylint: disable=broad-except  (e.g. an int too long to print)
    return f"<{type(value).__name__}>"


def _clip(text: str, limit: int = 200) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= limit else text[:limit] + "..."


def _mib(nbytes: int) -> str:
  return f"{nbytes / (1 << 20):,.1f} MiB" if nbytes >= (1 << 20) else f"{nbytes:,} bytes"


# ----------------------------------------------------------------------------------------------------------------
# Limits.
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Limits:
  """The memory limits of one read: ``max_bytes`` and the file's size (for the expansion rule)."""
  max_bytes: int
  file_size: int

  def check(self, tensor_bytes: int, storage_bytes: int, largest: str = "") -> None:
    """Refuses when the tensors (or the storages they are cut from) would take too much memory."""
    need = max(tensor_bytes, storage_bytes)
    what = "tensors" if tensor_bytes >= storage_bytes else "storages"
    if need > self.max_bytes:
      raise _TooBig(f"its {what} take {_mib(need)}, more than the limit of {_mib(self.max_bytes)}; if the file is "
                    "genuine, raise the limit with --max-tensor-bytes (max_bytes=)")
    expansion = EXPANSION_FACTOR * self.file_size + EXPANSION_SLACK
    if need > expansion:
      raise _TooBig(f"its {what} would take {_mib(need)} from a file of {self.file_size:,} bytes (the limit is "
                    f"{EXPANSION_FACTOR}x the file + {_mib(EXPANSION_SLACK)}): stride-0/overlapping views or "
                    f"compressed storages expand the stored data{largest}")


class _Budget:
  """Estimated bytes of Python objects one pickle may create; opcodes and allowed globals are charged to it."""
  __slots__ = ("left",)

  def __init__(self, nbytes: int = PICKLE_BUDGET):
    self.left = nbytes

  def charge(self, nbytes: int, what: Callable[[], str]) -> None:
    """``what()`` (called only on failure) names the opcode, call or header being charged."""
    self.left -= nbytes
    if self.left < 0:
      raise _TooBig(f"{what()} would create more than {_mib(PICKLE_BUDGET)} of Python objects (a checkpoint's "
                    "pickle or header holds only tensor records and small values)")


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins produced while unpickling; turned into numpy arrays once all storages are known.
# ----------------------------------------------------------------------------------------------------------------

class _Frozen:
  """Base of the stand-ins: a pickle cannot set attributes on them (BUILD opcode) or create them (NEWOBJ)."""
  __slots__ = ()

  def __setstate__(self, state):
    raise _Refused("the pickle tries to set the state of a tensor/storage object")

  def __reduce__(self):
    raise TypeError(f"{type(self).__name__} is not picklable")


def _set(obj, **values):
  for name, value in values.items():
    object.__setattr__(obj, name, value)


class _StorageType(_Frozen):
  """What ``torch.FloatStorage`` (etc.) unpickles to: only a name and an element dtype."""
  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype: np.dtype):
    _set(self, name=name, dtype=dtype)


class _Storage(_Frozen):
  """A storage referenced by the pickle (persistent id): ``numel`` elements of ``dtype`` starting ``offset``
  elements into the stored storage ``key`` (legacy storage views; 0 otherwise)."""
  __slots__ = ("key", "dtype", "numel", "offset")

  def __init__(self, key: str, dtype: np.dtype, numel: int, offset: int = 0):
    _set(self, key=key, dtype=dtype, numel=numel, offset=offset)


class _TensorRef(_Frozen):
  """A checked tensor record: ``dtype`` elements at ``offset`` with ``size``/``stride`` (in elements) inside
  ``storage``; ``nbytes`` is the size of the array it becomes."""
  __slots__ = ("storage", "dtype", "offset", "size", "stride", "nbytes")

  def __init__(self, storage, dtype, offset, size, stride, nbytes):
    _set(self, storage=storage, dtype=dtype, offset=offset, size=size, stride=stride, nbytes=nbytes)


class _Marker(_Frozen):
  """A harmless named token (``torch.Tensor``, ``torch.nn.Parameter``, a dtype) the rebuild functions accept."""
  __slots__ = ("name", "value")

  def __init__(self, name: str, value=None):
    _set(self, name=name, value=value)

  def __repr__(self):
    return f"<{self.name}>"


def _count(value, what: str) -> int:
  """A non-negative int that fits int64 (sizes, strides, offsets, element counts)."""
  if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _INT64_MAX:
    raise _Corrupt(f"malformed tensor record: {what} {describe(value)} is not an integer in [0, 2**63)")
  return value


def _int_tuple(value, what: str) -> Tuple[int, ...]:
  if isinstance(value, int) and not isinstance(value, bool):
    value = (value,)
  if not isinstance(value, (tuple, list)) or len(value) > MAX_NDIM:
    raise _Corrupt(f"malformed tensor record: {what} {describe(value)} (at most {MAX_NDIM} dimensions)")
  return tuple(_count(v, what) for v in value)


def _make_ref(storage, dtype: np.dtype, offset, size, stride) -> _TensorRef:
  """The one place every tensor view is checked, with Python ints and before anything is allocated: int64 ranges,
  rank, and that every element it reads lies inside its storage."""
  if not isinstance(storage, _Storage):
    raise _Corrupt("malformed tensor record: no storage")
  if dtype.itemsize == 0:
    raise _Refused(f"unsupported dtype {dtype}")
  offset = _count(offset, "storage offset")
  size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
  if len(size) != len(stride):
    raise _Corrupt(f"malformed tensor record: size {describe(size)} and stride {describe(stride)} differ in rank")
  numel = math.prod(size)
  if math.prod(max(n, 1) for n in size) * dtype.itemsize > _INT64_MAX:
    raise _Corrupt(f"malformed tensor record: size {describe(size)} x {dtype} exceeds int64")
  if numel:
    count = storage.numel * storage.dtype.itemsize // dtype.itemsize  # elements of `dtype` in the storage
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= count:
      raise _Corrupt(f"tensor of size {describe(size)} (stride {describe(stride)}, offset {offset}) reads past the "
                     f"end of its storage ({count} elements)")
  return _TensorRef(storage, dtype, offset, size, stride, numel * dtype.itemsize)


def _check_metadata(metadata):
  if metadata:  # conj/neg bits: lazily conjugated/negated views, never in a plain state dict.
    raise _Refused(f"tensor with unsupported metadata {describe(metadata)} (conjugate/negative view)")


def _rebuild_tensor(storage, storage_offset, size, stride):
  dtype = storage.dtype if isinstance(storage, _Storage) else np.dtype(np.uint8)
  return _make_ref(storage, dtype, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  _check_metadata(metadata)
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  _check_metadata(metadata)
  if not isinstance(dtype, _Marker) or not isinstance(dtype.value, np.dtype):
    raise _Corrupt(f"malformed tensor record: dtype {describe(dtype)}")
  return _make_ref(storage, dtype.value, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  if not isinstance(data, _TensorRef):
    raise _Corrupt("malformed parameter record")
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  return _rebuild_parameter(data)  # Python attributes set on a Parameter are irrelevant to the weights.


_REBUILD_FUNCTIONS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
                      _rebuild_parameter_with_state)
_TENSOR_TYPES = ("torch.Tensor", "torch.nn.parameter.Parameter")


def _rebuild_from_type_v2(func, new_type, args, state):
  """``torch._tensor._rebuild_from_type_v2``: only plain tensors/parameters, rebuilt by one of our functions."""
  if not (isinstance(func, _Global) and func.fn in _REBUILD_FUNCTIONS) or not (
      isinstance(new_type, _Marker) and new_type.name in _TENSOR_TYPES):
    raise _Refused(f"tensor subclass {describe(new_type)} is not supported")
  if not isinstance(args, tuple):
    raise _Corrupt("malformed tensor record")
  return func(*args)


def _torch_size(dims=()):
  return _int_tuple(tuple(dims), "torch.Size")


def _torch_device(*args):
  return ":".join(str(a) for a in args)


def _codecs_encode(text, encoding="utf-8"):
  """``_codecs.encode``: how protocol-2 pickles store ``bytes``; only text -> bytes with a text encoding."""
  if not isinstance(text, str) or not isinstance(encoding, str) or \
      codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
    raise _Refused(f"_codecs.encode with {type(text).__name__}/{describe(encoding)}")
  return codecs.encode(text, encoding)


def _bytearray(source=b"", encoding=None):
  """``bytearray`` as pickles use it (from bytes, or text + encoding); never ``bytearray(n)`` (n zero bytes)."""
  if isinstance(source, str) and isinstance(encoding, str):
    return bytearray(_codecs_encode(source, encoding))
  if isinstance(source, (bytes, bytearray)) and encoding is None:
    return bytearray(source)
  raise _Refused(f"bytearray of {type(source).__name__} (only bytes or text are allowed)")


def _call_cost(args) -> int:
  """Upper estimate of what a call may allocate, from its arguments alone: text and bytes may be copied (text up
  to 4 bytes a character), containers rebuilt with per-entry overhead, and an ``int`` may be a size."""
  cost = 256
  for a in args:
    if isinstance(a, str):
      cost += 4 * len(a)
    elif isinstance(a, (bytes, bytearray)):
      cost += len(a)
    elif isinstance(a, (list, tuple, dict, set, frozenset)):
      cost += 128 * len(a)
    elif isinstance(a, int):
      cost += abs(a)
  return cost


def _record_cost(args) -> int:
  """Tensor records allocate nothing: their ints are sizes checked by ``_make_ref`` and ``_Limits``."""
  del args
  return 256


class _Global(_Frozen):
  """An allowed global as the pickle sees it. Every call goes through here: its cost is estimated from the
  arguments and charged to the load's budget *before* the call, and any exception becomes an error naming it."""
  __slots__ = ("name", "fn", "cost", "budget")

  def __init__(self, name: str, fn: Callable, cost: Callable, budget: _Budget):
    _set(self, name=name, fn=fn, cost=cost, budget=budget)

  def __call__(self, *args, **kwargs):
    try:
      if kwargs:
        raise _Refused(f"{self.name} called with keyword arguments")
      self.budget.charge(self.cost(args), lambda: f"{self.name}{describe(args)}")
      return self.fn(*args)
    except _Refused:
      raise
    except Exception as e:  # pylint: disable=broad-except  (whatever the arguments make it raise)
      raise _Corrupt(f"{self.name}{describe(args)} failed ({type(e).__name__}: {_clip(e, 100)})") from None

  def __repr__(self):
    return f"<{self.name}>"


def _allowed_globals() -> Dict[str, Any]:
  """``module.name`` -> a harmless token (``_Frozen``) or ``(function, cost)`` to wrap in a :class:`_Global`."""
  allowed: Dict[str, Any] = {
      "collections.OrderedDict": (collections.OrderedDict, _call_cost),
      "builtins.set": (set, _call_cost),
      "builtins.frozenset": (frozenset, _call_cost),
      "builtins.complex": (complex, _call_cost),
      "builtins.bytearray": (_bytearray, _call_cost),
      "_codecs.encode": (_codecs_encode, _call_cost),
      "torch.Size": (_torch_size, _call_cost),
      "torch.device": (_torch_device, _call_cost),
      "torch.Tensor": _Marker("torch.Tensor"),
      "torch.nn.parameter.Parameter": _Marker("torch.nn.parameter.Parameter"),
      "torch._tensor._rebuild_from_type_v2": (_rebuild_from_type_v2, _record_cost),
  }
  for f in _REBUILD_FUNCTIONS:
    allowed["torch._utils." + f.__name__] = (f, _record_cost)  # Our stand-ins carry torch's names.
  for name, dtype in _STORAGE_DTYPES.items():
    for module in ("torch", "torch.storage", "torch.cuda"):
      allowed[f"{module}.{name}"] = _StorageType(name, dtype)
  for name, dtype in _TORCH_DTYPES.items():
    allowed[f"torch.{name}"] = _Marker(f"torch.{name}", np.dtype(dtype))
  return allowed


_ALLOWED = _allowed_globals()


def _storage_key(key) -> str:
  if isinstance(key, bytes):
    key = key.decode("ascii")
  elif isinstance(key, int) and not isinstance(key, bool):
    key = str(key)
  if not isinstance(key, str) or not 0 < len(key) <= 256:
    raise _Corrupt(f"malformed storage key {describe(key)}")
  return key


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the globals in ``_ALLOWED`` and records storages instead of loading them."""

  def __init__(self, file, budget: _Budget, legacy: bool = False):
    super().__init__(file, encoding="utf-8")
    self.legacy = legacy
    self.budget = budget
    self.storages: Dict[str, _Storage] = {}
    self._globals: Dict[str, _Global] = {}

  def find_class(self, module, name):
    # Protocol-2 pickles (torch's default) name Python 2 modules ("__builtin__.set"); map them like pickle does.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
      module = _compat_pickle.IMPORT_MAPPING[module]
    full = f"{module}.{name}"
    entry = _ALLOWED.get(full)
    if entry is None:
      raise _Refused(f"the file contains a disallowed global '{_clip(full, 100)}'")
    if isinstance(entry, _Frozen):
      return entry
    if full not in self._globals:
      self._globals[full] = _Global(full, entry[0], entry[1], self.budget)
    return self._globals[full]

  def persistent_load(self, pid):
    """The one place every storage record goes through: type, key and element count checked."""
    if not isinstance(pid, tuple) or not pid:
      raise _Corrupt(f"malformed storage reference {describe(pid)}")
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if typename == "module" and self.legacy:
      raise _Refused("the file pickles a whole nn.Module (with its source code), not a state dict")
    if typename != "storage" or len(pid) != (6 if self.legacy else 5):
      raise _Corrupt(f"malformed storage reference {describe(pid)}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise _Corrupt(f"malformed storage reference {describe(pid)}")
    key = _storage_key(key)
    numel = _count(numel, "storage size")
    dtype = storage_type.dtype
    if numel * dtype.itemsize > _INT64_MAX:
      raise _Corrupt(f"storage {key} of {numel} x {dtype} exceeds int64 bytes")
    known = self.storages.get(key)
    if known is not None and (known.dtype, known.numel) != (dtype, numel):
      raise _Corrupt(f"storage {key} is declared twice ({known.numel} x {known.dtype}, {numel} x {dtype})")
    self.storages[key] = _Storage(key, dtype, numel)
    view = pid[5] if self.legacy else None
    if view is None:
      return self.storages[key]
    if not (isinstance(view, tuple) and len(view) == 3):
      raise _Corrupt(f"malformed storage view {describe(view)}")
    _view_key, offset, view_numel = view
    offset, view_numel = _count(offset, "storage view offset"), _count(view_numel, "storage view size")
    if offset + view_numel > numel:
      raise _Corrupt(f"malformed storage view {describe(view)} of a {numel}-element storage")
    return _Storage(key, dtype, view_numel, offset)


# ----------------------------------------------------------------------------------------------------------------
# Pickles: bounded, pre-scanned, then unpickled.
# ----------------------------------------------------------------------------------------------------------------

_CONTAINER_OPS = frozenset(("EMPTY_DICT", "DICT", "EMPTY_LIST", "LIST", "EMPTY_SET", "FROZENSET", "INST", "OBJ",
                            "NEWOBJ", "NEWOBJ_EX", "REDUCE", "BUILD"))
_PUT_OPS = frozenset(("PUT", "BINPUT", "LONG_BINPUT"))


def _scan_pickle(stream, budget: _Budget) -> None:
  """Walks one pickle opcode by opcode (nothing is built or called) and charges each an upper estimate of the
  memory it makes the unpickler allocate: 64 bytes (256 for containers and calls) plus its argument's bytes, and
  the growth of the memo table, which the C unpickler sizes to twice the largest index it is given."""
  memo_size = 0
  for op, arg, pos in pickletools.genops(stream):
    cost = 256 if op.name in _CONTAINER_OPS else 64
    if isinstance(arg, str):
      cost += 4 * len(arg)
    elif isinstance(arg, (bytes, bytearray)):
      cost += len(arg)
    elif op.name in _PUT_OPS:
      if arg >= memo_size:
        cost += 16 * (arg + 1 - memo_size)
        memo_size = arg + 1
    elif op.name == "MEMOIZE":
      memo_size += 1
    elif isinstance(arg, int):
      cost += arg.bit_length() // 8
    budget.charge(cost, lambda: f"the pickle up to opcode {op.name} at byte {pos}")


class _BoundedFile:
  """What ``pickletools.genops`` reads a pickle inside a larger file through: at most ``limit`` bytes, never past
  the end of the file (so a forged length cannot make it allocate)."""

  def __init__(self, f, limit: int, file_size: int):
    self.f, self.left, self.file_size = f, limit, file_size

  def _too_big(self):
    return _TooBig(f"a pickle in the file is larger than {_mib(MAX_PICKLE_BYTES)}")

  def read(self, n: int = -1) -> bytes:
    available = self.file_size - self.f.tell()
    if n is None or n < 0:
      n = available
    if min(n, available) > self.left:
      raise self._too_big()
    data = self.f.read(min(n, available))
    self.left -= len(data)
    return data

  def readline(self) -> bytes:
    line = self.f.readline(self.left + 1)
    if len(line) > self.left:
      raise self._too_big()
    self.left -= len(line)
    return line

  def tell(self) -> int:
    return self.f.tell()


def _load_pickle(f, budget: _Budget, *, legacy: bool, file_size: int) -> Tuple[Any, _RestrictedUnpickler]:
  """Scans then unpickles the pickle at ``f``'s position (``f`` is left just after it)."""
  start = f.tell()
  _scan_pickle(_BoundedFile(f, MAX_PICKLE_BYTES, file_size), budget)
  f.seek(start)
  unpickler = _RestrictedUnpickler(f, budget, legacy=legacy)
  return unpickler.load(), unpickler


# ----------------------------------------------------------------------------------------------------------------
# Materialising tensors.
# ----------------------------------------------------------------------------------------------------------------

def _collect_tensors(obj) -> List[_TensorRef]:
  """Every tensor record in the loaded object (each once), checking nesting depth and stray stand-ins."""
  refs: List[_TensorRef] = []
  seen = set()
  stack = [(obj, 0)]
  while stack:
    item, depth = stack.pop()
    if depth > MAX_NESTING:
      raise _Corrupt(f"containers nested more than {MAX_NESTING} levels deep")
    if id(item) in seen:
      continue
    if isinstance(item, _TensorRef):
      seen.add(id(item))
      refs.append(item)
    elif isinstance(item, _Frozen):
      raise _Refused(f"the pickle holds a bare {type(item).__name__.strip('_')} object outside a tensor")
    elif isinstance(item, dict):
      seen.add(id(item))
      if any(isinstance(k, _Frozen) for k in item):
        raise _Corrupt("a tensor or storage is used as a dict key")
      stack.extend((v, depth + 1) for v in item.values())
    elif isinstance(item, (list, tuple)):
      seen.add(id(item))
      stack.extend((v, depth + 1) for v in item)
    elif isinstance(item, (set, frozenset)) and any(isinstance(v, _Frozen) for v in item):
      raise _Corrupt("a set holds tensors")
  return refs


def _plan(refs: List[_TensorRef], storages: Dict[str, _Storage], limits: _Limits) -> Dict[str, List[_TensorRef]]:
  """Checks the totals against the limits before any storage is read; groups the tensors by storage."""
  by_key: Dict[str, List[_TensorRef]] = {}
  for ref in refs:
    by_key.setdefault(ref.storage.key, []).append(ref)
  tensor_bytes = sum(ref.nbytes for ref in refs)
  storage_bytes = sum(storages[k].numel * storages[k].dtype.itemsize for k in by_key)
  largest = ""
  if refs:
    big = max(refs, key=lambda r: r.nbytes)
    largest = (f" (largest tensor: size {describe(big.size)}, stride {describe(big.stride)}, from a storage of "
               f"{big.storage.numel * big.storage.dtype.itemsize:,} bytes)")
  limits.check(tensor_bytes, storage_bytes, largest)
  return by_key


def _read_exact(f, nbytes: int, where: str) -> np.ndarray:
  """``nbytes`` from ``f`` into a fresh uint8 array, in chunks (a short stream is an error, not a short array)."""
  buf = np.empty(nbytes, np.uint8)
  view = memoryview(buf)
  pos = 0
  while pos < nbytes:
    got = f.readinto(view[pos:pos + _READ_CHUNK])
    if not got:
      raise _Corrupt(f"{where} holds {pos} bytes, the file declares {nbytes} (truncated?)")
    pos += got
  return buf


def _cut(ref: _TensorRef, raw: np.ndarray, byteorder: str) -> np.ndarray:
  """Copies ``ref`` out of its storage's raw bytes (bounds were checked by ``_make_ref``) in native byte order."""
  dtype = ref.dtype
  if ref.nbytes == 0:
    return np.zeros(ref.size, dtype)
  itemsize = dtype.itemsize
  start = ref.storage.offset * ref.storage.dtype.itemsize
  data = raw[start:start + ref.storage.numel * ref.storage.dtype.itemsize]
  elements = data[:data.size // itemsize * itemsize].view(dtype)
  # A dimension of size 1 never moves along its stride, whatever (possibly huge) value was saved.
  strides = tuple(0 if n == 1 else s * itemsize for n, s in zip(ref.size, ref.stride))
  view = np.lib.stride_tricks.as_strided(elements[ref.offset:], shape=ref.size, strides=strides, writeable=False)
  out = np.array(view, dtype=dtype, copy=True, order="C")
  if itemsize > 1 and byteorder != sys.byteorder:
    out.byteswap(inplace=True)
  return out


def _is_whole(ref: _TensorRef, storage: _Storage) -> bool:
  """Whether ``ref`` is all of ``storage`` in C order (a typical saved parameter): its array can be the buffer the
  storage was read into, without a copy."""
  if ref.offset or ref.storage.offset or ref.nbytes != storage.numel * storage.dtype.itemsize:
    return False
  expected = 1
  for n, s in zip(reversed(ref.size), reversed(ref.stride)):
    if n != 1 and s != expected:
      return False
    expected *= n
  return True


def _materialise(obj, arrays: Dict[int, np.ndarray], memo: Dict[int, Any], depth: int = 0):
  """Replaces every tensor record inside plain containers by its array (shared tensors stay shared)."""
  key = id(obj)
  if key in memo:
    return memo[key]
  if depth > MAX_NESTING:
    raise _Corrupt(f"containers nested more than {MAX_NESTING} levels deep")
  if isinstance(obj, _TensorRef):
    out = arrays[key]
  elif isinstance(obj, dict):
    out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else dict()
    memo[key] = out
    for k, v in obj.items():
      out[k] = _materialise(v, arrays, memo, depth + 1)
    return out
  elif isinstance(obj, list):
    out = []
    memo[key] = out
    out.extend(_materialise(v, arrays, memo, depth + 1) for v in obj)
    return out
  elif isinstance(obj, tuple):
    out = tuple(_materialise(v, arrays, memo, depth + 1) for v in obj)
  else:
    out = obj  # numbers, strings, bytes, None, sets of those (_collect_tensors refused everything else)
  memo[key] = out
  return out


def _build(obj, storages: Dict[str, _Storage], limits: _Limits, check_storage: Callable[[_Storage], None],
           read_storage: Callable[[_Storage], np.ndarray], byteorder: str):
  """Checks every tensor and the totals, then reads one storage at a time and cuts its tensors out of it."""
  refs = _collect_tensors(obj)
  by_key = _plan(refs, storages, limits)
  for key in by_key:
    check_storage(storages[key])  # every storage is present and large enough before any is read
  arrays: Dict[int, np.ndarray] = {}
  for key, key_refs in by_key.items():
    raw = read_storage(storages[key])
    if len(key_refs) == 1 and _is_whole(key_refs[0], storages[key]) and key_refs[0].nbytes:
      ref = key_refs[0]  # no copy: saves a storage-sized buffer and ~25% of the read time
      arrays[id(ref)] = raw.view(ref.dtype).reshape(ref.size)
      if ref.dtype.itemsize > 1 and byteorder != sys.byteorder:
        arrays[id(ref)].byteswap(inplace=True)
    else:
      for ref in key_refs:
        arrays[id(ref)] = _cut(ref, raw, byteorder)
    del raw
  return _materialise(obj, arrays, {})


# ----------------------------------------------------------------------------------------------------------------
# File formats.
# ----------------------------------------------------------------------------------------------------------------

def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int) -> np.ndarray:
  """The first ``nbytes`` of a zip member; inflation stops there, whatever the member holds after them."""
  with zf.open(info) as f:
    return _read_exact(f, nbytes, info.filename)


def _read_zip(path: str, limits: _Limits) -> Any:
  with zipfile.ZipFile(path) as zf:
    infos = {i.filename: i for i in zf.infolist()}
    names = list(infos)
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if any(n.endswith("constants.pkl") for n in names) or any("/code/" in n for n in names):
      raise ConversionError(f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; save the model's "
                            "state_dict() with torch.save instead")
    if len(pickles) != 1:
      raise ConversionError(f"{path}: a zip archive but not a PyTorch checkpoint (expected one */data.pkl, "
                            f"found {len(pickles)})")
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in infos:
      info = infos[prefix + "byteorder"]
      byteorder = _read_member(zf, info, min(info.file_size, 16)).tobytes().decode("ascii").strip()
      if byteorder not in ("little", "big"):
        raise _Corrupt(f"unknown byte order {describe(byteorder)}")
    info = infos[pickles[0]]
    if info.file_size > MAX_PICKLE_BYTES:
      raise _TooBig(f"{info.filename} declares {info.file_size:,} bytes, more than {_mib(MAX_PICKLE_BYTES)}")
    data = _read_member(zf, info, info.file_size).tobytes()
    budget = _Budget()
    _scan_pickle(data, budget)
    unpickler = _RestrictedUnpickler(io.BytesIO(data), budget)
    obj = unpickler.load()
    del data

    def member(storage: _Storage) -> zipfile.ZipInfo:
      name = f"{prefix}data/{storage.key}"
      if name not in infos:
        raise _Corrupt(f"storage {name} is missing from the archive")
      need = storage.numel * storage.dtype.itemsize
      if infos[name].file_size < need:
        raise _Corrupt(f"{name} holds {infos[name].file_size} bytes, the pickle expects {need} "
                       f"({storage.numel} x {storage.dtype})")
      return infos[name]

    def read(storage: _Storage) -> np.ndarray:
      return _read_member(zf, member(storage), storage.numel * storage.dtype.itemsize)

    return _build(obj, unpickler.storages, limits, member, read, byteorder)


def _read_legacy(path: str, limits: _Limits) -> Any:
  size = limits.file_size
  budget = _Budget()
  with open(path, "rb") as f:
    magic, _ = _load_pickle(f, budget, legacy=True, file_size=size)
    if magic != _LEGACY_MAGIC:
      raise ConversionError(f"{path}: not a PyTorch checkpoint (a pickle without torch's magic number)")
    protocol, _ = _load_pickle(f, budget, legacy=True, file_size=size)
    if protocol != _LEGACY_PROTOCOL:
      raise ConversionError(f"{path}: legacy PyTorch checkpoint with unknown protocol {describe(protocol)}")
    sys_info, _ = _load_pickle(f, budget, legacy=True, file_size=size)
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    obj, unpickler = _load_pickle(f, budget, legacy=True, file_size=size)
    keys, _ = _load_pickle(f, budget, legacy=True, file_size=size)
    if not isinstance(keys, list):
      raise _Corrupt("malformed storage key list")
    # The storages follow one another, each as an int64 element count and the raw elements: locate them all.
    order = "<" if little else ">"
    where: Dict[str, int] = {}
    pos = f.tell()
    for key in keys:
      key = _storage_key(key)
      storage = unpickler.storages.get(key)
      if storage is None:
        raise _Corrupt(f"storage {key} is not referenced by the pickle")
      f.seek(pos)
      head = f.read(8)
      if len(head) != 8:
        raise _Corrupt("the file ends inside the storages (truncated?)")
      (numel,) = struct.unpack(order + "q", head)
      if numel != storage.numel:
        raise _Corrupt(f"storage {key} has {numel} elements, the pickle expects {storage.numel}")
      nbytes = numel * storage.dtype.itemsize
      if pos + 8 + nbytes > size:
        raise _Corrupt(f"storage {key} needs {nbytes} bytes, the file has {size - pos - 8} left (truncated?)")
      where[key] = pos + 8
      pos += 8 + nbytes
    missing = set(unpickler.storages) - set(where)
    if missing:
      raise _Corrupt(f"storages {describe(sorted(missing))} have no data")

    def read(storage: _Storage) -> np.ndarray:
      f.seek(where[storage.key])
      return _read_exact(f, storage.numel * storage.dtype.itemsize, f"storage {storage.key}")

    return _build(obj, unpickler.storages, limits, lambda s: None, read, "little" if little else "big")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _parse_header(raw: bytes, budget: _Budget):
  """``json.loads`` of a safetensors header after checking, without recursion, that it nests at most
  :data:`MAX_JSON_DEPTH` levels and does not describe more objects than the budget allows."""
  skeleton = _JSON_STRING.sub(b'""', raw)
  budget.charge(4 * len(raw) + 256 * sum(skeleton.count(c) for c in (b"{", b"[", b",")), lambda: "the JSON header")
  brackets = skeleton.translate(None, _NOT_BRACKETS)
  for _ in range(MAX_JSON_DEPTH):  # each round removes the innermost level of brackets
    brackets = _JSON_INNERMOST.sub(b"", brackets)
  if brackets:
    raise _Corrupt(f"the JSON header nests deeper than {MAX_JSON_DEPTH} levels or is unbalanced")
  return json.loads(raw)


def _safetensors_layout(header, data_size: int) -> List[Tuple[str, np.dtype, Tuple[int, ...], int, int]]:
  """``(name, dtype, shape, begin, end)`` per tensor, checked: known dtype, int64 shape, offsets that match the
  shape and tile the data section exactly (no overlap, no gap, nothing past the end)."""
  if not isinstance(header, dict):
    raise _Corrupt("the header is not a JSON object")
  entries = []
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    label = f"tensor {describe(name)}"
    if not isinstance(spec, dict) or spec.get("dtype") not in _SAFETENSORS_DTYPES:
      raise _Corrupt(f"{label}: unsupported entry {describe(spec)}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]])
    shape = spec.get("shape")
    if not isinstance(shape, list):
      raise _Corrupt(f"{label}: shape {describe(shape)} is not a list")
    shape = _int_tuple(shape, f"{label} shape")
    offsets = spec.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2):
      raise _Corrupt(f"{label}: data_offsets {describe(offsets)} is not [begin, end]")
    begin, end = (_count(v, f"{label} data offset") for v in offsets)
    if not begin <= end <= data_size or end - begin != math.prod(shape) * dtype.itemsize:
      raise _Corrupt(f"{label}: data offsets {begin}..{end} do not fit shape {describe(shape)} x {dtype} in "
                     f"{data_size} bytes of data (file truncated?)")
    entries.append((name, dtype, shape, begin, end))
  covered = 0
  for name, _, _, begin, end in sorted(entries, key=lambda e: (e[3], e[4])):
    if begin != covered:
      raise _Corrupt(f"tensor {describe(name)} starts at byte {begin} of the data, expected {covered} (tensors "
                     "overlap or leave a gap)")
    covered = end
  if covered != data_size:
    raise _Corrupt(f"the tensors cover {covered} bytes of data, the file holds {data_size} (truncated?)")
  return entries


def _read_safetensors(path: str, limits: _Limits) -> Dict[str, np.ndarray]:
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) != 8:
      raise _Corrupt("the file ends inside the header length")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_SAFETENSORS_HEADER or 8 + n > limits.file_size:
      raise _Corrupt(f"a header of {n:,} bytes does not fit (file of {limits.file_size:,} bytes, headers are at "
                     f"most {_mib(MAX_SAFETENSORS_HEADER)})")
    header = _parse_header(f.read(n), _Budget())
    data_size = limits.file_size - 8 - n
    entries = _safetensors_layout(header, data_size)
    limits.check(data_size, data_size)
    out = {}
    for name, dtype, shape, begin, end in entries:
      f.seek(8 + n + begin)
      arr = _read_exact(f, end - begin, f"tensor {describe(name)}").view(dtype).reshape(shape)
      if dtype.itemsize > 1 and sys.byteorder != "little":
        arr.byteswap(inplace=True)
      out[name] = arr
  return out


def detect_format(path: str) -> str:
  """``"zip"`` (torch >= 1.6), ``"legacy"`` (older torch.save), ``"safetensors"``; ConversionError otherwise."""
  try:
    with open(path, "rb") as f:
      head = f.read(16)
  except OSError as e:
    raise ConversionError(f"{path}: cannot read ({e.strerror or e})") from None
  if head[:4] == b"PK\x03\x04" or (head[:4] == b"PK\x05\x06"):
    return "zip"
  if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < (100 << 20):
    return "safetensors"
  if head[:1] == b"\x80" and len(head) > 2:
    return "legacy"
  if not head:
    raise ConversionError(f"{path}: empty file, not a checkpoint")
  raise ConversionError(f"{path}: not a PyTorch checkpoint (.pth/.pt zip or legacy) or .safetensors file "
                        f"(unrecognised first bytes {head[:8]!r})")


def _refusal(path: str, fmt: str, e: _Refused) -> ConversionError:
  msg = _clip(e, 400)
  if isinstance(e, _Corrupt):
    kind = "corrupt .safetensors file" if fmt == "safetensors" else f"corrupt or truncated {_FORMAT_NAMES[fmt]}"
    return ConversionError(f"{path}: {kind} ({msg}). Nothing from the file was executed.")
  if "disallowed global" in msg:
    return ConversionError(
        f"{path}: refusing to load: {msg}; only tensors and plain containers are allowed in a checkpoint. "
        "Nothing from the file was executed. If you trust the file, re-save just its state_dict "
        "(torch.save(model.state_dict(), ...)) and convert that.")
  return ConversionError(f"{path}: refusing to load: {msg}. Nothing from the file was executed.")


def read_checkpoint(path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
  """Everything stored in a checkpoint file, tensors as numpy arrays; never runs code from the file.

  Returns the saved object (usually a dict) for PyTorch files, and ``{name: array}`` for ``.safetensors``.
  ``max_bytes`` caps the memory the tensors (and the storages they are cut from) may take; see the module
  docstring for the other limits. Raises :class:`ConversionError` (one line starting with the path) for anything
  unreadable, disallowed or over a limit.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  fmt = detect_format(path)
  read = {"zip": _read_zip, "legacy": _read_legacy, "safetensors": _read_safetensors}[fmt]
  try:
    return read(path, _Limits(int(max_bytes), os.path.getsize(path)))
  except ConversionError:
    raise
  except _Refused as e:
    raise _refusal(path, fmt, e) from None
  except RecursionError as e:  # cannot happen with the depth checks above; kept so that it is never a traceback
    raise ConversionError(f"{path}: corrupt {_FORMAT_NAMES[fmt]} (nested too deeply: {e})") from None
  except _DAMAGE as e:
    hint = ("; re-save it with a recent torch (torch.save(torch.load(f), g)) if this persists"
            if fmt == "legacy" else "")
    kind = "corrupt .safetensors file" if fmt == "safetensors" else f"corrupt or truncated {_FORMAT_NAMES[fmt]}"
    raise ConversionError(f"{path}: {kind} ({type(e).__name__}: {_clip(e)}){hint}") from None


_ML_FLOATS = tuple(np.dtype(t) for t in (ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2,
                                          ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2fnuz))


def is_floating(array: np.ndarray) -> bool:
  """True for numpy floats and the ml_dtypes ones (bfloat16, float8)."""
  return np.issubdtype(array.dtype, np.floating) or array.dtype in _ML_FLOATS


def to_float32(array: np.ndarray) -> np.ndarray:
  """Floating arrays (incl. bfloat16/float16/float64) as float32 (exact except for float64); others unchanged."""
  if array.dtype != np.float32 and is_floating(array):
    return array.astype(np.float32)
  return array
