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
* ``.safetensors``: through ``safetensors.numpy`` (plus a small header reader for bfloat16, which that API lacks).

Values come back as they were saved: dicts/OrderedDicts/lists/tuples, numbers, strings, ``None`` and tensors as
numpy arrays of the saved dtype (bfloat16 as ``ml_dtypes.bfloat16``; :func:`to_float32` widens it exactly).
Every failure (unknown format, truncated or corrupt file, disallowed content) is a :class:`ConversionError` whose
message starts with the file name.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any, Dict

import ml_dtypes
import numpy as np

from sparse_restore.convert.rules import ConversionError

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

_SAFETENSORS_BF16 = "BF16"


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


class _StorageType(_Frozen):
  """What ``torch.FloatStorage`` (etc.) unpickles to: only a name and an element dtype."""
  __slots__ = ("name", "dtype")

  def __init__(self, name: str, dtype: np.dtype):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "dtype", dtype)


class _Storage(_Frozen):
  """A storage referenced by the pickle (persistent id); ``offset`` is in elements (legacy storage views)."""
  __slots__ = ("key", "dtype", "numel", "offset")

  def __init__(self, key: str, dtype: np.dtype, numel: int, offset: int = 0):
    for name, value in (("key", key), ("dtype", dtype), ("numel", numel), ("offset", offset)):
      object.__setattr__(self, name, value)


class _TensorRef(_Frozen):
  """A tensor to cut out of a storage: ``dtype`` elements at ``offset`` with ``size``/``stride`` (in elements)."""
  __slots__ = ("storage", "dtype", "offset", "size", "stride")

  def __init__(self, storage: _Storage, dtype: np.dtype, offset: int, size, stride):
    for name, value in (("storage", storage), ("dtype", dtype), ("offset", offset), ("size", size),
                        ("stride", stride)):
      object.__setattr__(self, name, value)


class _Marker(_Frozen):
  """A harmless named token (``torch.Tensor``, ``torch.nn.Parameter``, a dtype) the rebuild functions accept."""
  __slots__ = ("name", "value")

  def __init__(self, name: str, value=None):
    object.__setattr__(self, "name", name)
    object.__setattr__(self, "value", value)

  def __repr__(self):
    return f"<{self.name}>"


class _Refused(Exception):
  """Content we will not load (a disallowed global...); the reader turns it into a ConversionError naming the file."""


class _Corrupt(_Refused):
  """Damaged or inconsistent records (truncated storages, impossible sizes...)."""


def _int_tuple(value, what: str):
  if isinstance(value, int) and not isinstance(value, bool):
    return (value,)
  if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
    raise _Corrupt(f"malformed tensor record: {what} is {value!r}")
  return tuple(value)


def _check_offset(offset) -> int:
  if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
    raise _Corrupt(f"malformed tensor record: storage offset {offset!r}")
  return offset


def _check_metadata(metadata):
  if metadata:  # conj/neg bits: lazily conjugated/negated views, never in a plain state dict.
    raise _Refused(f"tensor with unsupported metadata {metadata!r} (conjugate/negative view)")


def _rebuild_tensor(storage, storage_offset, size, stride):
  if not isinstance(storage, _Storage):
    raise _Corrupt("malformed tensor record: no storage")
  return _TensorRef(storage, storage.dtype, _check_offset(storage_offset), _int_tuple(size, "size"),
                    _int_tuple(stride, "stride"))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  _check_metadata(metadata)
  return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
  _check_metadata(metadata)
  if not isinstance(storage, _Storage):
    raise _Corrupt("malformed tensor record: no storage")
  if not isinstance(dtype, _Marker) or not isinstance(dtype.value, np.dtype):
    raise _Corrupt(f"malformed tensor record: dtype {dtype!r}")
  return _TensorRef(storage, dtype.value, _check_offset(storage_offset), _int_tuple(size, "size"),
                    _int_tuple(stride, "stride"))


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
  if func not in _REBUILD_FUNCTIONS or not (isinstance(new_type, _Marker) and new_type.name in _TENSOR_TYPES):
    raise _Refused(f"tensor subclass {new_type!r} is not supported")
  if not isinstance(args, tuple):
    raise _Corrupt("malformed tensor record")
  return func(*args)


def _torch_size(dims=()):
  return _int_tuple(tuple(dims), "torch.Size")


def _torch_device(*args):
  return ":".join(str(a) for a in args)


def _codecs_encode(text, encoding="utf-8"):
  """``_codecs.encode``: how protocol-2 pickles store ``bytes``; only text -> bytes with a text encoding."""
  if not isinstance(text, str) or codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
    raise _Refused(f"_codecs.encode with {type(text).__name__}/{encoding!r}")
  return codecs.encode(text, encoding)


def _allowed_globals() -> Dict[str, Any]:
  allowed: Dict[str, Any] = {
      "collections.OrderedDict": collections.OrderedDict,
      "builtins.set": set,
      "builtins.frozenset": frozenset,
      "builtins.complex": complex,
      "builtins.bytearray": bytearray,
      "_codecs.encode": _codecs_encode,
      "torch.Size": _torch_size,
      "torch.device": _torch_device,
      "torch.Tensor": _Marker("torch.Tensor"),
      "torch.nn.parameter.Parameter": _Marker("torch.nn.parameter.Parameter"),
      "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
  }
  for f in _REBUILD_FUNCTIONS:
    allowed["torch._utils." + f.__name__] = f  # Our stand-ins carry torch's names.
  for name, dtype in _STORAGE_DTYPES.items():
    for module in ("torch", "torch.storage", "torch.cuda"):
      allowed[f"{module}.{name}"] = _StorageType(name, dtype)
  for name, dtype in _TORCH_DTYPES.items():
    allowed[f"torch.{name}"] = _Marker(f"torch.{name}", np.dtype(dtype))
  return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the globals in ``_ALLOWED`` and records storages instead of loading them."""

  def __init__(self, file, legacy: bool = False):
    super().__init__(file, encoding="utf-8")
    self.legacy = legacy
    self.storages: Dict[str, _Storage] = {}

  def find_class(self, module, name):
    # Protocol-2 pickles (torch's default) name Python 2 modules ("__builtin__.set"); map them like pickle does.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
      module = _compat_pickle.IMPORT_MAPPING[module]
    full = f"{module}.{name}"
    try:
      return _ALLOWED[full]
    except KeyError:
      raise _Refused(f"the file contains a disallowed global '{full}'") from None

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid:
      raise _Corrupt(f"malformed storage reference {pid!r}")
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if typename == "module" and self.legacy:
      raise _Refused("the file pickles a whole nn.Module (with its source code), not a state dict")
    if typename != "storage" or len(pid) != (6 if self.legacy else 5):
      raise _Corrupt(f"malformed storage reference {pid!r}")
    storage_type, key, _location, numel = pid[1:5]
    if not isinstance(storage_type, _StorageType):
      raise _Corrupt(f"malformed storage reference {pid!r}")
    key = key.decode("ascii") if isinstance(key, bytes) else str(key)
    if not isinstance(numel, int) or numel < 0:
      raise _Corrupt(f"malformed storage size {numel!r}")
    dtype = storage_type.dtype
    known = self.storages.get(key)
    if known is not None and known.dtype != dtype:
      raise _Corrupt(f"storage {key} is used with two dtypes ({known.dtype}, {dtype})")
    self.storages[key] = _Storage(key, dtype, numel)
    view = pid[5] if self.legacy else None
    if view is None:
      return self.storages[key]
    if not (isinstance(view, tuple) and len(view) == 3):
      raise _Corrupt(f"malformed storage view {view!r}")
    _view_key, offset, view_numel = view
    if not (isinstance(offset, int) and isinstance(view_numel, int) and 0 <= offset and offset + view_numel <= numel):
      raise _Corrupt(f"malformed storage view {view!r}")
    return _Storage(key, dtype, view_numel, offset)


# ----------------------------------------------------------------------------------------------------------------
# Materialising tensors.
# ----------------------------------------------------------------------------------------------------------------

def _tensor_to_array(ref: _TensorRef, raw: Dict[str, np.ndarray]) -> np.ndarray:
  """Cuts ``ref`` out of its storage (a 1-d array of the storage dtype), checking every bound."""
  base = raw[ref.storage.key]  # 1-d, storage dtype, native byte order
  dtype = np.dtype(ref.dtype)
  data = base.view(np.uint8)
  if dtype.itemsize == 0:
    raise _Refused(f"unsupported dtype {dtype}")
  start = ref.storage.offset * base.dtype.itemsize
  data = data[start:]
  count = data.size // dtype.itemsize
  elements = data[:count * dtype.itemsize].view(dtype)
  size, stride = ref.size, ref.stride
  if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise _Corrupt(f"malformed tensor record: size {size}, stride {stride}")
  if any(s == 0 for s in size):
    return np.zeros(size, dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= count:
    raise _Corrupt(f"tensor of size {size} (stride {stride}, offset {ref.offset}) reads past the end of its "
                   f"storage ({count} elements)")
  view = np.lib.stride_tricks.as_strided(elements[ref.offset:], shape=size,
                                         strides=tuple(s * dtype.itemsize for s in stride), writeable=False)
  return np.array(view, dtype=dtype, copy=True, order="C")


def _materialise(obj, raw: Dict[str, np.ndarray], memo: Dict[int, Any]):
  """Replaces every tensor stand-in inside plain containers by its array (shared tensors stay shared)."""
  key = id(obj)
  if key in memo:
    return memo[key]
  if isinstance(obj, _TensorRef):
    out = _tensor_to_array(obj, raw)
  elif isinstance(obj, _Frozen):
    raise _Refused(f"the pickle holds a bare {type(obj).__name__.strip('_')} object outside a tensor")
  elif isinstance(obj, dict):
    out = type(obj)() if type(obj) in (dict, collections.OrderedDict) else dict()
    memo[key] = out
    for k, v in obj.items():
      out[k] = _materialise(v, raw, memo)
    return out
  elif isinstance(obj, list):
    out = []
    memo[key] = out
    out.extend(_materialise(v, raw, memo) for v in obj)
    return out
  elif isinstance(obj, tuple):
    out = tuple(_materialise(v, raw, memo) for v in obj)
  elif isinstance(obj, (set, frozenset)) and any(isinstance(v, _Frozen) for v in obj):
    raise _Corrupt("a set holds tensors")
  else:
    out = obj  # numbers, strings, bytes, None, sets of those
  memo[key] = out
  return out


def _storage_array(payload: bytes, storage: _Storage, byteorder: str, where: str) -> np.ndarray:
  dtype = storage.dtype.newbyteorder("<" if byteorder == "little" else ">") if storage.dtype.itemsize > 1 \
      else storage.dtype
  need = storage.numel * dtype.itemsize
  if len(payload) < need:
    raise _Corrupt(f"{where} holds {len(payload)} bytes, the pickle expects {need} ({storage.numel} x {dtype})")
  arr = np.frombuffer(payload, dtype=dtype, count=storage.numel)
  if not dtype.isnative:
    arr = arr.astype(dtype.newbyteorder("="))
  return arr


# ----------------------------------------------------------------------------------------------------------------
# File formats.
# ----------------------------------------------------------------------------------------------------------------

def _read_zip(path: str) -> Any:
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, ValueError) as e:
    raise ConversionError(f"{path}: corrupt or truncated PyTorch checkpoint (zip archive unreadable: {e})") from None
  with zf:
    names = zf.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if any(n.endswith("constants.pkl") for n in names) or any("/code/" in n for n in names):
      raise ConversionError(f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint; save the model's "
                            "state_dict() with torch.save instead")
    if len(pickles) != 1:
      raise ConversionError(f"{path}: a zip archive but not a PyTorch checkpoint (expected one */data.pkl, "
                            f"found {len(pickles)})")
    prefix = pickles[0][:-len("data.pkl")]
    try:
      byteorder = "little"
      if prefix + "byteorder" in names:
        byteorder = zf.read(prefix + "byteorder").decode("ascii").strip()
        if byteorder not in ("little", "big"):
          raise _Corrupt(f"unknown byte order {byteorder!r}")
      unpickler = _RestrictedUnpickler(io.BytesIO(zf.read(pickles[0])))
      obj = unpickler.load()
      raw = {}
      for key, storage in unpickler.storages.items():
        member = f"{prefix}data/{key}"
        if member not in names:
          raise _Corrupt(f"storage {member} is missing from the archive")
        raw[key] = _storage_array(zf.read(member), storage, byteorder, member)
      return _materialise(obj, raw, {})
    except _Refused as e:
      raise _refusal(path, e) from None
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError, KeyError,
            IndexError, AttributeError, UnicodeDecodeError, RecursionError, MemoryError) as e:
      raise ConversionError(f"{path}: corrupt or truncated PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _read_legacy(path: str) -> Any:
  try:
    with open(path, "rb") as f:
      header = _RestrictedUnpickler(f, legacy=True)
      magic = header.load()
      if magic != _LEGACY_MAGIC:
        raise ConversionError(f"{path}: not a PyTorch checkpoint (a pickle without torch's magic number)")
      protocol = header.load()
      if protocol != _LEGACY_PROTOCOL:
        raise ConversionError(f"{path}: legacy PyTorch checkpoint with unknown protocol {protocol!r}")
      sys_info = header.load()
      little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
      unpickler = _RestrictedUnpickler(f, legacy=True)
      obj = unpickler.load()
      keys = _RestrictedUnpickler(f, legacy=True).load()
      if not isinstance(keys, list):
        raise _Corrupt("malformed storage key list")
      raw = {}
      order = "<" if little else ">"
      for key in keys:
        key = str(key)
        storage = unpickler.storages.get(key)
        if storage is None:
          raise _Corrupt(f"storage {key} is not referenced by the pickle")
        head = f.read(8)
        if len(head) != 8:
          raise EOFError("file ends inside the storages")
        (numel,) = struct.unpack(order + "q", head)
        if numel != storage.numel:
          raise _Corrupt(f"storage {key} has {numel} elements, the pickle expects {storage.numel}")
        payload = f.read(numel * storage.dtype.itemsize)
        raw[key] = _storage_array(payload, storage, "little" if little else "big", f"storage {key}")
      missing = set(unpickler.storages) - set(raw)
      if missing:
        raise _Corrupt(f"storages {sorted(missing)} have no data")
      return _materialise(obj, raw, {})
  except _Refused as e:
    raise _refusal(path, e) from None
  except ConversionError:
    raise
  except (EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError, KeyError, IndexError,
          AttributeError, UnicodeDecodeError, RecursionError, MemoryError, struct.error) as e:
    raise ConversionError(f"{path}: corrupt or truncated legacy PyTorch checkpoint ({type(e).__name__}: {e}); "
                          "re-save it with a recent torch (torch.save(torch.load(f), g)) if this persists") from None


def _refusal(path: str, e: _Refused) -> ConversionError:
  msg = str(e)
  if isinstance(e, _Corrupt):
    return ConversionError(f"{path}: corrupt or truncated PyTorch checkpoint ({msg}). Nothing from the file was "
                           "executed.")
  if "disallowed global" in msg:
    return ConversionError(
        f"{path}: refusing to load: {msg}; only tensors and plain containers are allowed in a checkpoint. "
        "Nothing from the file was executed. If you trust the file, re-save just its state_dict "
        "(torch.save(model.state_dict(), ...)) and convert that.")
  return ConversionError(f"{path}: refusing to load: {msg}. Nothing from the file was executed.")


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      (n,) = struct.unpack("<Q", head)
      header = json.loads(f.read(n))
    dtypes = {v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
  except (OSError, struct.error, ValueError, AttributeError) as e:
    raise ConversionError(f"{path}: corrupt .safetensors file (header unreadable: {e})") from None
  try:
    if _SAFETENSORS_BF16 in dtypes:
      return _read_safetensors_raw(path, header, n)
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    return {k: np.array(v) for k, v in safetensors.numpy.load_file(path).items()}
  except ConversionError:
    raise
  except Exception as e:  # safetensors raises its own SafetensorError for every kind of damage.
    raise ConversionError(f"{path}: corrupt or unsupported .safetensors file ({type(e).__name__}: {e})") from None


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


def _read_safetensors_raw(path: str, header: dict, n: int) -> Dict[str, np.ndarray]:
  """Minimal reader for the safetensors layout (used for bfloat16, which ``safetensors.numpy`` rejects)."""
  with open(path, "rb") as f:
    f.seek(8 + n)
    data = f.read()
  out = {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    if spec["dtype"] not in _SAFETENSORS_DTYPES:
      raise ConversionError(f"{path}: tensor {name} has unsupported dtype {spec['dtype']}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[spec["dtype"]]).newbyteorder("<")
    begin, end = spec["data_offsets"]
    shape = tuple(spec["shape"])
    if not 0 <= begin <= end <= len(data) or end - begin != int(np.prod(shape)) * dtype.itemsize:
      raise ConversionError(f"{path}: tensor {name}: data offsets {begin}..{end} do not fit shape {shape} "
                            f"x {dtype} (file truncated?)")
    out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
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


def read_checkpoint(path) -> Any:
  """Everything stored in a checkpoint file, tensors as numpy arrays; never runs code from the file.

  Returns the saved object (usually a dict) for PyTorch files, and ``{name: array}`` for ``.safetensors``.
  Raises :class:`ConversionError` (message starting with the path) for anything unreadable or disallowed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError(f"{path}: no such file")
  fmt = detect_format(path)
  if fmt == "zip":
    return _read_zip(path)
  if fmt == "safetensors":
    return _read_safetensors(path)
  return _read_legacy(path)


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

