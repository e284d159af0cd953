"""Runs a model over a dataset's eval split and scores it: the training job's periodic evaluation
(:func:`evaluate`) and ``main.py --mode evaluate`` (:func:`evaluate_checkpoint`). Scoring folders of images that
already exist is the other tool, ``python -m sparse_restore.evaluate``.

For each image of ``data_config``'s eval split: the network runs on the full image (reflect-padded to its size
multiple and cropped back by :func:`sparse_restore.restore.restore_image`; tiles only if asked), the output is
clamped and rounded to 8 bits exactly as a saved PNG, and PSNR/SSIM are computed against the 8-bit target with
the protocol and channel of the dataset definition (``sparse_restore.datasets.get_spec(name)``: 'restormer' Y for
Rain200L/H and SPA, 'rcdnet' Y for DID/DDN, ...) using the NumPy reference of :mod:`sparse_restore.metrics`.
The rainy input is scored the same way, as a baseline.

Output in ``out_dir``: ``images/<name>.png`` (restored, what the scoring protocol reads), ``compare/<name>.png``
(degraded input | restored | clean target side by side, to look at), ``metrics.csv`` (one row per image) and
``metrics.json`` (means, protocol, per-image values).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np
from absl import logging

from sparse_restore import metrics


SEPARATOR_PX = 4  # white columns between the panels of a comparison strip


def comparison_strip(degraded: np.ndarray, restored: np.ndarray, clean: np.ndarray,
                     separator: int = SEPARATOR_PX) -> np.ndarray:
  """``degraded | restored | clean`` side by side as one uint8 HxWx3 image, with ``separator`` white columns
  between them (float inputs are taken as [0, 1], rounded like a saved PNG)."""
  from sparse_restore import imageio
  panels = [imageio.to_uint8(np.asarray(p)) for p in (degraded, restored, clean)]
  h = panels[0].shape[0]
  gap = np.full((h, separator, panels[0].shape[2]), 255, np.uint8)
  return np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)


@dataclasses.dataclass
class EvalResult:
  """Per-image records, their means (``summary``) and a few degraded|restored|clean strips (uint8, the same as
  ``compare/``) for TensorBoard."""
  summary: Dict[str, Any]
  records: List[Dict[str, Any]]
  samples: Dict[str, np.ndarray]
  out_dir: str

  @property
  def compare_dir(self) -> str:
    """Folder of the side-by-side images (written when images are saved)."""
    return os.path.join(self.out_dir, "compare")

  def describe(self) -> str:
    """One line: mean PSNR/SSIM of the restored and of the degraded images."""
    s = self.summary
    step = "" if s.get("step") is None else f"step {s['step']}: "
    return (f"{step}{s['dataset']}/{s['split']} ({s['count']} images, {s['protocol']} protocol, "
            f"{s['channel'].upper()}): restored PSNR {s['psnr']:.2f} dB / SSIM {s['ssim']:.4f}; "
            f"degraded input PSNR {s['input_psnr']:.2f} dB / SSIM {s['input_ssim']:.4f} "
            f"(gain {s['psnr'] - s['input_psnr']:+.2f} dB)")


def protocol_of(data_config) -> Dict[str, str]:
  """Protocol and channel of the dataset named by ``data_config.name`` (its definition decides)."""
  from sparse_restore import datasets
  spec = datasets.get_spec(data_config.name)
  return {"protocol": spec.protocol, "channel": spec.channel}


def evaluate(module, params, data_config, out_dir: str, *, split: Optional[str] = None,
             max_images: Optional[int] = None, save_images: bool = True, tile: int = 0, tile_overlap: int = 32,
             num_samples: int = 0, step: Optional[int] = None, source: Optional[str] = None,
             apply_fn=None) -> EvalResult:
  """Evaluates ``module`` with ``params`` on the eval split of ``data_config`` and writes the results.

  Args:
    module, params: the network (float32 for published numbers) and its parameters (host or device arrays).
    data_config: the ``config.data`` block (name, data_dir, eval_split, ...).
    out_dir: where ``images/``, ``metrics.csv`` and ``metrics.json`` go (created).
    split: split to evaluate (default ``data_config.eval_split``).
    max_images: only the first N images (None: all).
    save_images: write the restored PNGs (``images/``) and the side-by-side comparisons (``compare/``).
    tile, tile_overlap: 0 = whole images (the published protocol); otherwise tiled inference (both are rounded
      up to the network's size multiple; the console line says so).
    num_samples: how many degraded|restored|clean strips to return for TensorBoard.
    step, source: recorded in ``metrics.json``.
    apply_fn: a ready :func:`sparse_restore.restore.make_apply_fn` of ``module`` and ``params`` to reuse (its
      compiled executables) across evaluations; built here when None.
  """
  from sparse_restore import console, imageio, input_pipeline, restore

  split = split or data_config.get("eval_split", "test")
  proto = protocol_of(data_config)
  protocol, channel = proto["protocol"], proto["channel"]
  os.makedirs(out_dir, exist_ok=True)
  image_dir = os.path.join(out_dir, "images")
  compare_dir = os.path.join(out_dir, "compare")
  if save_images:
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(compare_dir, exist_ok=True)
  if apply_fn is None:
    apply_fn = restore.make_apply_fn(module, params)  # float32, one executable per image shape
  multiple = restore.model_multiple(module)

  records, samples = [], {}
  t0 = time.time()
  examples = input_pipeline.eval_dataset(data_config, split=split, max_images=max_images)
  how = "whole images"
  if tile:
    how = "tiles " + console.tiling(tile, tile_overlap, multiple)
  console.say(f"evaluating {console.plural(len(examples), 'image')} of {data_config.name}/{split} ({how}; "
              "the first image of each size compiles the network) ...")
  progress = console.Progress(len(examples), desc="evaluating", unit="images", leave=False)
  for example in examples:
    name = str(example["name"])
    inp = np.asarray(example["input"], np.float32)
    target8 = imageio.to_uint8(example["target"])
    out = restore.restore_image(apply_fn, inp, multiple=multiple, tile=tile or None, overlap=tile_overlap)
    out = np.asarray(out)
    out8 = imageio.to_uint8(out)  # exactly what the saved PNG holds
    psnr, ssim = metrics.psnr_ssim(out8, target8, protocol, channel)
    in_psnr, in_ssim = metrics.psnr_ssim(imageio.to_uint8(inp), target8, protocol, channel)
    records.append({"name": name, "psnr": psnr, "ssim": ssim, "input_psnr": in_psnr, "input_ssim": in_ssim,
                    "height": int(inp.shape[0]), "width": int(inp.shape[1])})
    strip = None
    if save_images:
      imageio.write_png(os.path.join(image_dir, _safe_name(name) + ".png"), out8)
      strip = comparison_strip(inp, out8, target8)
      imageio.write_png(os.path.join(compare_dir, _safe_name(name) + ".png"), strip)
    if len(samples) < num_samples:
      samples[f"{len(samples)}_{_safe_name(name)}"] = (strip if strip is not None
                                                      else comparison_strip(inp, out8, target8))
    progress.update()
  progress.close()
  if not records:
    raise ValueError(f"{data_config.name}/{split}: the eval split has no images")

  summary = metrics.summarize(records)
  base = metrics.summarize([{"psnr": r["input_psnr"], "ssim": r["input_ssim"]} for r in records])
  summary.update(input_psnr=base["psnr"], input_ssim=base["ssim"], protocol=protocol, channel=channel,
                 dataset=data_config.name, split=split, step=step, seconds=round(time.time() - t0, 3))
  if source:
    summary["source"] = source
  if tile:
    summary.update(tile=int(tile), tile_overlap=int(tile_overlap))
  _write_results(out_dir, summary, records)
  result = EvalResult(summary=summary, records=records, samples=samples, out_dir=out_dir)
  logging.info("Evaluation -> %s: %s", out_dir, result.describe())
  console.say(f"evaluated {console.plural(len(records), 'image')} in {console.duration(time.time() - t0)}")
  return result


def prepare_data(data_config) -> None:
  """Builds the dataset of ``data_config`` if needed (process 0 first, see
  :func:`sparse_restore.input_pipeline.prepare_on_all_processes`), saying so on the console: the first run of the
  demo generates its data, a real dataset is converted from its folders once."""
  import jax
  from sparse_restore import console, input_pipeline
  built = input_pipeline.is_prepared(data_config)
  main_process = jax.process_index() == 0
  if not built and main_process:
    console.say(f"building the {data_config.name} dataset in {data_config.data_dir} (first run only; later runs "
                "reuse it) ...")
  t0 = time.time()
  with console.library_output():
    input_pipeline.prepare_on_all_processes(data_config)
  if not built and main_process:
    console.say(f"built in {console.duration(time.time() - t0)}")


def evaluate_checkpoint(config, workdir: str, *, checkpoint_path: Optional[str] = None,
                        step: Optional[int] = None):
  """Evaluates a model on ``config.data``'s eval split with the dataset's protocol (full images).

  The model is ``checkpoint_path`` (an exported/converted model or a training workdir) if given, else the newest
  (or ``step``) checkpoint of ``workdir``, else ``config.init_from``. Results go to ``<workdir>/eval/<step>/``
  (``eval/pretrained/`` for an exported model). ``data_dir`` '' means ``<workdir>/tfds``, as in training. Returns
  the :class:`EvalResult` (process 0; None on the others).
  """
  import jax
  from sparse_restore import checkpoint, config_checks, input_pipeline
  config_checks.validate_config(config, mode="evaluate")  # before the workdir or the data are touched
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  source = checkpoint_path
  if not source:
    if checkpoint.step_folders(workdir):  # intact or not: load_model takes the newest intact one or says why none
      source = workdir
    elif config.get("init_from"):
      source = config.init_from
    else:
      raise ValueError(f"nothing to evaluate: {workdir} has no checkpoints/ and neither --checkpoint nor "
                       "config.init_from is set")
  module, params, info = checkpoint.load_model(source, step=step)
  tag = str(info["step"]) if "step" in info else "pretrained"
  data_config = input_pipeline.resolve_data_config(config.data, workdir)
  prepare_data(data_config)
  if jax.process_index() != 0:
    return None
  out_dir = os.path.join(workdir, "eval", tag)
  logging.info("Evaluating %s (%s, %s) on %s/%s -> %s", source, info["arch"], tag, data_config.name,
               data_config.eval_split, out_dir)
  result = evaluate(
      module, params, data_config, out_dir, max_images=config.data.max_eval_images or None,
      save_images=config.eval.save_images, tile=config.eval.tile, tile_overlap=config.eval.tile_overlap,
      step=info.get("step"), source=source)
  return result


def _safe_name(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _json_number(x):
  if isinstance(x, float) and not math.isfinite(x):
    return "inf" if x > 0 else ("-inf" if x < 0 else "nan")
  return x


def _write_results(out_dir: str, summary: Dict[str, Any], records: List[Dict[str, Any]]):
  fields = ["name", "psnr", "ssim", "input_psnr", "input_ssim", "height", "width"]
  path = os.path.join(out_dir, "metrics.csv")
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in records:
      w.writerow({k: (f"{r[k]:.6f}" if isinstance(r[k], float) else r[k]) for k in fields})
  os.replace(path + ".tmp", path)
  doc = {"summary": {k: _json_number(v) for k, v in summary.items()},
         "images": [{k: _json_number(v) for k, v in r.items()} for r in records]}
  path = os.path.join(out_dir, "metrics.json")
  with open(path + ".tmp", "w") as f:
    json.dump(doc, f, indent=2)
  os.replace(path + ".tmp", path)
