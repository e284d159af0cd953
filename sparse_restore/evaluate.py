"""Scores a folder of restored images against a folder of ground truths with the papers' MATLAB protocols.

    python -m sparse_restore.evaluate --results out/Rain200H --targets data/Rain200H/test/target \\
        --protocol restormer [--channel y|rgb] [--csv scores.csv] [--json scores.json]

Files are paired by name stem (``1.png`` pairs with ``1.jpg``). Unpaired files, ambiguous stems, pairs of
different sizes, images too small for SSIM (its 11x11 Gaussian window must fit, after the ``rcdnet`` protocol's
downsampling) and pairs of a grayscale and a colour image are listed in one error (exit status 1, nothing
scored). Grayscale against colour is refused rather than scored: a gray file is read as three equal channels,
so its "Y" would be ``16 + 219/255 * gray`` against the colour file's true luma, a silently wrong number. Convert
one of the two so that both are colour (or both gray: two grayscale files are scored on their replicated gray
values, like any RGB pair). Per-image PSNR/SSIM and the mean are
printed; ``--csv`` / ``--json`` also write them to those paths (nothing is written unless asked, and a path
that is an input image or has an image extension is refused). Scores use the float64 NumPy reference of
:mod:`sparse_restore.metrics` on the exact 8-bit pixel values (:func:`sparse_restore.imageio.read_uint8_rgb`).

Exit status: 0 scored, 1 bad data (unpaired / mismatched / unreadable files), 2 bad usage (arguments, a
report path that is an image).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

from sparse_restore import imageio
from sparse_restore import metrics


class EvaluationError(ValueError):
  """The folders cannot be scored as they are (unpaired files, size mismatches, unreadable images)."""


class UsageError(EvaluationError):
  """A folder or command-line choice is unusable (missing folder, a report path that is an image)."""


def _by_stem(folder: str, extensions: Sequence[str]):
  paths = imageio.list_images(folder, extensions)
  table: Dict[str, List[str]] = {}
  for p in paths:
    table.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(p)
  return table


def pair_folders(results_dir: str, targets_dir: str,
                 extensions: Sequence[str] = imageio.IMAGE_EXTENSIONS) -> List[Dict[str, str]]:
  """Pairs images of two folders by file stem, in natural order; raises :class:`EvaluationError` listing
  every unpaired or ambiguous file."""
  for d, what in ((results_dir, "results"), (targets_dir, "targets")):
    if not os.path.isdir(d):
      raise UsageError(f"{what} folder {d}: not a directory")
  res = _by_stem(results_dir, extensions)
  tgt = _by_stem(targets_dir, extensions)
  problems = []
  for table in (res, tgt):
    for stem, paths in table.items():
      if len(paths) > 1:
        problems.append(f"ambiguous name {stem!r}: " + ", ".join(paths))
  only_res = sorted(set(res) - set(tgt), key=imageio.natural_key)
  only_tgt = sorted(set(tgt) - set(res), key=imageio.natural_key)
  if only_res:
    problems.append(f"{len(only_res)} result(s) without a target in {targets_dir}: "
                    + ", ".join(res[s][0] for s in only_res))
  if only_tgt:
    problems.append(f"{len(only_tgt)} target(s) without a result in {results_dir}: "
                    + ", ".join(tgt[s][0] for s in only_tgt))
  if not res and not tgt:
    problems.append(f"no images in {results_dir} or {targets_dir}")
  if problems:
    raise EvaluationError("cannot pair the folders:\n  " + "\n  ".join(problems))
  stems = sorted(res, key=imageio.natural_key)
  return [{"name": s, "result": res[s][0], "target": tgt[s][0]} for s in stems]


def ssim_size_problem(height: int, width: int, protocol: str) -> Optional[str]:
  """Why SSIM cannot score an image of ``height`` x ``width`` under ``protocol`` (None: it can): its Gaussian
  window must fit in the image, after the downsampling of the ``rcdnet`` protocol."""
  window = metrics.gaussian_window_1d().size
  f = metrics.rcdnet_downsample_factor(height, width) if protocol == "rcdnet" else 1
  h, w = -(-height // f), -(-width // f)
  if min(h, w) >= window:
    return None
  after = f" ({h}x{w} after the protocol's {f}x downsampling)" if f > 1 else ""
  return f"is {height}x{width}{after}: SSIM needs at least {window}x{window} pixels (its Gaussian window)"


def evaluate_pairs(pairs: Sequence[Dict[str, str]], protocol: str = "restormer", channel: str = "y",
                   progress: bool = False) -> List[Dict]:
  """Scores ``[{"name", "result", "target"}, ...]``; returns records with ``height``, ``width``, ``psnr``,
  ``ssim`` added. Sizes (equal, large enough for SSIM) and colour (both gray or both colour) are checked for
  every pair before anything is scored."""
  if protocol not in metrics.PROTOCOLS or channel not in metrics.CHANNELS:
    raise ValueError(f"protocol must be one of {metrics.PROTOCOLS} and channel one of {metrics.CHANNELS}")
  problems, sizes = [], []
  for p in pairs:
    try:
      sr, st = imageio.image_size(p["result"]), imageio.image_size(p["target"])
      gray_r, gray_t = imageio.is_grayscale(p["result"]), imageio.is_grayscale(p["target"])
    except imageio.ImageReadError as e:
      problems.append(str(e))
      continue
    if sr != st:
      problems.append(f"size mismatch: {p['result']} is {sr[0]}x{sr[1]}, {p['target']} is {st[0]}x{st[1]}")
    else:
      small = ssim_size_problem(sr[0], sr[1], protocol)
      if small:
        problems.append(f"too small: {p['result']} and {p['target']} {small}")
    if gray_r != gray_t:
      gray, colour = (p["result"], p["target"]) if gray_r else (p["target"], p["result"])
      problems.append(f"grayscale vs colour: {gray} is grayscale, {colour} is colour; refusing to score a gray "
                      "image against a colour one (convert one so that both are colour or both gray)")
    sizes.append(sr)
  if problems:
    raise EvaluationError("cannot score:\n  " + "\n  ".join(problems))
  from sparse_restore import console
  bar = console.Progress(len(pairs), desc="scoring", unit="images", enabled=progress, leave=False)
  records = []
  for p, (h, w) in zip(pairs, sizes):
    try:
      a = imageio.read_uint8_rgb(p["result"])
      b = imageio.read_uint8_rgb(p["target"])
    except imageio.ImageReadError as e:
      raise EvaluationError(f"cannot score: {e}") from None
    if a.shape != b.shape:  # Header and pixels disagree only for odd files; still refuse.
      raise EvaluationError(f"cannot score: size mismatch between {p['result']} {a.shape} and "
                            f"{p['target']} {b.shape}")
    try:
      ps, ss = metrics.psnr_ssim(a, b, protocol, channel)
    except ValueError as e:  # what the checks above should already have caught
      raise EvaluationError(f"cannot score {p['result']} against {p['target']}: {e}") from None
    records.append(dict(p, height=int(h), width=int(w), psnr=ps, ssim=ss))
    bar.set_postfix(p["name"])
    bar.update()
  bar.close()
  return records


def evaluate_folders(results_dir: str, targets_dir: str, protocol: str = "restormer", channel: str = "y",
                     extensions: Sequence[str] = imageio.IMAGE_EXTENSIONS, progress: bool = False) -> List[Dict]:
  """Pairs two folders by stem and scores every pair; returns one record per image:
  ``{"name", "result", "target", "height", "width", "psnr", "ssim"}`` (PSNR in dB, ``inf`` when identical).
  Raises :class:`EvaluationError` for unpaired files, mismatched sizes or unreadable images."""
  return evaluate_pairs(pair_folders(results_dir, targets_dir, extensions), protocol, channel, progress)


def _fmt(v: float, digits: int) -> str:
  return "inf" if math.isinf(v) else f"{v:.{digits}f}"


def format_table(records: Sequence[Dict], protocol: str, channel: str) -> str:
  """Per-image lines and the mean, aligned for a terminal."""
  width = max([len("mean")] + [len(r["name"]) for r in records])
  lines = [f"{'image':<{width}}  {'PSNR (dB)':>10}  {'SSIM':>8}"]
  for r in records:
    lines.append(f"{r['name']:<{width}}  {_fmt(r['psnr'], 6):>10}  {_fmt(r['ssim'], 6):>8}")
  m = metrics.summarize(records)
  lines.append(f"{'mean':<{width}}  {_fmt(m['psnr'], 6):>10}  {_fmt(m['ssim'], 6):>8}"
               f"   ({m['count']} images, protocol {protocol}, channel {channel})")
  return "\n".join(lines)


def _jsonable_number(v: float):
  return v if math.isfinite(v) else ("inf" if v > 0 else ("-inf" if v < 0 else "nan"))


def write_csv(path: str, records: Sequence[Dict]) -> None:
  """CSV with one row per image (name, result, target, height, width, psnr, ssim) and a final ``mean`` row."""
  m = metrics.summarize(records)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["name", "result", "target", "height", "width", "psnr", "ssim"])
    for r in records:
      w.writerow([r["name"], r["result"], r["target"], r["height"], r["width"],
                  _fmt(r["psnr"], 6), _fmt(r["ssim"], 6)])
    w.writerow(["mean", "", "", "", "", _fmt(m["psnr"], 6), _fmt(m["ssim"], 6)])


def write_json(path: str, records: Sequence[Dict], *, protocol: str, channel: str, results_dir: str,
               targets_dir: str) -> None:
  """JSON with the settings, the mean and every record (non-finite numbers written as strings "inf")."""
  m = metrics.summarize(records)
  doc = {
      "protocol": protocol, "channel": channel,
      "results_dir": os.path.abspath(results_dir), "targets_dir": os.path.abspath(targets_dir),
      "count": m["count"], "mean": {"psnr": _jsonable_number(m["psnr"]), "ssim": _jsonable_number(m["ssim"])},
      "images": [dict(r, psnr=_jsonable_number(r["psnr"]), ssim=_jsonable_number(r["ssim"])) for r in records],
  }
  with open(path, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")


def _check_report_path(path: Optional[str], inputs: Sequence[str], flag: str) -> None:
  if path is None:
    return
  if os.path.splitext(path)[1].lower() in imageio.IMAGE_EXTENSIONS:
    raise UsageError(f"{flag} {path}: has an image extension; refusing to write a report there")
  try:
    imageio.check_no_overwrite([path], inputs)
  except imageio.ImageWriteError as e:
    raise UsageError(f"{flag}: {e}") from None
  if os.path.isdir(path):
    raise UsageError(f"{flag} {path}: is a directory")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m sparse_restore.evaluate",
      description="PSNR/SSIM of restored images against ground truth, as the deraining papers' MATLAB "
                  "scripts compute them. Files are paired by name stem. A grayscale image paired with a colour "
                  "one is an error (not scored): convert one of them. Images must be at least 11x11 pixels "
                  "(SSIM's window; after rcdnet's downsampling).")
  p.add_argument("--results", required=True, help="folder of restored images")
  p.add_argument("--targets", required=True, help="folder of ground-truth images")
  p.add_argument("--protocol", required=True, choices=metrics.PROTOCOLS,
                 help="restormer: Rain200L/H, SPA-Data (rounded uint8 Y); rcdnet: DID/DDN (unrounded Y, "
                      "SSIM with automatic downsampling); basicsr: unrounded Y, no downsampling")
  p.add_argument("--channel", default="y", choices=metrics.CHANNELS,
                 help="y (default, what the papers report) or rgb (PSNR over all channels, SSIM averaged "
                      "over channels)")
  p.add_argument("--csv", help="also write per-image scores and the mean to this CSV file")
  p.add_argument("--json", help="also write per-image scores and the mean to this JSON file")
  p.add_argument("--quiet", action="store_true", help="print only the mean line (no progress)")
  p.add_argument("-v", "--verbose", action="store_true",
                 help="also show other libraries' log lines (hidden by default)")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  from sparse_restore import console
  console.setup(verbose=args.verbose)
  try:
    pairs = pair_folders(args.results, args.targets)
    inputs = [p["result"] for p in pairs] + [p["target"] for p in pairs]
    _check_report_path(args.csv, inputs, "--csv")
    _check_report_path(args.json, inputs, "--json")
    if not args.quiet:
      console.say(f"scoring {console.plural(len(pairs), 'pair')} ({args.protocol} protocol, channel "
                  f"{args.channel}) ...")
    records = evaluate_pairs(pairs, args.protocol, args.channel, progress=not args.quiet)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except EvaluationError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  table = format_table(records, args.protocol, args.channel)
  print(table.splitlines()[-1] if args.quiet else table)
  try:
    if args.csv:
      write_csv(args.csv, records)
      print(f"wrote {args.csv}")
    if args.json:
      write_json(args.json, records, protocol=args.protocol, channel=args.channel,
                 results_dir=args.results, targets_dir=args.targets)
      print(f"wrote {args.json}")
  except OSError as e:
    print(f"error: cannot write report: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
