r"""A tiny DRSformer on the synthetic rain data, for tests (seconds per run on a CPU).

  python -m sparse_restore.main --config configs/tiny.py --workdir /tmp/tiny

dim 8, one block per level, no MEFC, the depthwise FFN ('dfn') instead of MSFN, 32x32 patches, global batch 8,
6 steps; checkpoints every 2 steps; no evaluation unless ``eval_every_steps`` is set (then on 2 test images).
"""
from sparse_restore import config_files


def get_config():
  """Tiny test configuration."""
  config = config_files.sibling(__file__, "default").get_config()
  config.model.dim = 8
  config.model.num_blocks = (1, 1, 1, 1)
  config.model.heads = (1, 2, 4, 8)
  config.model.use_mefc = False
  # Depthwise-conv FFN instead of MSFN: MSFN's 5x5 taps double the XLA:CPU compile time of the train step,
  # which dominates a few-step test run. (policy.conv stays 'auto': XLA:CPU's own grouped convolution compiles
  # faster but its backward pass runs ~40x slower than the 'shift' path.)
  config.model.ffn_type = "dfn"
  config.data.name = "synthetic_rain"
  config.data.patch_size = 32
  config.data.num_workers = 0
  config.data.prefetch_buffer_size = 2
  config.data.max_eval_images = 2
  config.seed = 0
  config.batch_size = 8
  config.num_train_steps = 6
  config.lr = 2e-3
  config.schedule = "constant_cosine"
  config.constant_steps = 2
  config.log_every_steps = 2
  config.eval_every_steps = 0                # no periodic evaluation (tests switch it on)
  config.checkpoint_every_steps = 2
  config.max_checkpoints_to_keep = 5
  config.eval.num_summary_images = 1
  return config
