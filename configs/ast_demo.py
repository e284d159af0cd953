r"""AST demo: a small AST trained progressively on the built-in synthetic rain data (minutes on a CPU).

  python -m sparse_restore.main --config configs/ast_demo.py --workdir /tmp/ast_demo

No download: the 'synthetic_rain' set (384 rainy/clean 144 px training tiles and 48 held-out 128 px test tiles
made from scikit-image's bundled photos) is generated into <workdir>/tfds on first use. The final evaluation
prints the restored PSNR/SSIM (Y channel, 'restormer' protocol) next to the rainy input's; the restored images
are written to <workdir>/eval/<step>/images/.

The recipe of configs/ast_spa.py (AdamW wd 0.02, Charbonnier 1e-3, no clipping, warm-up then cosine per stage,
8 dihedral augmentations, a fresh optimizer and data stream per stage) on a toy AST: embed_dim 16, one block per
stage, window 8, no stochastic depth. ``img_size=64`` makes the bottleneck window 4x4 (its grid side; AST_B's
bottleneck uses 8x8 at img_size 128), so inputs are padded to multiples of 64 only and 64 px patches cost what
they should. Stages: 64x64 patches, global batch 16, lr 1e-3, then 128x128 patches, global batch 8, lr 5e-4.
"""
from sparse_restore import config_files


def get_config():
  """Small AST on synthetic rain, two progressive stages."""
  config = config_files.sibling(__file__, "ast_spa").ast_config("synthetic_rain", 1, ((64, 16, 1, 1e-3),))
  config.model.img_size = 64
  config.model.embed_dim = 16
  config.model.depths = (1,) * 9
  config.model.drop_path_rate = 0.0
  config.data.num_workers = 0
  config.data.prefetch_buffer_size = 4
  config.data.max_eval_images = 0            # all 48 test tiles
  config.seed = 0
  config.stages = (
      dict(num_steps=300, patch_size=64, batch_size=16, lr=1e-3, schedule="warmup_cosine", warmup_steps=20,
           end_lr=1e-5),
      dict(num_steps=100, patch_size=128, batch_size=8, lr=5e-4, schedule="warmup_cosine", warmup_steps=10,
           end_lr=1e-6),
  )
  first = config.stages[0]
  config.data.patch_size = first["patch_size"]
  config.batch_size = first["batch_size"]
  config.lr = first["lr"]
  config.warmup_steps = first["warmup_steps"]
  config.num_train_steps = sum(s["num_steps"] for s in config.stages)
  config.log_every_steps = 25
  config.eval_every_steps = config.num_train_steps  # one evaluation, after the last step
  config.checkpoint_every_steps = 200
  config.max_checkpoints_to_keep = 2
  config.eval.num_summary_images = 2
  return config
