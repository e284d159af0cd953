r"""Default configuration: the DRSformer reference recipe on Rain200H (every field documented).

Run (any of the dataset configs derives from this one):

  python -m sparse_restore.main --config configs/default.py --workdir /tmp/drsformer_rain200h

Override any field from the command line, e.g. ``--config.batch_size=8 --config.model.dim=32``; the config is
locked, so a misspelt field is an error. Values follow DRSformer's ``Options/Deraining.yml`` (BasicSR), which is
what produced the released checkpoints (the paper text says lr 1e-4 and batch 8; see the dataset configs).
"""
import ml_collections


def get_config():
  """The default (DRSformer, Rain200H) training configuration."""
  config = ml_collections.ConfigDict()

  # ---------------------------------------------------------------- model
  # `name` picks the network from the registry (sparse_restore.models); every other key is a constructor
  # argument. The architecture-defining ones are written to <workdir>/model.json.
  config.model = ml_collections.ConfigDict()
  config.model.name = "drsformer"
  config.model.dim = 48                      # channels at level 1 (levels 2-4: 2x, 4x, 8x)
  config.model.num_blocks = (4, 6, 6, 8)     # sparse Transformer blocks per level
  config.model.heads = (1, 2, 4, 8)          # attention heads per level
  config.model.ffn_expansion_factor = 2.66   # MSFN hidden width = int(level_dim * factor)
  config.model.bias = False                  # biases in the Transformer-block convolutions
  config.model.layernorm_type = "WithBias"   # 'WithBias' | 'BiasFree'
  config.model.use_mefc = True               # MEFC (mixture-of-experts compensator); False for Rain200L / SPA
  config.model.mefc_experts = 8              # number of MEFC expert operations (paper Table 4: 1, 4, 8)
  config.model.topk_ratios = (1 / 2, 2 / 3, 3 / 4, 4 / 5)  # TKSA top-k ratios; () = dense softmax attention
  config.model.ffn_type = "msfn"             # 'msfn' | 'gdfn' | 'dfn' | 'fn' (paper Table 3)
  # Compute dtype of the network in training: 'float32' or 'bfloat16' (params and optimizer state stay float32;
  # evaluation always runs in float32).
  config.compute_dtype = "float32"
  config.remat = False                       # recompute activations per block in the backward pass (less memory)

  # ---------------------------------------------------------------- how the network runs on the device
  # Chosen for the training devices' platform (sparse_restore/models/policy.py; README "Performance"); a value
  # set here overrides that choice. None / 'auto' = the platform's choice. Results do not depend on these.
  config.policy = ml_collections.ConfigDict()
  config.policy.conv = "auto"                # depthwise/grouped convs: 'auto' | 'xla' | 'shift' (the CPU kernels)
  config.policy.fusion_guards = ml_collections.config_dict.placeholder(bool)  # XLA:CPU barriers / materialising
  config.policy.chunk_bytes = ml_collections.config_dict.placeholder(int)     # AST chunked working set (0 = off)
  config.policy.scan_blocks = ml_collections.config_dict.placeholder(bool)    # repeated blocks as one lax.scan

  # ---------------------------------------------------------------- data
  config.data = ml_collections.ConfigDict()
  # Dataset: 'rain200h' | 'rain200l' | 'did' | 'ddn' | 'spa' | 'agan' | 'densehaze' | 'synthetic_rain'. The
  # dataset definition also fixes the evaluation protocol ('restormer' | 'rcdnet') and channel (Y or RGB).
  config.data.name = "rain200h"
  config.data.data_dir = ""                  # where the array_record data is built/read ('' -> <workdir>/tfds)
  config.data.manual_dir = ""                # folder with the downloaded raw images (see the dataset config docs)
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.patch_size = 128               # square training crops (same place in input and target)
  config.data.random_flip = True             # random horizontal / vertical flips of the pair
  config.data.random_rot90 = True            # random multiples of 90-degree rotation (8 dihedral transforms in all)
  config.data.num_workers = 4                # grain worker processes for decoding/cropping (0 = in the main process)
  config.data.prefetch_buffer_size = 4       # batches prepared ahead
  config.data.max_eval_images = 0            # evaluate only the first N test images (0 = all)

  # ---------------------------------------------------------------- optimisation
  config.seed = 100                          # model init, data order/crops, per-step RNG (BasicSR manual_seed 100)
  config.batch_size = 16                     # GLOBAL batch (all devices/processes); 4 GPUs x 4 in the reference
  config.num_train_steps = 300_000           # total optimizer steps (sum of the stages when `stages` is used)
  config.lr = 3e-4                           # peak learning rate
  # 'constant' | 'constant_cosine' (constant for `constant_steps`, then cosine to `end_lr`) |
  # 'warmup_cosine' (linear warm-up over `warmup_steps`, then cosine to `end_lr`).
  config.schedule = "constant_cosine"
  config.constant_steps = 92_000             # DRSformer: 3e-4 for 92k steps, then cosine to 1e-6 over 208k
  config.warmup_steps = 0                    # only used by 'warmup_cosine'
  config.end_lr = 1e-6                       # final learning rate of the cosine
  config.b1 = 0.9                            # AdamW beta1
  config.b2 = 0.999                          # AdamW beta2
  config.eps = 1e-8                          # AdamW epsilon (PyTorch default)
  config.weight_decay = 1e-4                 # AdamW decoupled weight decay (applied to all parameters)
  config.grad_clip_norm = 0.01               # clip gradients to this global norm (0 disables)
  config.loss = "l1"                         # 'l1' | 'charbonnier'
  config.charbonnier_eps = 1e-3              # epsilon of the Charbonnier loss
  # Progressive training (AST): a tuple of dicts, each with `num_steps` and any of patch_size, batch_size, lr,
  # schedule, constant_steps, warmup_steps, end_lr (defaults: the top-level fields). Every stage starts a fresh
  # optimizer and data stream from the previous stage's parameters. Empty = one stage from the fields above.
  config.stages = ()
  # Initialise parameters from an exported model (sparse_restore.convert output) or another training workdir
  # (fine-tuning); '' = random init. Ignored when the workdir already has a checkpoint (the run resumes).
  config.init_from = ""

  # ---------------------------------------------------------------- logging, evaluation, checkpoints
  config.log_every_steps = 100               # write train loss / lr / grad norm / steps per second
  config.eval_every_steps = 5_000            # full-image evaluation of the eval split, also after the last step (0 off)
  config.checkpoint_every_steps = 5_000      # Orbax checkpoint (also after the last step)
  config.max_checkpoints_to_keep = 3         # older ones are deleted; 0 = keep all, else >= 2 (a damaged newest
                                             # checkpoint falls back to the one before it)
  config.profile = False                     # capture a jax profiler trace of a few steps into the workdir
  # Persistent compilation cache: '' = <workdir>/compile_cache, 'none' = off, else a folder (shared by runs);
  # $JAX_COMPILATION_CACHE_DIR wins when set.
  config.compilation_cache_dir = ""

  config.eval = ml_collections.ConfigDict()
  config.eval.save_images = True             # restored PNGs in <workdir>/eval/<step>/images/, side by side in compare/
  config.eval.num_summary_images = 2         # degraded|restored|clean strips written to TensorBoard per evaluation
  # Tiled evaluation: tile and overlap are rounded up to the network's size multiple (8 for DRSformer, 128 for
  # the released AST models); the evaluation's first console line says what was asked and what is used.
  config.eval.tile = 0                       # 0 = full images (the published protocol); >0 = tiled inference
  config.eval.tile_overlap = 32              # overlap between tiles when `tile` > 0
  return config
