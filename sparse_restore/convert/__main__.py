"""Command line: convert a PyTorch DRSformer / AST checkpoint into a sparse_restore model export.

    python -m sparse_restore.convert --input DRSformer_Rain200H.pth --output exports/rain200h
    python -m sparse_restore.convert --arch ast --input model_best.pth --output exports/ast --verify

Exit status: 0 converted, 1 the checkpoint cannot be converted (one ``error: <file>: <problem>`` line on stderr,
never a traceback), 2 bad command line.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional

from sparse_restore.convert.engine import ARCHES, CONTAINER_KEYS
from sparse_restore.convert.reader import DEFAULT_MAX_BYTES

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def _byte_size(text: str) -> int:
  """``123456``, ``512M``, ``2G``, ``1.5GiB``... (K/M/G/T are powers of 1024)."""
  m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
  if not m:
    raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 2G, 512M or 1073741824")
  value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
  return value


def build_parser() -> argparse.ArgumentParser:
  """The argument parser (also used to print the usage in the docs)."""
  p = argparse.ArgumentParser(
      prog="python -m sparse_restore.convert",
      description="Convert a PyTorch DRSformer or AST checkpoint (.pth/.pt or .safetensors) into a sparse_restore "
                  "model export (model.json + Orbax params) that infer/evaluate/train load. The file is read "
                  "without executing any code from it, every tensor is checked against the Flax model, and "
                  "nothing is written unless all of them match.",
      epilog="Exit status: 0 converted, 1 the checkpoint cannot be converted, 2 bad command line.")
  p.add_argument("--arch", choices=ARCHES, default=None,
                 help="network architecture (default: guessed from the checkpoint's keys)")
  p.add_argument("--input", "-i", required=True, metavar="FILE",
                 help="PyTorch checkpoint (.pth/.pt, zip or legacy format) or .safetensors file")
  p.add_argument("--output", "-o", required=True, metavar="DIR", help="export directory to create")
  p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists and is not empty")
  p.add_argument("--key", default=None, metavar="NAME",
                 help="checkpoint entry holding the state dict (default: the first of "
                      f"{', '.join(CONTAINER_KEYS)}, or the file itself if it is a bare state dict)")
  p.add_argument("--verify", action="store_true",
                 help="check the converted weights numerically before writing (per-layer against "
                      "torch.nn.functional when torch is installed, a forward pass, a re-read of the export)")
  p.add_argument("--verify-npz", default=None, metavar="FILE",
                 help="reference 'input'/'output' arrays (NCHW) produced by the PyTorch model with these "
                      "weights; the converted model must match them to 1e-5 relative (implies --verify)")
  p.add_argument("--verify-size", type=_positive, default=64, metavar="N",
                 help="side of the random image for the --verify forward pass (default: 64)")
  p.add_argument("--max-tensor-bytes", type=_byte_size, default=DEFAULT_MAX_BYTES, metavar="SIZE",
                 help="refuse checkpoints whose tensors would take more memory than SIZE, e.g. 4G (default: "
                      f"{DEFAULT_MAX_BYTES >> 30}G; DRSformer is 135 MB, AST_B 262 MB, ~785 MB with its Adam state). "
                      "Independently, tensors may take at most 4x the file's size + 64 MiB, so a small or "
                      "compressed file cannot expand into a large allocation")
  p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
  p.add_argument("--verbose", "-v", action="store_true",
                 help="also show the log lines of JAX, Orbax and the other libraries (hidden by default)")
  return p


def main(argv: Optional[List[str]] = None) -> int:
  """Runs the converter; returns the exit status."""
  args = build_parser().parse_args(argv)  # exits with status 2 on usage errors
  from sparse_restore import console  # pylint: disable=g-import-not-at-top
  console.setup(verbose=args.verbose)  # before JAX and Orbax start
  from sparse_restore.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from sparse_restore.convert.engine import convert_checkpoint  # pylint: disable=g-import-not-at-top
  from sparse_restore.convert.rules import ConversionError  # pylint: disable=g-import-not-at-top
  # The one place where every failure of the reader/engine becomes `error: <file>: <problem>` and exit status 1.
  try:
    convert_checkpoint(args.input, args.output, args.arch, overwrite=args.overwrite, verify=args.verify,
                       verify_npz=args.verify_npz, verify_size=args.verify_size, key=args.key,
                       max_tensor_bytes=args.max_tensor_bytes, log=None if args.quiet else print)
  except (ConversionError, CheckpointError) as e:  # messages start with the file or directory they are about
    print(f"error: {e}", file=sys.stderr)
    return 1
  except MemoryError:
    print(f"error: {args.input}: out of memory while converting", file=sys.stderr)
    return 1
  except Exception as e:  # pylint: disable=broad-except  (last resort: a failure nobody anticipated, not a traceback)
    detail = " ".join(str(e).split())[:300]
    print(f"error: {args.input}: conversion failed unexpectedly ({type(e).__name__}: {detail}); please report "
          "this with the file", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
