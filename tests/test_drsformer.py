"""DRSformer in Flax (models/drsformer.py, tksa.py, feedforward.py, mefc.py) and its conversion rules.

The end-to-end proof is parity with the authors' PyTorch network on the three tiny fixtures (random, non-trivial
weights); the other tests pin down the parts the fixtures cannot reach (full-size naming, TKSA's algebraic
rewrites and their gradients, ablation switches, input checks, bf16).
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sparse_restore import models
from sparse_restore.convert import engine, load_state_dict
from sparse_restore.convert.drsformer import RULES, detect_ffn_factor
from sparse_restore.models import layers, policy
from sparse_restore.models.feedforward import FFN_TYPES
from sparse_restore.models.mefc import MEFC, resolve_experts
from sparse_restore.models.policy import Policy
from sparse_restore.models.tksa import DEFAULT_TOPK_RATIOS, TKSA, topk_counts

CASES = ("mefc", "nomefc", "biasfree")
CPU = policy.for_platform("cpu")  # what the entry points choose on this machine: shift kernels, guards, unrolled
_CACHE = {}


def _case(fixtures_dir, case):
  """(config, params, x NHWC, reference NHWC, fixture json) of a fixture, converted by the engine (cached)."""
  if case not in _CACHE:
    state = load_state_dict(fixtures_dir / f"drsformer_tiny_{case}.pth", arch="drsformer")
    config, params = engine.convert_state_dict(state, "drsformer")
    data = np.load(fixtures_dir / f"drsformer_tiny_{case}.npz")
    meta = json.loads((fixtures_dir / f"drsformer_tiny_{case}.json").read_text())
    _CACHE[case] = (config, params, data["input"].transpose(0, 2, 3, 1), data["output"].transpose(0, 2, 3, 1), meta)
  return _CACHE[case]


def _jitted(config, **overrides):
  """A jitted ``apply`` per configuration, shared between tests (compiling is the slow part); the CPU policy
  unless ``overrides`` name another."""
  overrides = {"policy": CPU, **overrides}
  key = ("apply", tuple(sorted({**config, **overrides}.items())))
  if key not in _CACHE:
    model = models.create("drsformer", **{**config, **overrides})
    _CACHE[key] = jax.jit(lambda p, x: model.apply({"params": p}, x))
  return _CACHE[key]


def _random_params(model, x, seed=0):
  """Random float32 params of the right shapes (``model.init`` compiles slowly for a whole network)."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"]

  def draw(path, a):
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1])), jnp.float32)
    if name == "scale":
      return jnp.asarray(1 + 0.2 * rng.standard_normal(a.shape), jnp.float32)
    return jnp.asarray(rng.uniform(0.1, 2.0, a.shape), jnp.float32)  # biases, temperature, attn1..4

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _rel_err(ours, ref):
  return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------------------------------------------
# Parity with the PyTorch reference.


@pytest.mark.parametrize("case", CASES)
def test_matches_pytorch_reference(fixtures_dir, case):
  config, params, x, ref, _ = _case(fixtures_dir, case)
  y = _jitted(config)(params, x)
  assert y.shape == ref.shape and y.dtype == jnp.float32
  assert _rel_err(y, ref) <= 1e-5


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_accelerator_policies_match_pytorch_reference(fixtures_dir, platform):
  """The GPU/TPU policies (XLA convolutions, scanned levels and MEFC steps), computed on this CPU."""
  config, params, x, ref, _ = _case(fixtures_dir, "mefc")
  assert _rel_err(_jitted(config, policy=policy.for_platform(platform))(params, x), ref) <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_detect_config_reproduces_fixture_arguments(fixtures_dir, case):
  config, _, _, _, meta = _case(fixtures_dir, case)
  kw = meta["constructor_kwargs"]
  want = dict(dim=kw["dim"], num_blocks=tuple(kw["num_blocks"]), heads=tuple(kw["heads"]),
              ffn_expansion_factor=kw["ffn_expansion_factor"], bias=kw["bias"],
              layernorm_type=kw["LayerNorm_type"], in_channels=kw["inp_channels"],
              out_channels=kw["out_channels"], use_mefc=case != "nomefc", topk_ratios=DEFAULT_TOPK_RATIOS,
              ffn_type="msfn")
  if case != "nomefc":
    want["mefc_experts"] = 8
  assert config == want


@pytest.mark.parametrize("variant,count", [("mefc", 33_655_424), ("nomefc", 32_610_304)])
def test_full_size_manifest_maps_one_to_one(fixtures_dir, variant, count):
  manifest = json.loads((fixtures_dir / f"drsformer_default_{variant}_manifest.json").read_text())
  model = models.create("drsformer", use_mefc=variant == "mefc")
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))))["params"]
  expected = {p: v.shape for p, v in traverse_util.flatten_dict(abstract).items()}
  assert sum(int(np.prod(s)) for s in expected.values()) == count
  mapped = {}
  for key, entry in manifest.items():
    path = RULES.map_key(key)
    assert path in expected, f"{key} -> {path} is not a parameter of the default model"
    assert path not in mapped, f"{key} and {mapped[path]} both map to {path}"
    mapped[path] = key
    assert RULES.convert_array(key, np.zeros(entry["shape"], np.float32)).shape == expected[path], key
  assert set(mapped) == set(expected)
  # The configuration read off the full-size names/shapes is the released default.
  state = {k: np.zeros(v["shape"], np.float32) for k, v in manifest.items()}
  config = RULES.detect_config(state)
  default = models.create("drsformer", use_mefc=variant == "mefc")
  runtime_only = {"policy", "remat", "parent", "name"}
  fields = {f.name for f in dataclasses.fields(default) if f.name not in runtime_only}
  assert set(config) == fields - ({"mefc_experts"} if variant == "nomefc" else set())
  assert all(getattr(models.create("drsformer", **config), f) == getattr(default, f) for f in fields)


@pytest.mark.slow  # Op-by-op execution of a whole network: ~1 min.
def test_jit_and_eager_agree(fixtures_dir):
  config, params, x, _, _ = _case(fixtures_dir, "nomefc")
  eager = models.create("drsformer", **config).apply({"params": params}, x)
  jitted = _jitted(config)(params, x)
  np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=0, atol=1e-5 * np.abs(jitted).max())


def test_size_not_multiple_of_8_is_a_clear_error():
  model = models.create("drsformer", dim=8, num_blocks=(1, 1, 1, 1))
  with pytest.raises(ValueError, match=r"36x50.*multiple of 8.*pad_to_multiple"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 36, 50, 3))))
  with pytest.raises(ValueError, match="3 channels"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1))))


def test_pad_model_crop_on_odd_size(fixtures_dir):
  config, params, x, _, _ = _case(fixtures_dir, "nomefc")
  apply = _jitted(config)
  img = x[:, :37, :50]  # Padded back to the fixture's 40x56, so the parity test's compilation is reused.
  padded, size = layers.pad_to_multiple(jnp.asarray(img), 8)
  assert padded.shape == x.shape
  out = layers.crop_to(apply(params, padded), size)
  assert out.shape == img.shape and np.isfinite(np.asarray(out)).all()
  # Reflect padding, as the reference test script: row 37 mirrors row 35, column 50 mirrors column 48.
  np.testing.assert_array_equal(np.asarray(padded[:, 37, :50]), img[:, 35])
  np.testing.assert_array_equal(np.asarray(padded[:, :37, 50]), img[:, :, 48])


def test_bfloat16_compute_runs_and_stays_close(fixtures_dir):
  config, params, x, ref, _ = _case(fixtures_dir, "nomefc")
  y = _jitted(config, policy=CPU.replace(dtype="bfloat16"))(params, x)
  assert y.dtype == jnp.float32 and np.isfinite(np.asarray(y)).all()
  err = _rel_err(y, ref)
  # The fixture's random weights make the network sensitive: rounding just the *weights* to bf16 (float32
  # compute) already moves the output by ~15% of its range. bf16 compute must be of that order, not worse.
  rounded = jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(jnp.bfloat16).astype(jnp.float32), params)
  sensitivity = _rel_err(_jitted(config)(rounded, x), ref)
  assert 1e-4 < err < 2 * sensitivity + 1e-2, (err, sensitivity)
  assert float(jnp.mean(jnp.abs(y - ref))) < 0.15 * float(np.mean(np.abs(ref)))


# ----------------------------------------------------------------------------------------------------------------
# TKSA: the JAX formulation against a literal one (separate top-k masks, -inf, four softmaxes, four products).


def _naive_tksa(params, x, heads, ratios):
  """The reference's algorithm step by step (mask by sorting, like torch.topk + scatter)."""
  b, h, w, c = x.shape
  ch = c // heads
  qkv = layers.conv_reference(x, params["qkv"]["kernel"])
  qkv = layers.conv_reference(qkv, params["qkv_dwconv"]["kernel"], padding=1, groups=3 * c)
  q, k, v = (t.reshape(b, h * w, heads, ch).transpose(0, 2, 3, 1) for t in jnp.split(qkv, 3, axis=-1))
  q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
  attn = q @ jnp.swapaxes(k, -1, -2) * params["temperature"]
  if not ratios:
    out = jax.nn.softmax(attn, axis=-1) @ v
  else:
    rank = jnp.argsort(jnp.argsort(-jax.lax.stop_gradient(attn), axis=-1), axis=-1)  # 0 = largest
    out = 0
    for i, r in enumerate(ratios):
      masked = jnp.where(rank < int(ch * r), attn, -jnp.inf)
      out = out + (jax.nn.softmax(masked, axis=-1) @ v) * params[f"attn{i + 1}"]
  out = out.transpose(0, 3, 1, 2).reshape(b, h, w, c)
  return layers.conv_reference(out, params["project_out"]["kernel"])


@pytest.mark.parametrize("heads,ratios", [(1, DEFAULT_TOPK_RATIOS), (3, DEFAULT_TOPK_RATIOS), (2, ()),
                                          (2, (0.3, 0.9))])
def test_tksa_matches_literal_algorithm_values_and_gradients(heads, ratios):
  dim = 15 if heads == 3 else 12
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 5, dim)), jnp.float32)
  module = TKSA(dim, heads, topk_ratios=ratios, policy=CPU)
  params = _random_params(module, x, seed=heads)
  assert sorted(n for n in params if n.startswith("attn")) == [f"attn{i + 1}" for i in range(len(ratios))]

  def ours(p, v):
    return jnp.sum(jnp.sin(module.apply({"params": p}, v)))

  def literal(p, v):
    return jnp.sum(jnp.sin(_naive_tksa(p, v, heads, ratios)))

  np.testing.assert_allclose(np.asarray(jax.jit(module.apply)({"params": params}, x)),
                             np.asarray(jax.jit(_naive_tksa, static_argnums=(2, 3))(params, x, heads, ratios)),
                             rtol=1e-5, atol=1e-5)
  g_ours = jax.jit(jax.grad(ours, argnums=(0, 1)))(params, x)
  g_lit = jax.jit(jax.grad(literal, argnums=(0, 1)))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_lit)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_topk_counts_are_the_reference_truncations():
  for c in range(2, 400):
    assert topk_counts(c, DEFAULT_TOPK_RATIOS) == (int(c / 2), int(c * 2 / 3), int(c * 3 / 4), int(c * 4 / 5)), c
  assert topk_counts(48, DEFAULT_TOPK_RATIOS) == (24, 32, 36, 38)
  with pytest.raises(ValueError, match="0 entries"):
    topk_counts(1, DEFAULT_TOPK_RATIOS)


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward variants and MEFC.


def _ffn_literal(ffn_type, p, x, h):
  conv = layers.conv_reference
  if ffn_type == "fn":
    return conv(jax.nn.gelu(conv(x, p["project_in"]["kernel"]), approximate=False), p["project_out"]["kernel"])
  if ffn_type == "dfn":
    y = conv(conv(x, p["project_in"]["kernel"]), p["dwconv"]["kernel"], padding=1, groups=h)
    return conv(jax.nn.gelu(y, approximate=False), p["project_out"]["kernel"])
  if ffn_type == "gdfn":
    y = conv(conv(x, p["project_in"]["kernel"]), p["dwconv"]["kernel"], padding=1, groups=2 * h)
    return conv(jax.nn.gelu(y[..., :h], approximate=False) * y[..., h:], p["project_out"]["kernel"])
  y = conv(x, p["project_in"]["kernel"])
  a3 = jax.nn.relu(conv(y, p["dwconv3x3"]["kernel"], padding=1, groups=2 * h))
  a5 = jax.nn.relu(conv(y, p["dwconv5x5"]["kernel"], padding=2, groups=2 * h))
  x1 = jax.nn.relu(conv(jnp.concatenate([a3[..., :h], a5[..., :h]], -1), p["dwconv3x3_1"]["kernel"], padding=1,
                        groups=h))
  x2 = jax.nn.relu(conv(jnp.concatenate([a3[..., h:], a5[..., h:]], -1), p["dwconv5x5_1"]["kernel"], padding=2,
                        groups=h))
  return conv(jnp.concatenate([x1, x2], -1), p["project_out"]["kernel"])


@pytest.mark.parametrize("ffn_type", sorted(FFN_TYPES))
def test_feedforward_variants(ffn_type):
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 7, 6, 6)), jnp.float32)
  module = FFN_TYPES[ffn_type](6, 2.66, policy=CPU)  # hidden = int(6 * 2.66) = 15 (odd: the MSFN groups straddle halves)
  params = _random_params(module, x)
  np.testing.assert_allclose(np.asarray(jax.jit(module.apply)({"params": params}, x)),
                             np.asarray(jax.jit(_ffn_literal, static_argnums=(0, 3))(ffn_type, params, x, 15)),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pol", [Policy(), CPU], ids=["portable", "cpu"])
def test_avg_pool_excludes_padding_like_torch(pol):
  torch = pytest.importorskip("torch", reason="PyTorch not installed (optional, see README Installation); "
                              "test_matches_pytorch_reference[mefc] covers MEFC's average pooling without it")
  x = np.random.default_rng(2).standard_normal((2, 5, 7, 3)).astype(np.float32)
  want = torch.nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)(
      torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
  got = jax.jit(lambda v: layers.avg_pool_3x3(v, pol))(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("experts", [1, 4, 8, ("sep_conv_3x3", "avg_pool_3x3")])
def test_mefc_experts_switch(experts):
  names = resolve_experts(experts)
  c = 8
  params = jax.eval_shape(lambda: MEFC(c, experts).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, c))))["params"]
  n = len(names)
  assert params["layers_0"]["ca_fc_0"]["kernel"].shape == (c, 8 * n)
  assert params["layers_0"]["ca_fc_2"]["kernel"].shape == (8 * n, 4 * n)
  step = params["layers_1"]["_ops_0"]
  assert step["_out_0"]["kernel"].shape == (1, 1, n * c, c)
  assert sorted(k for k in step if k != "_out_0") == sorted(
      f"_ops_{j}" for j, op in enumerate(names) if op != "avg_pool_3x3")
  with pytest.raises(ValueError):
    resolve_experts(0)
  with pytest.raises(ValueError):
    resolve_experts(("conv_9x9",))


# ----------------------------------------------------------------------------------------------------------------
# Conversion rules.


def test_map_key_naming_scheme():
  assert RULES.map_key("encoder_level1.0.attn.qkv_dwconv.weight") == ("encoder_level1_0", "attn", "qkv_dwconv",
                                                                     "kernel")
  assert RULES.map_key("latent.7.norm2.body.weight") == ("latent_7", "norm2", "scale")
  assert RULES.map_key("latent.7.norm2.body.bias") == ("latent_7", "norm2", "bias")
  assert RULES.map_key("decoder_level2.5.attn.temperature") == ("decoder_level2_5", "attn", "temperature")
  assert RULES.map_key("encoder_level3.1.attn.attn4") == ("encoder_level3_1", "attn", "attn4")
  assert RULES.map_key("down1_2.body.0.weight") == ("down1_2", "body_0", "kernel")
  assert RULES.map_key("encoder_level0.layers.1._ops.2._ops.4.op.1.weight") == (
      "encoder_level0", "layers_1", "_ops_2", "_ops_4", "op_1", "kernel")
  assert RULES.map_key("refinement.layers.0.ca_fc.2.bias") == ("refinement", "layers_0", "ca_fc_2", "bias")
  for bad in ("head.weight", "encoder_level1.0.attn.qkv.running_mean", "0.weight", "output..weight"):
    with pytest.raises(KeyError):
      RULES.map_key(bad)
  w = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7)
  np.testing.assert_array_equal(RULES.convert_array("output.weight", w), w.transpose(2, 3, 1, 0))
  lin = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_array_equal(RULES.convert_array("refinement.layers.0.ca_fc.0.weight", lin), lin.T)


def test_unwrap_containers():
  sd = {"patch_embed.proj.weight": np.zeros((8, 3, 3, 3), np.float32)}
  assert RULES.unwrap({"params": sd}) is sd
  assert RULES.unwrap({"params_ema": sd}) is sd
  assert RULES.unwrap(sd) is sd
  assert list(RULES.unwrap({"params": {"module." + k: v for k, v in sd.items()}})) == list(sd)


@pytest.mark.parametrize("factor", [2.66, 4.0, 2.0, 1.5, 3.0, 2.5, 1.0])
def test_detect_ffn_factor_reproduces_hidden_widths(factor):
  for dim in (8, 16, 48):
    widths = [(dim * m, int(dim * m * factor)) for m in (1, 2, 4, 8, 2)]
    found = detect_ffn_factor(widths)
    assert all(int(d * found) == h for d, h in widths)
    if factor == 2.66:
      assert found == 2.66


# ----------------------------------------------------------------------------------------------------------------
# Training switches.


@pytest.mark.slow  # Compiles three DRSformer gradients (~45 s); the GPU/TPU path (scan) is not the CPU default.
def test_scanned_levels_equal_unrolled_blocks_with_and_without_remat():
  """``policy.scan_blocks`` (the GPU/TPU choice) rolls each level's STBs into one lax.scan over their stacked
  params: same param tree, same outputs and same gradients as the unrolled blocks; ``remat`` changes neither."""
  # XLA convolutions: the scan logic does not depend on them, and their backward passes compile quickly.
  cfg = dict(dim=8, num_blocks=(2, 1, 1, 3), heads=(1, 2, 2, 4), use_mefc=False)
  x = jnp.asarray(np.random.default_rng(3).uniform(size=(1, 16, 16, 3)), jnp.float32)
  unrolled = models.create("drsformer", policy=Policy(scan_blocks=False), **cfg)
  scanned = models.create("drsformer", policy=Policy(scan_blocks=True), **cfg)
  scanned_remat = models.create("drsformer", policy=Policy(scan_blocks=True), remat=True, **cfg)
  params = _random_params(unrolled, x)
  for m in (scanned, scanned_remat):
    shapes = jax.eval_shape(lambda m=m: m.init(jax.random.PRNGKey(0), x))["params"]
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
  assert "latent_2" in params and "encoder_level1_1" in params

  def value_and_grad(model):
    return jax.jit(jax.value_and_grad(lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, x) - 0.5))))

  (l1, g1), (l2, g2), (l3, g3) = (value_and_grad(m)(params) for m in (unrolled, scanned, scanned_remat))
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
  np.testing.assert_allclose(float(l3), float(l1), rtol=1e-6)
  for a, b, c in zip(*(jax.tree_util.tree_leaves(g) for g in (g1, g2, g3))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-6)
  # Every block of a scanned level gets its own gradient.
  assert all(float(jnp.abs(g2[f"latent_{i}"]["attn"]["qkv"]["kernel"]).max()) > 0 for i in range(3))


@pytest.mark.slow  # Op-by-op MEFC gradients, twice (~20 s); the GPU/TPU path (scan) is not the CPU default.
def test_mefc_steps_scanned_equal_unrolled():
  """MEFC's 4 steps run as a ``lax.scan`` under ``policy.scan_blocks`` (GPU/TPU) and unrolled without it (CPU):
  same outputs and gradients, with the CPU kernels in both."""
  c = 8
  cpu = policy.for_platform("cpu")
  x = jnp.asarray(np.random.default_rng(4).uniform(size=(2, 16, 16, c)), jnp.float32)
  params = _random_params(MEFC(c, policy=cpu), x)

  def run(pol):
    module = MEFC(c, policy=pol)
    loss = lambda p: jnp.mean(jnp.square(module.apply({"params": p}, x)))
    return jax.value_and_grad(loss)(params), str(jax.make_jaxpr(loss)(params))

  (l_cpu, g_cpu), jaxpr_cpu = run(cpu)
  (l_scan, g_scan), jaxpr_scan = run(cpu.replace(scan_blocks=True))
  assert " scan[" in jaxpr_scan and " scan[" not in jaxpr_cpu
  np.testing.assert_allclose(float(l_scan), float(l_cpu), rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g_scan), jax.tree_util.tree_leaves(g_cpu)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * float(np.abs(b).max() + 1))


@pytest.mark.parametrize("platform,scanned", [("cpu", False), ("gpu", True), ("cuda", True), ("tpu", True)])
def test_scan_blocks_follow_the_platform_policy(platform, scanned):
  """The platform's policy unrolls the STBs on CPU and scans them on GPU/TPU; an explicit override wins."""
  cfg = dict(dim=8, num_blocks=(2, 1, 1, 1), heads=(1, 2, 2, 4), use_mefc=False)
  x = jnp.zeros((1, 16, 16, 3), jnp.float32)
  params = jax.eval_shape(lambda: models.create("drsformer", **cfg).init(jax.random.PRNGKey(0), x))["params"]
  for setting, want in [(None, scanned), (True, True), (False, False)]:
    module = models.create("drsformer", policy=policy.for_platform(platform, scan_blocks=setting), **cfg)
    jaxpr = str(jax.make_jaxpr(lambda p: module.apply({"params": p}, x))(params))
    assert (" scan[" in jaxpr) == want, (platform, setting)
