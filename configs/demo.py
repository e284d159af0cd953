r"""Demo: a small DRSformer learns to remove synthetic rain on a CPU (1400 steps; ~6-7 min on 2 quiet cores, +5 dB).

  python -m sparse_restore.main --config configs/demo.py --workdir /tmp/sparse_restore_demo

Runs out of the box: the 'synthetic_rain' data (rain streaks drawn on scikit-image's sample photos, generated
offline into <workdir>/tfds on the first run; 384 training tiles of 144 px, 48 held-out test tiles of 128 px from
other photos). Trains a small DRSformer (TKSA top-k attention, no MEFC) with the reference recipe's loss and
optimizer (L1, AdamW, clipping) but a short, high learning-rate schedule, then evaluates the held-out test tiles on
the Y channel ('restormer' protocol): it prints the PSNR/SSIM of the rainy inputs and of the restored outputs, and
writes the tiles side by side (rainy | restored | clean) to <workdir>/eval/1400/compare/.

Sized for a CPU: the feed-forward network is GDFN (Restormer's gated depthwise FFN, the paper's Table 3 switch)
instead of MSFN, whose extra 5x5 depthwise branch made each train step 3.4x more expensive on XLA:CPU; the time it
saves buys 1400 steps of batch 8 on 48 px patches (vs 500 of batch 4 on 64 px). README "Performance" has the
measurements.
"""
from sparse_restore import config_files


def get_config():
  """Small DRSformer on synthetic rain, CPU-sized."""
  config = config_files.sibling(__file__, "default").get_config()
  config.model.dim = 16
  config.model.num_blocks = (1, 1, 1, 1)
  config.model.heads = (1, 2, 4, 8)
  config.model.use_mefc = False
  config.model.ffn_type = "gdfn"
  config.data.name = "synthetic_rain"
  config.data.patch_size = 48
  config.data.num_workers = 0
  config.data.prefetch_buffer_size = 4
  config.data.max_eval_images = 0
  config.seed = 0
  config.batch_size = 8
  config.num_train_steps = 1400
  config.lr = 2e-3
  config.schedule = "constant_cosine"
  config.constant_steps = 700
  config.end_lr = 1e-5
  config.log_every_steps = 50
  config.eval_every_steps = 1400  # evaluate (print rainy vs restored PSNR) at the end; the last step always does
  config.checkpoint_every_steps = 500
  config.max_checkpoints_to_keep = 2  # the newest plus one to fall back on
  config.eval.num_summary_images = 4
  return config
