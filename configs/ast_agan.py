r"""AST (AST_B, FRFN) on AGAN-Data raindrops: the reference recipe of ``script/train_raindrop.sh``, three stages.

  python -m sparse_restore.main --config configs/ast_agan.py --workdir /tmp/ast_agan \
      --config.data.manual_dir=/data/raindrop

Data (``--config.data.manual_dir``, the layout the AST scripts use; converted once to array_record):
  <manual_dir>/train/data/*.png    raindrop images (861), e.g. 0_rain.png
  <manual_dir>/train/gt/*.png      clean images, e.g. 0_clean.png (paired by the number before _rain/_clean)
  <manual_dir>/test_a/data/*.png   raindrop test images (58)
  <manual_dir>/test_a/gt/*.png     clean test images

Evaluation (dataset 'agan'): RGB PSNR/SSIM, 'basicsr' protocol on 8-bit outputs (same PSNR as the reference's
skimage PSNR up to rounding; SSIM uses the 11x11 Gaussian window, skimage's default a 7x7 uniform one). Like the
reference test script (``test_raindrop.py``: 384x384 crops, overlap 80, averaged) the test images are restored in
384x384 tiles; here tiles start on the model's 128 grid (the overlap is rounded up to 128) and are blended with a
smooth window instead of a uniform mean, so the numbers are close to, not identical with, the reference's.
``--config.eval.tile=0`` restores whole images instead.
Published numbers: NOT KNOWN. The AST paper's PSNR/SSIM tables could not be obtained (shared/docs/ast.md §4.2);
compare with the released AGAN checkpoint (``--mode evaluate --checkpoint <converted model>``).

Recipe: as configs/ast_spa.py (AST_B, AdamW wd 0.02, Charbonnier 1e-3, no clipping, 3-epoch warm-up then cosine
to 1e-6 per stage, 8 dihedral augmentations, seed 1234) with the stages (patch, global batch, epochs, lr)
(128, 32, 300, 2e-4), (256, 16, 200, 1e-4), (384, 8, 150, 8e-5); only stage 1 is uncommented in the authors'
script and which stage produced the released weights is not stated.

Epochs -> steps (``ceil(861 / batch)`` steps per epoch, the last partial batch kept as in the reference):
  stage 1: 27 steps/epoch x 300 = 8,100 steps (warm-up 81); stage 2: 54 x 200 = 10,800 (warm-up 162);
  stage 3: 108 x 150 = 16,200 (warm-up 324); 35,100 steps in all.
``--config configs/ast_agan.py:<train_pairs>`` recomputes them for another training-set size.

Differences from the reference: those of configs/ast_spa.py (per-step schedule, no MixUp (the reference mixes
pairs from epoch 6 on), img_size fixed at 128 in every stage (the reference built stages 2/3 with img_size
256/384, which shifts the second bottleneck block; same parameters), float32 instead of AMP, last checkpoint
instead of the best on the test set), and the tiled evaluation described above. Evaluation runs every 1,000
steps (the reference validates 4x per epoch, i.e. every ~7 steps, on centre crops).
"""
from sparse_restore import config_files

PUBLISHED_STAGES = ((128, 32, 300, 2e-4), (256, 16, 200, 1e-4), (384, 8, 150, 8e-5))
TRAIN_PAIRS = 861       # AGAN-Data train/ pairs


def get_config(train_pairs=None):
  """AGAN-Data, AST_B, three progressive stages (``train_pairs``: training-set size for epochs -> steps)."""
  ast_spa = config_files.sibling(__file__, "ast_spa")
  config = ast_spa.ast_config("agan", int(train_pairs or TRAIN_PAIRS), PUBLISHED_STAGES)
  config.eval.tile = 384                     # test_raindrop.py: 384x384 crops ...
  config.eval.tile_overlap = 128             # ... overlap 80 there; rounded up to the 128 grid here
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  return config
