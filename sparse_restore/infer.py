"""Restores images with an exported model or a training workdir.

    python -m sparse_restore.infer --checkpoint exports/drsformer_rain200h --input photos/ --output restored/ \\
        [--tile 512 --tile-overlap 32] [--ensemble] [--batch 4] [--dtype float32|bfloat16]

Each input (one file, or every image directly inside a folder, in natural order) is read with
:func:`sparse_restore.imageio.read_image` (any format; gray, alpha, 16-bit and EXIF rotation handled), restored
by :func:`sparse_restore.restore.restore_image` and written as an 8-bit PNG named after the input's stem into
``--output``. Inputs are never overwritten: an output path that is an input file is refused before anything
runs, and so is an output folder that cannot be created or written into (checked with a probe file before the
model is loaded). A file that cannot be read (or does not fit in memory) is reported by name and skipped.
Restored files get the usual permissions (``0666 & ~umask``).

Progress goes to stderr: a bar on a terminal, otherwise a plain line at least every ~10 s (a log file stays
readable); other libraries' log lines are hidden unless ``-v``/``--verbose`` is given.

Without ``--tile`` the whole image goes through the network at once (the published protocol). The memory the
compiled network needs is checked against the free memory first; if it does not fit (or the run reports
out-of-memory) the image fails with a message suggesting ``--tile 512``.

Exit status: 0 all images restored, 1 some image failed, 2 bad usage (arguments, checkpoint, input/output).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m sparse_restore.infer",
      description="Restore images with a sparse_restore model (exported model directory or training workdir).")
  p.add_argument("--checkpoint", required=True,
                 help="exported model directory (model.json + params/) or training workdir (latest step)")
  p.add_argument("--step", type=int, default=None, help="training workdir only: restore this step")
  p.add_argument("--input", required=True, help="an image file or a folder of images")
  p.add_argument("--output", required=True, help="folder for the restored PNGs (created)")
  p.add_argument("--tile", type=int, default=None,
                 help="restore in square tiles of this size to bound memory; rounded up to the network's size "
                      "multiple (8 for DRSformer, 128 for the released AST models) and shrunk to the image where "
                      "that is smaller; default: whole images")
  p.add_argument("--tile-overlap", type=int, default=32,
                 help="overlap of neighbouring tiles in pixels, blended smoothly (default 32); also rounded up to "
                      "the network's size multiple, so every tile starts on its down-sampling grid (AST: 32 "
                      "becomes 128). The line printed at the start says what was asked and what is used")
  p.add_argument("--ensemble", action="store_true",
                 help="8-way self-ensemble (flips and rotations, averaged); 8x slower")
  p.add_argument("--batch", type=int, default=4, help="tiles (or ensemble transforms) per network call (default 4)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="compute dtype (params stay float32; default float32)")
  p.add_argument("--no-memory-check", action="store_true",
                 help="skip the pre-run memory estimate (a too-large image may then be killed by the OS)")
  p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
  p.add_argument("--compilation-cache", default="", metavar="DIR|none",
                 help="persistent compilation cache folder (default: ~/.cache/sparse_restore/jax; "
                      "$JAX_COMPILATION_CACHE_DIR wins when set)")
  p.add_argument("-v", "--verbose", action="store_true",
                 help="also show the log lines of JAX, Orbax and the other libraries (hidden by default)")
  return p


def _usage_error(msg: str) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return 2


def collect_inputs(path: str) -> List[str]:
  """The image files to restore: ``path`` itself, or the images directly inside the folder ``path``."""
  from sparse_restore import imageio
  if os.path.isdir(path):
    return imageio.list_images(path)
  if os.path.isfile(path):
    return [path]
  raise FileNotFoundError(f"{path}: no such file or directory")


def output_paths(inputs: Sequence[str], output_dir: str) -> List[str]:
  """``output_dir/<stem>.png`` for every input; raises ValueError listing stems used by several inputs."""
  seen = {}
  for p in inputs:
    seen.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(p)
  dups = {s: ps for s, ps in seen.items() if len(ps) > 1}
  if dups:
    raise ValueError("several inputs would be written to the same output name: "
                     + "; ".join(f"{s}.png <- {', '.join(ps)}" for s, ps in dups.items()))
  return [os.path.join(output_dir, os.path.splitext(os.path.basename(p))[0] + ".png") for p in inputs]


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  from sparse_restore import console
  console.setup(verbose=args.verbose)  # before JAX starts
  if args.tile is not None and args.tile <= 0:
    return _usage_error(f"--tile must be positive, got {args.tile}")
  if args.tile_overlap < 0:
    return _usage_error(f"--tile-overlap must be >= 0, got {args.tile_overlap}")
  if args.batch <= 0:
    return _usage_error(f"--batch must be positive, got {args.batch}")

  from sparse_restore import imageio
  try:
    inputs = collect_inputs(args.input)
  except (FileNotFoundError, imageio.ImageReadError) as e:
    return _usage_error(str(e))
  if not inputs:
    return _usage_error(f"{args.input}: no images (extensions {', '.join(imageio.IMAGE_EXTENSIONS)})")
  try:
    outputs = output_paths(inputs, args.output)
    imageio.check_no_overwrite(outputs, inputs)
  except (ValueError, imageio.ImageWriteError) as e:
    return _usage_error(f"{e} (choose another --output)")
  if os.path.exists(args.output) and not os.path.isdir(args.output):
    return _usage_error(f"--output {args.output}: exists and is not a directory")
  created = not os.path.isdir(args.output)
  try:  # Before anything is loaded or computed: a folder we cannot write into is a usage error.
    imageio.prepare_output_dir(args.output)
  except imageio.ImageWriteError as e:
    return _usage_error(f"--output {e}")

  def give_up(msg: str) -> int:
    if created:  # Leave no empty output folder behind a failed start.
      try:
        os.rmdir(args.output)
      except OSError:
        pass
    return _usage_error(msg)

  from sparse_restore import compile_cache
  # On before anything compiles; said after the model loaded, so that a failed start stays one error line.
  cache = compile_cache.enable(args.compilation_cache, default=compile_cache.user_cache_dir(), announce=False)
  import jax
  import jax.numpy as jnp
  from sparse_restore import checkpoint, restore
  try:
    module, params, info = checkpoint.load_model(args.checkpoint, step=args.step)
  except (checkpoint.CheckpointError, ValueError) as e:
    return give_up(str(e))
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
  apply_fn = restore.make_apply_fn(module, params, dtype)
  multiple = restore.model_multiple(module)
  if args.tile is not None:
    try:
      restore.plan_tiles(args.tile * 2, args.tile * 2, multiple, args.tile, args.tile_overlap)
    except ValueError as e:
      return give_up(str(e))

  mode = (f"tiles {console.tiling(args.tile, args.tile_overlap, multiple)} batch {args.batch}" if args.tile
          else "whole images")
  print(f"model {info['arch']} from {args.checkpoint}{' step ' + str(info['step']) if 'step' in info else ''}; "
        f"{len(inputs)} image(s); {mode}{'; 8x ensemble' if args.ensemble else ''}; {args.dtype} on "
        f"{jax.devices()[0].platform} (the first image of each size compiles the network)", file=sys.stderr)
  print(compile_cache.announcement(cache), file=sys.stderr)

  show = not args.quiet
  failures = []
  t0 = time.time()
  bar = console.Progress(len(inputs), desc="restoring", unit="images", enabled=show)
  for src, dst in zip(inputs, outputs):
    name = os.path.basename(src)
    bar.set_postfix(name)
    try:
      img = imageio.read_image(src)
    except imageio.ImageReadError as e:
      failures.append(str(e))  # The message starts with the file name.
      bar.write(f"skipped: {failures[-1]}")
      bar.update(1)
      continue
    h, w = img.shape[:2]
    plan = restore.plan_tiles(h, w, multiple, args.tile, args.tile_overlap)
    inner = None
    if show and plan.count > 1:
      inner = console.Progress(plan.count, desc=f"{name} ({w}x{h})", unit="tiles", leave=False)
    try:
      out = restore.restore_image(apply_fn, img, multiple=multiple, tile=args.tile, overlap=args.tile_overlap,
                                  batch=args.batch, ensemble=args.ensemble,
                                  check_memory=not args.no_memory_check,
                                  progress=inner.update if inner else None)
      imageio.write_png(dst, out)
    except restore.InsufficientMemoryError as e:
      failures.append(f"{src}: {e}")
      bar.write(f"failed: {failures[-1]}")
    except imageio.ImageWriteError as e:
      failures.append(str(e))
      bar.write(f"failed: {failures[-1]}")
    except Exception as e:  # Anything else about this image: report it, keep going with the others.
      first = str(e).strip().splitlines()[0] if str(e).strip() else ""
      failures.append(f"{src}: {type(e).__name__}: {first}")
      bar.write(f"failed: {failures[-1]}")
    finally:
      if inner is not None:
        inner.close()
    bar.update(1)
  bar.close()
  done = len(inputs) - len(failures)
  print(f"restored {done}/{len(inputs)} image(s) into {args.output} in {time.time() - t0:.1f} s", file=sys.stderr)
  if failures:
    print(f"{len(failures)} failed:", file=sys.stderr)
    for f in failures:
      print(f"  {f}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
