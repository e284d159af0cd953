r"""A tiny AST with a two-stage progressive schedule on the synthetic rain data, for tests (compilation dominates).

  python -m sparse_restore.main --config configs/ast_tiny.py --workdir /tmp/ast_tiny

The AST recipe of configs/ast_spa.py (AdamW wd 0.02, Charbonnier, no clipping, warm-up + cosine per stage) with a
toy network: embed_dim 8, one block per stage, window 8, no stochastic depth, XLA grouped convolutions (fast to
compile). ``img_size=32`` clamps the two coarsest attention stages' windows to their 2x2 / 4x4 grids (different
relative-position tables than AST_B: not loadable into the released architecture), so inputs are padded to
multiples of 32 only and 32 px patches cost what they should. Stages: 32x32 patches, global batch 8, 12 steps
at lr 2e-3, then 64x64 patches, global batch 4, 4 steps at lr 1e-3 (fresh optimizer and data stream); each
stage warms up over its first step (lr 0) and decays to 1e-4. Evaluation is off (on: 2 test images).
"""
from sparse_restore import config_files


def get_config():
  """Tiny AST test configuration (two stages)."""
  config = config_files.sibling(__file__, "ast_spa").ast_config("synthetic_rain", 1, ((32, 8, 1, 1e-3),))
  config.model.img_size = 32
  config.model.embed_dim = 8
  config.model.depths = (1,) * 9
  config.model.drop_path_rate = 0.0
  config.policy.conv = "xla"
  config.data.num_workers = 0
  config.data.prefetch_buffer_size = 2
  config.data.max_eval_images = 2
  config.seed = 0
  config.stages = (
      dict(num_steps=12, patch_size=32, batch_size=8, lr=2e-3, schedule="warmup_cosine", warmup_steps=1,
           end_lr=1e-4),
      dict(num_steps=4, patch_size=64, batch_size=4, lr=1e-3, schedule="warmup_cosine", warmup_steps=1,
           end_lr=1e-4),
  )
  first = config.stages[0]
  config.data.patch_size = first["patch_size"]
  config.batch_size = first["batch_size"]
  config.lr = first["lr"]
  config.warmup_steps = first["warmup_steps"]
  config.num_train_steps = sum(s["num_steps"] for s in config.stages)
  config.log_every_steps = 1
  config.eval_every_steps = 0                # no periodic evaluation (tests switch it on)
  config.checkpoint_every_steps = 100        # checkpoints only at the end of each stage
  config.max_checkpoints_to_keep = 5
  config.eval.tile = 0
  config.eval.num_summary_images = 1
  return config
