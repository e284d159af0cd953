"""End-to-end tests of the PyTorch -> Flax converter (engine, CLI, --verify) on the reference fixtures."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from doc_commands import cli_args, doc_command, substitute
from sparse_restore import checkpoint
from sparse_restore import convert
from sparse_restore.convert import __main__ as cli
from sparse_restore.convert.rules import ConversionError
from sparse_restore.models.policy import Policy

DRS_CASES = ("drsformer_tiny_mefc", "drsformer_tiny_nomefc", "drsformer_tiny_biasfree")
TOL = 1e-5  # fixtures/README.md: max|ours - ref| <= 1e-5 * max|ref|
# PyTorch writes the checkpoint variants of some tests and checks single layers in --verify; the conversion's
# parity proof without it is the fixture-output tests (test_cli_*_fixture_matches_reference).
TORCH_REASON = "PyTorch not installed (optional, see README Installation)"


def _run_cli(*args, cwd=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, "-m", "sparse_restore.convert", *map(str, args)], capture_output=True,
                        text=True, cwd=cwd, env=env, timeout=600)


def _rel_err(ours, ref):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


def _model_output(export_dir, npz_path):
  """The exported model's output on the fixture input. Depthwise convs run as XLA grouped convs under one jit:
  ~2x faster to compile than the op-by-op CPU "shift" path; that path's parity is the model tests' job."""
  import jax
  module, params, info = checkpoint.load_model(str(export_dir), policy=Policy())
  with np.load(npz_path) as d:
    x, ref = d["input"], d["output"]
  y = np.asarray(jax.jit(lambda p, v: module.apply({"params": p}, v))(params, x.transpose(0, 2, 3, 1)))
  return y.transpose(0, 3, 1, 2), ref, info


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = np.asarray(v)
  return out


def _assert_same_params(a, b):
  fa, fb = _flat(a), _flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == np.float32 and fb[k].dtype == np.float32, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


@pytest.mark.parametrize("case", DRS_CASES)
def test_cli_drsformer_fixture_matches_reference(fixtures_dir, tmp_path, case):
  out = tmp_path / "export"
  # The mefc case relies on guessing the architecture from the keys; the others name it.
  arch = [] if case == "drsformer_tiny_mefc" else ["--arch", "drsformer"]
  r = _run_cli(*arch, "--input", fixtures_dir / f"{case}.pth", "--output", out, cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert "drsformer" in r.stdout and str(out) in r.stdout
  y, ref, info = _model_output(out, fixtures_dir / f"{case}.npz")
  assert info["arch"] == "drsformer" and info["source"] == f"{case}.pth"
  assert info["converted_from"] == "pytorch"
  expected = json.loads((fixtures_dir / f"{case}.json").read_text())["constructor_kwargs"]
  assert info["config"]["dim"] == expected["dim"]
  assert list(info["config"]["num_blocks"]) == expected["num_blocks"]
  assert info["config"]["bias"] == expected["bias"]
  err = _rel_err(y, ref)
  assert err <= TOL, f"{case}: relative error {err:.3g}"


def test_convert_ast_with_verify_matches_reference(fixtures_dir, tmp_path, capsys):
  """README: `convert --arch ast --input AST_SPAD.pth --output models/ast_spad --verify` on the AST fixture:
  every layer checked (against torch when installed), the model run, the export re-read; the
  relative_position_index buffers are dropped and the export reproduces the PyTorch network's output."""
  words = doc_command("python -m sparse_restore.convert --arch ast --input AST_SPAD.pth --output models/ast_spad "
                      "--verify")
  out = tmp_path / "models" / "ast_spad"
  args = substitute(cli_args(words, "sparse_restore.convert"),
                    {"AST_SPAD.pth": str(fixtures_dir / "ast_tiny.pth"), "models/ast_spad": str(out)})
  assert cli.main(args) == 0, capsys.readouterr().err
  text = capsys.readouterr().out
  assert "FAILED" not in text and "verify: smoke: 1 checked, 1 passed: ok" in text, text
  assert "export re-read" in text
  assert "dropped" in text  # the relative_position_index buffers
  if importlib.util.find_spec("torch") is not None:
    assert re.search(r"verify: conv: \d+ checked", text), text
  y, ref, info = _model_output(out, fixtures_dir / "ast_tiny.npz")
  assert info["arch"] == "ast" and info["config"]["embed_dim"] == 8
  err = _rel_err(y, ref)
  assert err <= TOL, f"ast_tiny: relative error {err:.3g}"


def test_containers_prefix_and_safetensors_give_identical_params(fixtures_dir, tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON + ": it writes the container variants")
  import safetensors.numpy
  src = fixtures_dir / "drsformer_tiny_nomefc.pth"
  state = convert.load_state_dict(src)
  assert "patch_embed.proj.weight" in state
  config, params = convert.convert_state_dict(state, "drsformer")
  assert config["use_mefc"] is False and config["dim"] == 8

  tensors = {k: torch.from_numpy(v) for k, v in state.items()}
  files = {
      "bare.pth": tensors,
      "prefixed.pth": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tensors.items()}, "optimizer": {}},
      "ema.pth": {"params_ema": tensors},
  }
  for name, obj in files.items():
    torch.save(obj, tmp_path / name)
  safetensors.numpy.save_file(state, str(tmp_path / "weights.safetensors"))
  files["weights.safetensors"] = None
  for name in files:
    loaded = convert.load_state_dict(tmp_path / name)
    assert sorted(loaded) == sorted(state), name  # safetensors stores keys sorted
    cfg, got = convert.convert_state_dict(loaded, "drsformer")
    assert cfg == config, name
    _assert_same_params(got, params)
  # BasicSR files with both: 'params' is the default (what the reference test script loads), --key picks the other.
  torch.save({"params": tensors, "params_ema": {k: v * 2 for k, v in tensors.items()}}, tmp_path / "both.pth")
  w = "patch_embed.proj.weight"
  np.testing.assert_array_equal(convert.load_state_dict(tmp_path / "both.pth")[w], state[w])
  np.testing.assert_array_equal(convert.load_state_dict(tmp_path / "both.pth", key="params_ema")[w], 2 * state[w])
  with pytest.raises(ConversionError, match="no dict under 'ema'"):
    convert.load_state_dict(tmp_path / "both.pth", key="ema")
  # The in-memory path strips `module.` too.
  _, got = convert.convert_state_dict({f"module.{k}": v for k, v in state.items()}, "drsformer")
  _assert_same_params(got, params)


def test_all_mismatches_reported_and_nothing_written(fixtures_dir, tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON + ": it writes the mismatched checkpoint")
  from sparse_restore.convert.drsformer import RULES
  state = convert.load_state_dict(fixtures_dir / "drsformer_tiny_nomefc.pth")
  removed, extra, wrong = "decoder_level3.0.attn.qkv_dwconv.weight", "encoder_level1.0.attn.bonus.weight", \
      "latent.1.norm1.body.weight"
  assert removed in state and wrong in state
  state.pop(removed)
  state[extra] = np.ones((3, 3), np.float32)
  state[wrong] = np.ones(state[wrong].shape[0] + 1, np.float32)
  path = tmp_path / "broken.pth"
  torch.save({"params": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
  out = tmp_path / "should_not_exist"
  r = _run_cli("--input", path, "--output", out)
  assert r.returncode == 1, r.stdout + r.stderr
  assert "Traceback" not in r.stderr
  assert "3 problem(s)" in r.stderr and "nothing was written" in r.stderr
  assert "/".join(RULES.map_key(removed)) in r.stderr      # missing: named by its Flax path
  assert extra in r.stderr                                  # unexpected: named by its PyTorch name
  assert wrong in r.stderr and "[65]" in r.stderr and "[64]" in r.stderr  # shape: name and both shapes
  assert not out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".should_not_exist")]  # no temp dirs left


def test_existing_output_refused_without_overwrite(fixtures_dir, tmp_path):
  out = tmp_path / "export"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  src = fixtures_dir / "drsformer_tiny_nomefc.pth"
  r = _run_cli("--arch", "drsformer", "--input", src, "--output", out)
  assert r.returncode == 1
  assert "--overwrite" in r.stderr and "Traceback" not in r.stderr
  assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
  assert (out / "keep.txt").read_text() == "precious"
  r = _run_cli("--arch", "drsformer", "--input", src, "--output", out, "--overwrite", "--quiet")
  assert r.returncode == 0, r.stderr
  assert r.stdout == ""
  assert sorted(p.name for p in out.iterdir()) == ["model.json", "params"]


class _Evil:
  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_via_cli(tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON + ": it writes the malicious checkpoint "
                              "(test_reader.py's handmade archive covers the refusal without it)")
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"params": {"patch_embed.proj.weight": torch.ones(8, 3, 3, 3)}, "x": _Evil(marker)}, path)
  out = tmp_path / "out"
  r = _run_cli("--input", path, "--output", out)
  assert r.returncode == 1
  assert f"disallowed global '{os.system.__module__}.system'" in r.stderr
  assert str(path) in r.stderr and "Traceback" not in r.stderr
  assert not marker.exists() and not out.exists()


def test_usage_errors_exit_2(capsys):
  for argv in ([], ["--input", "x.pth"], ["--arch", "resnet", "--input", "x", "--output", "y"],
               ["--input", "x", "--output", "y", "--verify-size", "0"]):
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    assert e.value.code == 2, argv
  err = capsys.readouterr().err
  assert "usage: python -m sparse_restore.convert" in err and "invalid choice: 'resnet'" in err


def test_missing_input_and_unknown_arch_exit_1(tmp_path, capsys):
  assert cli.main(["--input", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "o")]) == 1
  assert "no such file" in capsys.readouterr().err
  np.savez(tmp_path / "junk.npz", a=np.ones(3))  # a zip, but not a checkpoint
  assert cli.main(["--input", str(tmp_path / "junk.npz"), "--output", str(tmp_path / "o")]) == 1
  assert "not a PyTorch checkpoint" in capsys.readouterr().err
  import safetensors.numpy
  safetensors.numpy.save_file({"conv.weight": np.ones((2, 2, 1, 1), np.float32)}, str(tmp_path / "w.safetensors"))
  assert cli.main(["--input", str(tmp_path / "w.safetensors"), "--output", str(tmp_path / "o")]) == 1
  assert "pass --arch" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


def test_wrong_arch_is_named(fixtures_dir, tmp_path, capsys):
  for arch, case, right in (("ast", "drsformer_tiny_nomefc", "drsformer"), ("drsformer", "ast_tiny", "ast")):
    argv = ["--arch", arch, "--input", str(fixtures_dir / f"{case}.pth"), "--output", str(tmp_path / "o")]
    assert cli.main(argv) == 1
    assert f"this is a {right} checkpoint" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


def test_verify_passes_and_catches_a_wrong_reference(fixtures_dir, tmp_path, monkeypatch):
  src, npz = fixtures_dir / "drsformer_tiny_nomefc.pth", fixtures_dir / "drsformer_tiny_nomefc.npz"
  lines = []
  conv = convert.convert_checkpoint(src, tmp_path / "ok", "drsformer", verify_npz=npz, log=lines.append)
  text = "\n".join(lines)
  assert "verify: reference output: 1 checked" in text and "FAILED" not in text
  assert "export re-read" in text
  assert conv.num_params > 0 and (tmp_path / "ok" / "model.json").exists()

  # Without torch only the model-level checks run, and the output says so.
  from sparse_restore.convert import verify
  lines = []
  monkeypatch.setattr(verify, "_torch", lambda: None)
  checks = verify.verify_conversion(conv, npz_path=npz, log=lines.append)
  assert [c.kind for c in checks] == ["reference output"] and checks[0].ok
  assert "torch is not installed" in "\n".join(lines)
  monkeypatch.undo()

  # A reference that differs by 1e-3 of the output range fails (checked on the in-memory conversion, then through
  # convert_checkpoint, which must not write anything).
  with np.load(npz) as d:
    bad_out = d["output"].copy()
    bad_out[0, 1, 5, 7] += 1e-3 * np.abs(bad_out).max()
    np.savez(tmp_path / "wrong.npz", input=d["input"], output=bad_out)
  check = verify.npz_check(conv.module, conv.params, tmp_path / "wrong.npz")
  assert not check.ok and 5e-4 < check.error < 2e-3
  with pytest.raises(ConversionError, match=r"(?s)verification failed.*reference output: wrong.npz"):
    convert.convert_checkpoint(src, tmp_path / "bad", "drsformer", verify_npz=tmp_path / "wrong.npz", log=None)
  assert not (tmp_path / "bad").exists()

  # With PyTorch, the first conversion also checked single layers against torch.nn.functional.
  pytest.importorskip("torch", reason=TORCH_REASON + ": the per-layer checks need it")
  assert "verify: conv:" in text and "verify: depthwise conv (shift):" in text and "verify: copy:" in text


def test_verify_catches_a_wrong_layout(fixtures_dir):
  """A kernel stored transposed the wrong way round (same shape) fails the per-layer check against torch."""
  pytest.importorskip("torch", reason=TORCH_REASON + ": the per-layer check runs torch.nn.functional")
  from sparse_restore.convert import verify
  from sparse_restore.convert.engine import Entry
  rng = np.random.default_rng(0)
  w = rng.standard_normal((6, 6, 3, 3)).astype(np.float32)   # square in/out: a swapped kernel keeps its shape
  good = np.transpose(w, (2, 3, 1, 0))
  swapped = np.transpose(w, (2, 3, 0, 1))
  lin = rng.standard_normal((4, 4)).astype(np.float32)
  checks = verify.kernel_checks([Entry("a.weight", w, ("a", "kernel"), good),
                                 Entry("b.weight", w, ("b", "kernel"), swapped),
                                 Entry("c.weight", lin, ("c", "kernel"), lin.T.copy())])
  by_name = {c.name.split(" ")[0]: c for c in checks}
  assert by_name["a.weight"].ok and by_name["c.weight"].ok and by_name["c.weight"].kind == "linear"
  assert not by_name["b.weight"].ok and by_name["b.weight"].kind == "unrecognised layout"


def test_smoke_check_rounds_size_and_catches_non_finite():
  import jax.numpy as jnp
  from sparse_restore.convert import verify
  from sparse_restore.models.layers import Conv2d

  class Tiny(Conv2d):
    size_multiple = 4

  module = Tiny(3, 3, padding=1)
  params = {"kernel": np.full((3, 3, 3, 3), 0.1, np.float32), "bias": np.zeros(3, np.float32)}
  check = verify.smoke_check(module, params, 10)
  assert check.ok and check.name == "forward 12x12"
  params["bias"] = np.array([0.0, jnp.nan, 0.0], np.float32)
  assert not verify.smoke_check(module, params, 10).ok
