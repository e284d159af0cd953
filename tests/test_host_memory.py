"""``host_memory.keep_freed_memory``: glibc keeps freed blocks for reuse, so repeated large allocations (an XLA:CPU
program's temporary buffer each step) stop page-faulting; opt-out by environment variable."""
import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the allocator settings are glibc-specific (no-op elsewhere)")

# mallocs, writes and frees a 256 MB block five times; reports the page faults of the last four rounds.
_PROBE = r"""
import ctypes, json, resource
from sparse_restore import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 256 * 1024 * 1024
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "is_applied": host_memory.is_applied(), "faults": faults[1:]}))
"""


def _probe(env_extra, script=_PROBE):
  import os
  env = dict(os.environ, **env_extra)
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_memory_is_reused_without_page_faults():
  result = _probe({"SPARSE_RESTORE_SYSTEM_MALLOC": ""})
  assert result["applied"] and result["is_applied"]
  # 256 MB is 65536 pages of 4 KiB; a reused block faults (almost) none of them.
  assert max(result["faults"]) < 2000, result


def test_opt_out_keeps_the_system_allocator():
  result = _probe({"SPARSE_RESTORE_SYSTEM_MALLOC": "1"})
  assert not result["applied"] and not result["is_applied"]
  # The default glibc allocator maps a fresh block every round: every page faults again.
  assert min(result["faults"]) > 30000, result


def test_memory_kept_for_reuse_counts_as_available():
  """After a large block is freed, the OS's available memory drops by what malloc keeps, and
  ``restore.available_memory_bytes`` adds it back (what the restore memory check compares against)."""
  probe = r"""
import ctypes, json
from sparse_restore import host_memory, restore
host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
before = host_memory.retained_free_bytes()
size = 512 * 1024 * 1024
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.free(block)
print(json.dumps({"before": before, "after": host_memory.retained_free_bytes(),
                  "available": restore.available_memory_bytes()}))
"""
  result = _probe({"SPARSE_RESTORE_SYSTEM_MALLOC": ""}, probe)
  assert result["after"] - result["before"] >= 512 * 1024 * 1024 * 0.99, result
  assert result["available"] >= result["after"], result
