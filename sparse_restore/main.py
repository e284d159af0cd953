r"""Training / evaluation job.

  python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir /tmp/drsformer_rain200h
  python -m sparse_restore.main --config configs/demo.py --workdir /tmp/demo            # a few minutes on a CPU
  python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir /tmp/eval \
      --mode evaluate --checkpoint /path/to/converted_model  # score a converted (PyTorch) model

Modes:
  train     (default) train, resuming from the newest checkpoint of --workdir, with periodic evaluation and a final
            one after the last step.
  evaluate  evaluate the newest checkpoint of --workdir (or --step), or --checkpoint (an exported/converted model
            or another workdir), or config.init_from; full images, the dataset's protocol; results in
            <workdir>/eval/<step>/.

Config fields are overridden with ``--config.<field>=<value>``; the config is locked, so a misspelt field fails.
The console is quiet by default: what the job does, a progress line every ~10 s and a closing summary (where the
checkpoint, the side-by-side evaluation images and the TensorBoard logs are, and what to run next), plus any
warning; ``--verbosity=0`` (or ``=1``) shows every library's log lines as well (``sparse_restore/console.py``).
Compiled programs are kept in a persistent cache, ``<workdir>/compile_cache`` unless
``config.compilation_cache_dir`` names another folder (or ``none``) or ``$JAX_COMPILATION_CACHE_DIR`` is set
(``sparse_restore/compile_cache.py``), so a second run of the same configuration does not compile again (XLA:CPU
needs minutes for a DRSformer train step). On Linux the job keeps memory freed by XLA for reuse instead of
returning it to the OS
(``sparse_restore/host_memory.py``; ~30% faster CPU train steps); ``SPARSE_RESTORE_SYSTEM_MALLOC=1`` turns it off.

Several hosts: start one process per host with ``--multihost``; ``jax.distributed.initialize()`` then takes the
process layout from the cluster manager (Cloud TPU, SLURM, Open MPI, ...). Without one, give
``--coordinator_address=host0:port --num_processes=N --process_id=i`` to every process (this also works on one
machine, e.g. CPU processes on localhost; a set $JAX_COORDINATOR_ADDRESS also turns the distributed start on).
The global batch is split over all devices of all processes; each process reads its own shard of the data, and
only process 0 writes TensorBoard summaries and evaluates.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from sparse_restore import config_files

FLAGS = flags.FLAGS

config_files.define_config_flag("config", "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, model.json, TensorBoard logs and evaluations.")
flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "train (with periodic evaluation) or evaluate.")
flags.DEFINE_string("checkpoint", None, "evaluate: exported model directory or training workdir to evaluate "
                    "(default: --workdir's newest checkpoint, else config.init_from).")
flags.DEFINE_integer("step", None, "evaluate: checkpoint step of a workdir (default: the newest).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (multi-process / multi-host runs).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --multihost).")
flags.DEFINE_integer("num_processes", None, "Number of processes (implies --multihost).")
flags.DEFINE_integer("process_id", None, "Index of this process (implies --multihost).")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed():
  """``jax.distributed.initialize`` when asked for by the flags or by $JAX_COORDINATOR_ADDRESS; returns whether."""
  import jax
  explicit = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
  if not (FLAGS.multihost or any(v is not None for v in explicit) or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return False
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
                             process_id=FLAGS.process_id)
  return True


def _infer_command(workdir: str) -> str:
  return f"python -m sparse_restore.infer --checkpoint {workdir} --input <images> --output <folder>"


def summary_lines(config, workdir: str, result, *, seconds: float, trained_step=None) -> list:
  """The closing lines of a job: the result, where its files are and the next command to try.

  ``result`` is the last :class:`sparse_restore.model_eval.EvalResult` (None when nothing was evaluated) and
  ``trained_step`` the final step of a training run (None in evaluate mode)."""
  from sparse_restore import checkpoint, console
  workdir = os.path.abspath(os.path.expanduser(workdir))
  lines = []
  if trained_step is not None:
    lines.append(f"finished training at step {trained_step} in {console.duration(seconds)}; workdir {workdir}")
  if result is not None:
    lines.append(result.describe())
  lines.append("where to look:")
  rows = []
  if trained_step is not None:
    step_dir = os.path.join(workdir, checkpoint.CHECKPOINTS_DIR, str(trained_step))
    rows.append(("checkpoint", step_dir if os.path.isdir(step_dir) else os.path.join(workdir, checkpoint.CHECKPOINTS_DIR)))
  if result is not None:
    if os.path.isdir(result.compare_dir):
      rows.append(("side by side", f"{result.compare_dir}/  (degraded input | restored | clean target; the "
                                   "restored PNGs alone are in images/)"))
    rows.append(("scores", f"{os.path.join(result.out_dir, 'metrics.csv')}  (per image; means in metrics.json)"))
  if trained_step is not None:
    rows.append(("TensorBoard", f"tensorboard --logdir {workdir}  (losses, PSNR curves, side-by-side images)"))
  width = max(len(name) for name, _ in rows) if rows else 0
  lines.extend(f"  {name:<{width}}  {value}" for name, value in rows)
  if trained_step is not None:
    lines.append("next: restore your own images with this model:")
    lines.append(f"  {_infer_command(workdir)}")
    if config.data.name == "synthetic_rain":
      lines.append("  (this demo model learned only the synthetic rain streaks of its training data; for real photos "
                   "convert the authors' released weights: README \"Converting the authors' checkpoints\")")
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from sparse_restore import console
  console.setup(verbose=console.absl_verbosity_requested())  # before JAX and the other libraries start
  t_start = time.monotonic()
  from sparse_restore import host_memory
  host_memory.keep_freed_memory()  # before JAX starts its threads; SPARSE_RESTORE_SYSTEM_MALLOC=1 opts out
  distributed = initialize_distributed()
  from sparse_restore import compile_cache  # before anything compiles: JAX reads the setting once
  compile_cache.enable(FLAGS.config.get("compilation_cache_dir", ""),
                       default=compile_cache.workdir_cache_dir(FLAGS.workdir))
  import jax
  from sparse_restore import checkpoint, datasets, model_eval, sharding, train

  logging.info("JAX %s, process %d/%d%s, devices: %s", jax.__version__, jax.process_index(), jax.process_count(),
               " (distributed)" if distributed else "", jax.devices())
  if jax.process_index() == 0:
    console.say(f"{'training' if FLAGS.mode == 'train' else 'evaluating'} in {os.path.abspath(FLAGS.workdir)}"
                + ("" if console.verbose() else " (main steps only; --verbosity=0 also shows every library's log "
                   "lines)"))
  config = FLAGS.config
  try:
    if FLAGS.mode == "train":
      result = train.train_and_evaluate(config, FLAGS.workdir)
      if jax.process_index() == 0:
        lines = summary_lines(config, FLAGS.workdir, result.eval, seconds=time.monotonic() - t_start,
                              trained_step=int(sharding.to_host(result.state.step)))
        print("\n".join(lines), flush=True)
    else:
      result = model_eval.evaluate_checkpoint(config, FLAGS.workdir, checkpoint_path=FLAGS.checkpoint,
                                              step=FLAGS.step)
      if result is not None:
        print("\n".join(summary_lines(config, FLAGS.workdir, result, seconds=time.monotonic() - t_start)),
              flush=True)
  except (train.NonFiniteLossError, checkpoint.ModelMismatchError, checkpoint.CheckpointError,
          datasets.DatasetError, ValueError) as e:
    # Expected failures (bad config values, data, checkpoints, divergence): one clear line each, no traceback.
    logging.error("%s", e)
    problems = getattr(e, "problems", None) or [e]  # config_checks.ConfigError: one line per invalid field
    raise SystemExit("\n".join(f"error: {p}" for p in problems)) from None


def parse_flags(argv):
  """absl flag parsing that reports a bad ``--config.*`` override (misspelt field, wrong type) in one line."""
  try:
    rest = FLAGS(argv)
    if FLAGS.config is not None:
      FLAGS.config.to_dict()  # A config file that failed to load raises here, not at first use.
    return rest
  except OSError as e:
    sys.exit(f"error: {e}")
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --helpfull to see the flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).strip("'\"").replace("\\n", " ").replace("\n", " ").replace("\\'", "'")
    sys.exit(f"error: bad --config override: {message}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
