r"""AST (AST_B, FRFN) on Dense-Haze: the reference recipe of ``script/train_dehaze.sh``, five stages in one run.

  python -m sparse_restore.main --config configs/ast_densehaze.py --workdir /tmp/ast_densehaze \
      --config.data.manual_dir=/data/Dense-Haze-v2

Data (``--config.data.manual_dir``, the authors' ``Dense-Haze-v2`` layout; converted once to array_record):
  <manual_dir>/train_dense/input/*.png   hazy training images (1600x1200), e.g. 01_hazy.png
  <manual_dir>/train_dense/gt/*.png      haze-free images, e.g. 01_GT.png (paired by the part before _hazy/_GT)
  <manual_dir>/valid_dense/input/*.png   hazy test images (the reference tests on its validation folder)
  <manual_dir>/valid_dense/gt/*.png      haze-free test images

Training-set size (ASSUMPTION): the AST repository does not say how many pairs ``train_dense`` holds. Dense-Haze
(NTIRE 2019) has 55 pairs, 45 of them the challenge's training set, 5 validation and 5 test; this config assumes
45 training pairs. With another count, give it after the path so that epochs are converted with it:
``--config configs/ast_densehaze.py:50``.

Evaluation (dataset 'densehaze'): RGB PSNR/SSIM, 'basicsr' protocol (the reference: skimage PSNR/SSIM on RGB).
As in ``test_denseHaze.py`` (1152x1152 crops, overlap 384, averaged) the images are restored in 1152x1152 tiles
with overlap 384; here the image is first padded bottom/right to a multiple of 128 (1664x1280) and tiles are
blended with a smooth window instead of a uniform mean, so the numbers are close to, not identical with, the
reference's. ``--config.eval.tile=0`` restores whole images (needs more accelerator memory).
Published numbers: NOT KNOWN. The AST paper's PSNR/SSIM tables could not be obtained (shared/docs/ast.md §4.2);
compare with the released Dense-Haze checkpoint (``--mode evaluate --checkpoint <converted model>``).

Recipe: as configs/ast_spa.py (AST_B, AdamW wd 0.02, Charbonnier 1e-3, no clipping, 3-epoch warm-up then cosine
to 1e-6 per stage, 8 dihedral augmentations, seed 1234) with the stages (patch, global batch, epochs, lr)
(256, 4, 2000, 2e-4), (384, 4, 1200, 1.2e-4), (512, 4, 800, 8e-5), (768, 2, 300, 3e-5), (896, 2, 80, 1e-5);
only stage 1 is uncommented in the authors' script, which stage produced the released weights is not stated.

Epochs -> steps with 45 pairs (``ceil(45 / batch)`` steps per epoch, last partial batch kept as in the reference):
  batch 4: 12 steps/epoch: 2000 -> 24,000 (warm-up 36), 1200 -> 14,400 (36), 800 -> 9,600 (36);
  batch 2: 23 steps/epoch: 300 -> 6,900 (warm-up 69), 80 -> 1,840 (69); 56,740 steps in all.

Differences from the reference: those of configs/ast_spa.py (per-step schedule, no MixUp (the reference mixes
pairs from epoch 6 on), img_size fixed at 128 in every stage (the reference built each stage with img_size =
its patch, 256..896, which shifts the second bottleneck block; same parameters; its test script uses 128 as here),
float32 instead of AMP, last checkpoint instead of the best on the validation set), the tiled evaluation
described above, and the crop rule: the reference draws a crop offset in [0, H - ps) (never the last position);
here every position is possible. Evaluation runs every 2,000 steps (the reference validates 4x per epoch on
centre crops).
"""
from sparse_restore import config_files

PUBLISHED_STAGES = ((256, 4, 2000, 2e-4), (384, 4, 1200, 1.2e-4), (512, 4, 800, 8e-5), (768, 2, 300, 3e-5),
                    (896, 2, 80, 1e-5))
TRAIN_PAIRS = 45        # ASSUMED size of train_dense (NTIRE 2019 Dense-Haze training set); see the docstring


def get_config(train_pairs=None):
  """Dense-Haze, AST_B, five progressive stages (``train_pairs``: training-set size for epochs -> steps)."""
  ast_spa = config_files.sibling(__file__, "ast_spa")
  config = ast_spa.ast_config("densehaze", int(train_pairs or TRAIN_PAIRS), PUBLISHED_STAGES)
  config.data.num_workers = 2                # 45 large PNGs: few workers suffice (decoding 1600x1200 pairs)
  config.eval.tile = 1152                    # test_denseHaze.py: 1152x1152 crops, overlap 384
  config.eval.tile_overlap = 384
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 2_000
  return config
