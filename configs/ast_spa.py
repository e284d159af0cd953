r"""AST (AST_B, FRFN) on SPA-Data: the reference recipe of ``script/train_derain.sh``, both stages in one run.

  python -m sparse_restore.main --config configs/ast_spa.py --workdir /tmp/ast_spa \
      --config.data.manual_dir=/data/SPA-Data

Data (``--config.data.manual_dir``; converted once to array_record under ``data_dir``, default <workdir>/tfds):
  <manual_dir>/train/input/*.png   rainy training images (638,492)
  <manual_dir>/train/target/*.png  clean training images, same file names
  <manual_dir>/test/input/*.png    rainy test images (1,000; the authors' ``real_test_1000.txt``)
  <manual_dir>/test/target/*.png   clean test images
(``<Datasets>/{train,test}/SPA-Data/{input,target}`` also works with manual_dir=<Datasets>). The AST scripts read
the same pairs from the list files ``real_world.txt`` / ``real_test_1000.txt``; lay them out as above.

Evaluation (dataset 'spa'): full test images, Y channel, 'restormer' protocol (MATLAB ``evaluate_PSNR_SSIM.m`` on
8-bit PNGs; the repo's own MATLAB script, most likely what the paper reports). The reference test script instead
zero-pads *centred* to a square multiple of 128 (``expand2square``); the model here reflect-pads bottom/right to a
multiple of 128, which is the same computation when both sides already are multiples of 128.
Published numbers: NOT KNOWN. The AST paper's PSNR/SSIM tables could not be obtained (shared/docs/ast.md §4.2), so
no target value is given here; compare with the released checkpoint instead
(``--mode evaluate --checkpoint <converted AST SPAD model>``).

Recipe (shared/docs/ast.md §4.3; the AGAN and Dense-Haze configs reuse :func:`ast_config`):
  * model AST_B (embed_dim 32, depths 1/2/8/8/2/8/8/2/1, win 8, token_mlp 'frfn', drop_path 0.1), img_size 128;
  * AdamW(b1 0.9, b2 0.999, eps 1e-8, weight decay 0.02 on all params), Charbonnier loss (eps 1e-3),
    no gradient clipping;
  * per stage: fresh optimizer and data stream, linear warm-up over 3 epochs then cosine to 1e-6;
  * random ps x ps crops, one of the 8 dihedral transforms (random_flip + random_rot90); seed 1234;
  * stages (patch, global batch, epochs, peak lr): (128, 32, 20, 2e-4) then (256, 16, 15, 1e-4). Only stage 1 is
    uncommented in the authors' script; which stage produced the released weights is not stated.

Epochs -> steps: the reference's DataLoader keeps the last partial batch (``drop_last=False``), so one epoch is
``ceil(train_pairs / batch)`` optimizer steps: ceil(638,492 / 32) = 19,953 steps (x 20 epochs = 399,060; warm-up
3 x 19,953 = 59,859) and ceil(638,492 / 16) = 39,906 (x 15 = 598,590; warm-up 119,718): 997,650 steps in all.
A different training-set size is given after the path: ``--config configs/ast_spa.py:<train_pairs>``.

Differences from the reference:
  * the schedule is stepped per optimizer step (a continuous linear warm-up from 0 and a per-step cosine), the
    reference steps it per epoch (epoch 1 at lr/3, 2 at 2lr/3, then cosine);
  * MixUp is NOT implemented: the reference mixes each pair with a shuffled partner of the batch (lambda ~
    Beta(1.2, 1.2) per sample) from epoch 6 on; ``sparse_restore.train`` has no batch-level augmentation hook;
  * ``img_size`` stays 128 in every stage (stages cannot change model fields): stage 2 trains the test-time graph
    (second bottleneck block unshifted) where the reference built the model with img_size 256 (that block
    shifted by 4). The parameters are the same either way and evaluation/export use img_size 128 as the authors'
    test scripts do (shared/docs/ast.md §1.3);
  * float32 compute (the reference uses AMP float16 autocast with a loss scaler); ``--config.compute_dtype=
    bfloat16`` is the nearest equivalent;
  * no best-checkpoint selection: the reference validates 4x per epoch on the test set and keeps the best;
    here the test set is evaluated every 5,000 steps (about 4x per stage-1 epoch) and the last step is kept;
  * crops: the reference draws the crop offset in [0, H - ps) (never the last position, except when H == ps);
    here every position is possible;
  * batches are global (split over all devices); keep batch_size as is on any device count.
"""
import math

import ml_collections

from sparse_restore import config_files

# (patch size, global batch, epochs, peak lr) per stage, as in script/train_derain.sh.
PUBLISHED_STAGES = ((128, 32, 20, 2e-4), (256, 16, 15, 1e-4))
TRAIN_PAIRS = 638_492   # SPA-Data training pairs (real_world.txt)
WARMUP_EPOCHS = 3       # GradualWarmupScheduler(total_epoch=3) before CosineAnnealingLR in every stage
END_LR = 1e-6           # CosineAnnealingLR eta_min


def ast_b_model() -> ml_collections.ConfigDict:
  """``config.model`` for AST_B with FRFN (every constructor argument of ``sparse_restore.models.ast.AST`` but
  dtype/remat, which come from ``config.compute_dtype`` / ``config.remat``)."""
  m = ml_collections.ConfigDict()
  m.name = "ast"
  m.img_size = 128                           # construction-time size: window clamping/shifts (128 = test graph)
  m.embed_dim = 32                           # channels of the first stage (64 .. 512 deeper)
  m.depths = (1, 2, 8, 8, 2, 8, 8, 2, 1)     # blocks: 4 encoder stages, bottleneck, 4 decoder stages
  m.num_heads = (1, 2, 4, 8, 16, 16, 8, 4, 2)  # heads per stage (encoder entries unused: no attention there)
  m.win_size = 8                             # ASSA window side
  m.mlp_ratio = 4.0                          # FRFN hidden width / channels
  m.token_mlp = "frfn"                       # 'frfn' (AST) | 'leff'
  m.qkv_bias = True                          # biases of the q / kv projections
  m.drop_path_rate = 0.1                     # stochastic depth (training only)
  m.in_chans = 3                             # output channels
  m.dd_in = 3                                # input channels (global residual when 3)
  m.pad_mode = "reflect"                     # inputs padded bottom/right to multiples of 128: 'reflect' | 'constant'
  return m


def steps_per_epoch(train_pairs: int, batch_size: int) -> int:
  """Optimizer steps of one pass over ``train_pairs`` with the last partial batch kept (``drop_last=False``)."""
  return math.ceil(int(train_pairs) / int(batch_size))


def progressive_stages(train_pairs: int, table, warmup_epochs: int = WARMUP_EPOCHS, end_lr: float = END_LR):
  """``config.stages`` entries for a table of (patch, batch, epochs, lr): each stage warms up linearly over
  ``warmup_epochs`` epochs then follows a cosine to ``end_lr``, epochs converted with :func:`steps_per_epoch`."""
  stages = []
  for patch, batch, epochs, lr in table:
    spe = steps_per_epoch(train_pairs, batch)
    stages.append(dict(num_steps=int(epochs) * spe, patch_size=int(patch), batch_size=int(batch), lr=float(lr),
                       schedule="warmup_cosine", warmup_steps=int(warmup_epochs) * spe, end_lr=float(end_lr)))
  return tuple(stages)


def ast_config(dataset: str, train_pairs: int, table) -> ml_collections.ConfigDict:
  """configs/default.py turned into the AST reference recipe on ``dataset`` with the stages of ``table``."""
  config = config_files.sibling(__file__, "default").get_config()
  config.model = ast_b_model()
  config.compute_dtype = "float32"           # the reference uses AMP (float16 autocast); 'bfloat16' is the analogue
  config.remat = False

  config.data.name = dataset
  config.data.random_flip = True             # with random_rot90: the 8 dihedral transforms of the reference
  config.data.random_rot90 = True

  config.seed = 1234                         # the reference seeds random / numpy / torch with 1234
  config.b1 = 0.9
  config.b2 = 0.999
  config.eps = 1e-8
  config.weight_decay = 0.02                 # options.py default, applied to all parameters
  config.grad_clip_norm = 0.0                # none in the reference
  config.loss = "charbonnier"
  config.charbonnier_eps = 1e-3
  config.schedule = "warmup_cosine"
  config.constant_steps = 0
  config.end_lr = END_LR

  config.stages = progressive_stages(train_pairs, table)
  first = config.stages[0]
  # The top-level fields mirror stage 1 (what a run without `stages` would use); the stages decide.
  config.data.patch_size = first["patch_size"]
  config.batch_size = first["batch_size"]
  config.lr = first["lr"]
  config.warmup_steps = first["warmup_steps"]
  config.num_train_steps = sum(s["num_steps"] for s in config.stages)
  config.eval.tile = 0
  config.eval.tile_overlap = 128
  return config


def get_config(train_pairs=None):
  """SPA-Data, AST_B, stages 128/32/20 epochs/2e-4 and 256/16/15 epochs/1e-4 (``train_pairs`` overrides the
  training-set size used to turn epochs into steps: ``--config configs/ast_spa.py:<N>``)."""
  config = ast_config("spa", int(train_pairs or TRAIN_PAIRS), PUBLISHED_STAGES)
  config.eval_every_steps = 5_000            # ~4x per stage-1 epoch (19,953 steps), like the reference's validation
  config.checkpoint_every_steps = 5_000
  return config
