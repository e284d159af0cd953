"""Tests of the AST port: parity with the authors' PyTorch model, converter rules, windows/masks, padding rule."""
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sparse_restore import models
from sparse_restore.convert import ast as ast_rules
from sparse_restore.models import assa
from sparse_restore.models import frfn
from sparse_restore.models import ast as ast_model
from sparse_restore.models.ast import AST, PRESETS
from sparse_restore.models import policy
from sparse_restore.models.layers import pad_to_multiple
from sparse_restore.models.policy import Policy

CPU = policy.for_platform("cpu")  # shift kernels, guards, 4 MiB chunks: what the entry points choose on a CPU

TINY_ARGS = ("img_size", "embed_dim", "win_size", "token_mlp", "depths", "dd_in")
LEFF_REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "leff_torch_reference.npz"
TORCH_REASON = "PyTorch not installed (optional, see README Installation)"


def _flat(tree):
  return {tuple(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _random_params(module, *args, seed=0, scale=0.1):
  """Random float32 params of ``module`` without running its initialisers (compiling the PRNG code of a full
  model's ``init`` takes minutes on this CPU; ``eval_shape`` only traces it)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape) * scale, jnp.float32), shapes)


def _num_params(module):
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))))["params"]
  return shapes, sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes))


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
  """(config, params, input NHWC, reference output NHWC, jitted apply) of the ast_tiny fixture, converted by
  our rules (one jitted function shared by the tests, so each input shape compiles once)."""
  from sparse_restore.convert import engine, load_state_dict
  # Read by the converter's own reader (test_reader.py proves it equals torch.load), so no PyTorch is needed.
  state = load_state_dict(fixtures_dir / "ast_tiny.pth", arch="ast")
  config, params = engine.convert_state_dict(state, "ast")
  data = np.load(fixtures_dir / "ast_tiny.npz")
  x = data["input"].transpose(0, 2, 3, 1)
  ref = data["output"].transpose(0, 2, 3, 1)
  return config, jax.tree_util.tree_map(jnp.asarray, params), x, ref, jax.jit(AST(**config, policy=CPU).apply)


# ----------------------------------------------------------------------------------------------- parity / converter

@pytest.mark.parametrize("pol", [None, Policy(chunk_bytes=2), policy.for_platform("gpu")],
                         ids=["cpu", "xla-chunked", "gpu"])
def test_parity_with_reference(tiny, pol):
  """Converted fixture weights reproduce the PyTorch output (shifted windows in two decoder stages) under the
  CPU policy, with the XLA depthwise conv plus maximal chunking (one window / 8 rows per step), and under the
  GPU policy (computed on this CPU)."""
  config, params, x, ref, apply = tiny
  if pol is not None:
    apply = jax.jit(AST(**config, policy=pol).apply)
  out = np.asarray(apply({"params": params}, x))
  err = np.abs(out - ref).max()
  assert err <= 1e-5 * np.abs(ref).max(), (err, np.abs(ref).max())


def test_detect_config_reproduces_fixture_args(tiny, fixtures_dir):
  config = tiny[0]
  kwargs = json.loads((fixtures_dir / "ast_tiny.json").read_text())["constructor_kwargs"]
  for name in TINY_ARGS:
    assert config[name] == kwargs[name], name
  assert config["num_heads"] == list(ast_model.DEFAULT_HEADS) and config["mlp_ratio"] == 4.0
  assert config["qkv_bias"] is True and config["in_chans"] == 3


def test_ast_b_manifest_maps_onto_flax_tree(fixtures_dir):
  """Every AST_B state_dict entry maps to a Flax param of the right shape (buffers dropped), and back."""
  manifest = json.loads((fixtures_dir / "ast_b_default_manifest.json").read_text())
  assert len(manifest) == 611
  shapes, total = _num_params(AST.from_preset("AST_B"))
  assert total == 65_362_455
  expected = {k: v.shape for k, v in _flat(shapes).items()}
  seen, buffers = {}, 0
  for key, info in manifest.items():
    path = ast_rules.map_key("module." + key)
    if not info["is_parameter"]:
      assert path is None and key.endswith("attn.relative_position_index"), key
      buffers += 1
      continue
    assert path in expected, (key, path)
    assert path not in seen, (key, seen.get(path))
    seen[path] = key
    torch_like = np.broadcast_to(np.float32(0), info["shape"])
    assert ast_rules.convert_array(key, torch_like).shape == expected[path], key
  assert buffers == 21 and len(seen) == 590
  assert set(seen) == set(expected)
  # The configuration read off the (shape-only) AST_B state is the preset.
  state = {k: np.broadcast_to(np.float32(0), v["shape"]) for k, v in manifest.items()}
  config = ast_rules.detect_config(state)
  preset = dict(PRESETS["AST_B"])
  for k, v in preset.items():
    assert config[k] == (list(v) if isinstance(v, tuple) else v), k


def test_ast_t_param_count():
  assert _num_params(AST.from_preset("AST_T"))[1] == 6_645_347


def test_converter_rules_errors_and_layouts():
  with pytest.raises(KeyError):
    ast_rules.map_key("encoderlayer_0.blocks.0.attn.unknown")
  with pytest.raises(ast_rules.ConversionError, match="state_dict"):
    ast_rules.unwrap({"foo": 1})
  assert ast_rules.unwrap({"epoch": 3, "state_dict": {"a": 1}, "optimizer": {}}) == {"a": 1}
  w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # ConvTranspose2d [I, O, kh, kw]
  k = ast_rules.convert_array("upsample_0.deconv.0.weight", w)
  np.testing.assert_array_equal(k[1, 0, :, :], w[:, :, 0, 1])  # spatially flipped [kh, kw, I, O]
  d = np.arange(6, dtype=np.float32).reshape(2, 3)
  np.testing.assert_array_equal(ast_rules.convert_array("conv.blocks.1.attn.proj.weight", d), d.T)


def test_leff_checkpoints_convert(fixtures_dir):
  """A token_mlp='leff' state dict (the reference constructor's default) is detected and converts completely."""
  from sparse_restore.convert import engine, load_state_dict
  state = {}
  for k, v in load_state_dict(fixtures_dir / "ast_tiny.pth", arch="ast").items():
    if k.endswith("partial_conv3.weight"):
      continue
    if ".mlp.linear1.0." in k:
      v = v[: v.shape[0] // 2]  # LeFF: linear1 is C -> hidden (FRFN: C -> 2 hidden)
    state[k] = v
  config, params = engine.convert_state_dict(state, "ast")
  assert config["token_mlp"] == "leff" and config["mlp_ratio"] == 4.0
  out = jax.jit(AST(**config).apply)({"params": params}, np.zeros((1, 16, 24, 3), np.float32))
  assert out.shape == (1, 16, 24, 3) and np.isfinite(np.asarray(out)).all()


def _leff_torch(torch, x, p):
  """LeFF with torch.nn.functional (the reference's Linear/GELU/depthwise Conv2d/GELU/Linear)."""
  t = torch.from_numpy
  h = torch.nn.functional.gelu(t(x) @ t(p["linear1"]["kernel"]) + t(p["linear1"]["bias"]))
  w = t(np.ascontiguousarray(p["dwconv"]["kernel"].transpose(3, 2, 0, 1)))  # [3,3,1,C] -> [C,1,3,3]
  h = torch.nn.functional.conv2d(h.permute(0, 3, 1, 2), w, t(p["dwconv"]["bias"]), padding=1, groups=32)
  h = torch.nn.functional.gelu(h).permute(0, 2, 3, 1)
  return (h @ t(p["linear2"]["kernel"]) + t(p["linear2"]["bias"])).numpy()


def _leff_stored():
  """(input, params, torch output) stored by ``python tests/test_ast.py --write-leff-reference``: the fixtures
  of ../shared use FRFN, so LeFF's torch parity is kept here for runs without PyTorch."""
  data = np.load(LEFF_REFERENCE)
  params = traverse_util.unflatten_dict({tuple(k.split("/")): data[k] for k in data.files if "/" in k})
  return data["input"], params, data["output"]


@pytest.mark.parametrize("pol", [Policy(), CPU], ids=["xla", "cpu"])
def test_leff_matches_stored_torch_output(pol):
  x, p, ref = _leff_stored()
  out = np.asarray(frfn.LeFF(8, 32, policy=pol).apply({"params": p}, x))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_leff_matches_torch_ops():
  """LeFF against torch.nn.functional on the stored input and parameters; the stored output is what torch gives."""
  torch = pytest.importorskip("torch", reason=TORCH_REASON + "; test_leff_matches_stored_torch_output covers it")
  x, p, stored = _leff_stored()
  p = jax.tree_util.tree_map(np.array, p)  # writable copies for torch
  ref = _leff_torch(torch, x, p)
  np.testing.assert_allclose(ref, stored, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(frfn.LeFF(8, 32).apply({"params": p}, x)), ref, rtol=1e-5, atol=1e-5)


def _write_leff_reference():
  import torch
  x = np.random.default_rng(0).normal(size=(2, 6, 10, 8)).astype(np.float32)
  p = jax.tree_util.tree_map(np.array, _random_params(frfn.LeFF(8, 32), x, scale=0.3))
  flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(p).items()}
  LEFF_REFERENCE.parent.mkdir(exist_ok=True)
  np.savez(LEFF_REFERENCE, input=x, output=_leff_torch(torch, x, p), **flat)


# ------------------------------------------------------------------------------------------ windows, masks, indices

def _reference_shift_mask(h, w, ws, s):
  """The reference construction (ast.md 1.6): region ids painted by slices, partitioned, compared."""
  img = np.zeros((1, h, w, 1), np.float32)
  cnt = 0
  for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
    for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
      img[:, hs, wsl, :] = cnt
      cnt += 1
  win = img.reshape(1, h // ws, ws, w // ws, ws, 1).transpose(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws)
  diff = win[:, None, :] - win[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


@pytest.mark.parametrize("h,w,ws,s", [(16, 16, 8, 4), (16, 32, 8, 4), (24, 40, 8, 4), (8, 12, 4, 2), (32, 16, 8, 2)])
def test_shift_mask_matches_reference(h, w, ws, s):
  ref = _reference_shift_mask(h, w, ws, s)
  np.testing.assert_array_equal(assa.shifted_window_mask(h, w, ws, s), ref)


@pytest.mark.parametrize("ws", [8, 4, 3])
def test_relative_position_index_matches_reference(ws):
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0).copy()
  rel[:, :, 0] += ws - 1
  rel[:, :, 1] += ws - 1
  rel[:, :, 0] *= 2 * ws - 1
  np.testing.assert_array_equal(assa.relative_position_index(ws), rel.sum(-1))


def test_window_partition_order_and_inverse():
  x = np.random.default_rng(0).normal(size=(2, 16, 24, 3)).astype(np.float32)
  win = np.asarray(assa.window_partition(x, 8))
  assert win.shape == (2 * 2 * 3, 64, 3)
  np.testing.assert_array_equal(win[4], x[0, 8:16, 8:16].reshape(64, 3))  # batch 0, window row 1, col 1
  np.testing.assert_array_equal(win[6], x[1, 0:8, 0:8].reshape(64, 3))
  np.testing.assert_array_equal(np.asarray(assa.window_reverse(win, 8, 16, 24)), x)


@pytest.mark.parametrize("chunk_bytes", [0, 2, 12_000, 70_000])
def test_assa_matches_numpy_formula(chunk_bytes):
  """ASSA on masked windows (2 images x 4 windows, region ids as for a shifted layout) equals the formula of
  ast.md 2.1 written out in NumPy: unchunked, and 1, 2 or 4 (one image) windows per lax.map step."""
  rng = np.random.default_rng(1)
  c, heads, ws, nw = 8, 2, 4, 4
  n, d = ws * ws, c // heads
  x = rng.normal(size=(2 * nw, n, c)).astype(np.float32)
  ids = assa.shift_region_ids(8, 8, ws, 2)
  mask = assa.shifted_window_mask(8, 8, ws, 2)
  assert ids.shape == (nw, n) and (mask != 0).any()
  module = assa.ASSA(c, heads, ws, policy=Policy(chunk_bytes=chunk_bytes))
  params = _random_params(module, x, ids, seed=2, scale=1.0)
  out = np.asarray(jax.jit(module.apply)({"params": params}, x, ids))

  p = jax.tree_util.tree_map(np.asarray, params)
  lin = lambda v, q: v @ q["kernel"] + q["bias"]
  q = lin(x, p["qkv"]["to_q"]).reshape(-1, n, heads, d).transpose(0, 2, 1, 3) * d ** -0.5
  kv = lin(x, p["qkv"]["to_kv"]).reshape(-1, n, 2, heads, d).transpose(2, 0, 3, 1, 4)
  s = q @ kv[0].transpose(0, 1, 3, 2)
  bias = p["relative_position_bias_table"][assa.relative_position_index(ws).reshape(-1)]
  s = s + bias.reshape(n, n, heads).transpose(2, 0, 1)[None]
  s = (s.reshape(2, nw, heads, n, n) + mask[None, :, None]).reshape(-1, heads, n, n)
  soft = np.exp(s - s.max(-1, keepdims=True))
  soft /= soft.sum(-1, keepdims=True)
  mix = np.exp(p["w"]) / np.exp(p["w"]).sum()
  a = mix[0] * soft + mix[1] * np.maximum(s, 0) ** 2
  ref = lin((a @ kv[1]).transpose(0, 2, 1, 3).reshape(-1, n, c), p["proj"])
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_upsample_equals_flax_conv_transpose():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 6))
  up = ast_model.Upsample(4)
  params = {"params": _random_params(up, x)}
  flax_ct = nn.ConvTranspose(4, (2, 2), strides=(2, 2), padding="VALID", transpose_kernel=False)
  np.testing.assert_allclose(up.apply(params, x), flax_ct.apply(params, x), rtol=1e-5, atol=1e-5)


def test_gelu_is_exact_erf_form():
  """Our GELU is PyTorch's exact one (erf form; its far negative tail saturates to 0 exactly like PyTorch's,
  hence the absolute tolerance against JAX's erfc-based version)."""
  x = np.linspace(-8.0, 8.0, 4001, dtype=np.float32)
  ours = np.asarray(frfn.gelu(jnp.asarray(x)))
  np.testing.assert_allclose(ours, jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
  assert np.abs(ours - np.asarray(jax.nn.gelu(x, approximate=True))).max() > 1e-4  # not the tanh form
  torch = pytest.importorskip("torch", reason=TORCH_REASON + "; the erf-form comparison above covers it")
  np.testing.assert_allclose(ours, torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("conv_impl", ["shift", "xla"])
def test_frfn_row_chunks_equal_whole_image(conv_impl):
  pol = CPU.replace(conv=conv_impl)
  """FRFN in chunks of rows (with halo rows and image-border zeroing) equals the unchunked FRFN."""
  assert frfn.chunk_rows(24, 1000, 2) == 8 and frfn.chunk_rows(24, 1000, 0) == 24
  assert frfn.chunk_rows(64, 1000, 18_000) == 16 and frfn.chunk_rows(12, 1000, 2) == 12
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 24, 20, 16))
  whole = frfn.FRFN(16, 64, policy=pol.replace(chunk_bytes=0))
  params = {"params": _random_params(whole, x, scale=0.3)}
  ref = np.asarray(jax.jit(whole.apply)(params, x))
  out = np.asarray(jax.jit(frfn.FRFN(16, 64, policy=pol.replace(chunk_bytes=2)).apply)(params, x))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_construction_time_windows_and_shifts():
  """Window clamping / shifts follow the reference's construction-time img_size (ast.md 1.3)."""
  spec = lambda m: {s["name"]: s["windows"] for s in m.stage_specs()}
  b128 = spec(AST.from_preset("AST_B"))
  assert b128["conv"] == ((8, 0), (8, 0))
  assert b128["decoderlayer_0"] == ((8, 0), (8, 4)) * 4 and b128["decoderlayer_3"] == ((8, 0),)
  assert spec(AST.from_preset("AST_B", img_size=256))["conv"] == ((8, 0), (8, 4))
  small = AST.from_preset("AST_T", img_size=64)
  assert spec(small)["conv"] == ((4, 0), (4, 0)) and small.pad_multiple == 64
  assert AST.from_preset("AST_B").pad_multiple == 128 and AST.size_multiple == 1
  rates = ast_model.drop_path_rates(PRESETS["AST_B"]["depths"], 0.1)
  assert len(rates[2]) == 8 and rates[4] == (0.1, 0.1) and rates[8] == (0.0,)
  np.testing.assert_allclose(rates[5], np.linspace(0, 0.1, 19)[::-1][:8])


def test_registry_and_bad_input():
  model = models.create("ast", **PRESETS["AST_T"])
  assert isinstance(model, AST)
  with pytest.raises(ValueError, match="3 channels"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 4)))
  with pytest.raises(ValueError, match="token_mlp"):
    AST(token_mlp="ffn")


# -------------------------------------------------------------------------------------------- any input size

def _wide(x):
  """A 128x256 image made from the 128x128 fixture input."""
  return np.concatenate([x, x[:, :, ::-1] * 0.5], axis=2)


def test_non_square_input_follows_padding_rule(tiny):
  """100x140 runs; it equals the model run on the input reflect-padded bottom/right to 128x256, cropped."""
  config, params, x, _, apply = tiny
  img = _wide(x)[:, :100, :140]
  out = np.asarray(apply({"params": params}, img))
  assert out.shape == (1, 100, 140, 3)
  padded, _ = pad_to_multiple(jnp.asarray(img), 128, mode="reflect")
  assert padded.shape == (1, 128, 256, 3)
  np.testing.assert_array_equal(np.asarray(padded)[:, :100, :140], img)
  np.testing.assert_array_equal(np.asarray(padded)[:, 100:, :140], img[:, 98:70:-1, :])  # reflect, no repeat
  full = np.asarray(apply({"params": params}, padded))
  np.testing.assert_allclose(out, full[:, :100, :140], rtol=0, atol=1e-5 * np.abs(full).max())
  # Zero padding is available too and gives a different (equally well-defined) result.
  out0 = np.asarray(jax.jit(AST(**config, pad_mode="constant").apply)({"params": params}, img))
  zpad = np.pad(img, ((0, 0), (0, 28), (0, 116), (0, 0)))
  full0 = np.asarray(apply({"params": params}, zpad))
  np.testing.assert_allclose(out0, full0[:, :100, :140], rtol=0, atol=1e-5 * np.abs(full0).max())
  assert np.abs(out0 - out).max() > 1e-3


def _transpose_params(params):
  """Parameters of the spatially transposed network: conv kernels [kh, kw, ...] swap kh/kw; the relative
  position tables swap the (dh, dw) offsets."""
  flat = {}
  for path, a in _flat(params).items():
    a = np.asarray(a)
    if path[-1] == "kernel" and a.ndim == 4:
      a = a.transpose(1, 0, 2, 3)
    elif path[-1] == "relative_position_bias_table":
      side = int(round(np.sqrt(a.shape[0])))
      a = a.reshape(side, side, -1).transpose(1, 0, 2).reshape(a.shape)
    flat[path] = jnp.asarray(a)
  return traverse_util.unflatten_dict(flat)


def test_non_square_windows_are_oriented_correctly(tiny):
  """On a 128x256 image, transposing the input and every spatial parameter transposes the output: shows the
  non-square window partition, shifts and masks keep H and W apart."""
  _, params, x, _, apply = tiny
  img = _wide(x)
  out = np.asarray(apply({"params": params}, img))
  out_t = np.asarray(apply({"params": _transpose_params(params)}, img.transpose(0, 2, 1, 3)))
  np.testing.assert_allclose(out_t.transpose(0, 2, 1, 3), out, rtol=0, atol=1e-5 * np.abs(out).max())


# ------------------------------------------------------------------------------------- jit, dtype, training paths

def _small_model(**kw):
  """A cheap AST: img_size 32 / window 4 clamp the bottleneck window to 2 and give pad_multiple 32;
  decoderlayer_1 has a shifted block."""
  model = AST(embed_dim=4, depths=(1, 1, 1, 1, 1, 1, 2, 1, 1), img_size=32, win_size=4, **kw)
  assert model.pad_multiple == 32 and model.stage_specs()[6]["windows"] == ((4, 0), (4, 2))
  return model


def test_jit_equals_eager_block():
  """A shifted ASSA block on a non-square grid gives the same result with and without jit."""
  block = ast_model.TransformerBlock(16, 2, 4, 2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 12, 16))
  variables = {"params": _random_params(block, x)}
  eager = np.asarray(block.apply(variables, x))
  np.testing.assert_allclose(np.asarray(jax.jit(block.apply)(variables, x)), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_jit_equals_eager_model():
  model = _small_model()
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 40, 24, 3))
  variables = {"params": _random_params(model, x)}
  eager = np.asarray(model.apply(variables, x))
  jitted = np.asarray(jax.jit(model.apply)(variables, x))
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


def test_bfloat16_forward(tiny):
  config, params, x, ref, _ = tiny
  out = jax.jit(AST(**config, policy=CPU.replace(dtype="bfloat16")).apply)({"params": params}, x)
  assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
  rel = np.abs(np.asarray(out) - ref).max() / np.abs(ref).max()
  assert rel < 0.05, rel


def test_drop_path():
  """Stochastic depth only in training (with a 'dropout' rng); different rngs give different outputs."""
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 16, 16, 3))
  model = _small_model(drop_path_rate=0.5)
  variables = {"params": _random_params(model, x)}
  apply = jax.jit(model.apply, static_argnums=2)
  base = np.asarray(apply(variables, x, False))
  np.testing.assert_array_equal(np.asarray(apply(variables, x, False)), base)
  a = np.asarray(apply(variables, x, True, rngs={"dropout": jax.random.PRNGKey(2)}))
  b = np.asarray(apply(variables, x, True, rngs={"dropout": jax.random.PRNGKey(3)}))
  assert np.abs(a - b).max() > 1e-6 and np.abs(a - base).max() > 1e-6
  with pytest.raises(Exception, match="dropout"):
    apply(variables, x, True)  # training with a drop rate needs the 'dropout' rng


def test_remat_keeps_values_and_gradients():
  """nn.remat per block (a stage of two ASSA blocks, one shifted, with drop path) changes no gradient."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 16, 16))
  make = lambda remat: ast_model.BasicASTLayer(16, 2, ((4, 0), (4, 2)), (0.3, 0.3), True, remat=remat)
  params = _random_params(make(False), x)

  def loss(params, remat):
    out = make(remat).apply({"params": params}, x, True, rngs={"dropout": jax.random.PRNGKey(4)})
    return jnp.mean(out ** 2)

  l0, g0 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, False)
  l1, g1 = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, True)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for p0, p1 in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(p1, p0, rtol=1e-4, atol=1e-7)
  assert jax.tree_util.tree_structure(_random_params(_small_model(remat=True), x[..., :3])) == \
      jax.tree_util.tree_structure(_random_params(_small_model(), x[..., :3]))


if __name__ == "__main__" and sys.argv[1:] == ["--write-leff-reference"]:
  _write_leff_reference()
