"""Smoke test of the benchmark CLI (``python -m sparse_restore.bench``) on a tiny registry network."""
import json
import re
import sys

import pytest

from doc_commands import COMMANDS, cli_args, doc_command, variants
from sparse_restore import bench, losses, train

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 2], "use_mefc": False}
TINY_ONE_HEAD = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 1], "use_mefc": False}
TINY_AST = {"embed_dim": 8, "depths": [1] * 9, "img_size": 32}
FIELDS = ("median_s", "min_s", "median_cpu_s", "runs", "compile_s", "compile_cpu_s", "first_call_s",
          "images_per_s", "us_per_pixel", "peak_rss_gb", "gflop", "params", "backend", "model_kwargs")


@pytest.mark.parametrize("mode,batch,sizes", [("forward", 1, (16, 24)), ("train", 2, (16,))])
def test_bench_cli_prints_one_json_record_per_size(capsys, monkeypatch, mode, batch, sizes):
  # The train mode must time the training module's own step (one device), not a copy of it.
  built = []
  real_step = train.make_train_step
  monkeypatch.setattr(train, "make_train_step", lambda mesh, **kw: built.append((mesh, kw)) or real_step(mesh, **kw))
  rc = bench.main(["--model", "drsformer", "--model-kwargs", json.dumps(TINY), "--size", ",".join(map(str, sizes)),
                   "--batch", str(batch), "--mode", mode, "--runs", "2"])
  assert rc == 0
  lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
  assert len(lines) == len(sizes)
  for line, size in zip(lines, sizes):
    rec = json.loads(line)
    missing = [f for f in FIELDS if f not in rec]
    assert not missing, f"missing fields {missing} in {rec}"
    assert (rec["mode"], rec["height"], rec["width"], rec["batch"]) == (mode, size, size, batch)
    assert rec["model_kwargs"] == TINY
    assert rec["runs"] == 2 and 0 < rec["min_s"] <= rec["median_s"]
    assert rec["compile_s"] > 0 and rec["peak_rss_gb"] > 0
    assert rec["us_per_pixel"] == pytest.approx(rec["median_s"] / (batch * size * size) * 1e6, rel=1e-2)
    assert 10_000 < rec["params"] < 1_000_000  # the tiny config (~0.28M), not the full-size default (33.7M)
  if mode == "train":
    assert len(built) == len(sizes) and all(mesh.devices.size == 1 for mesh, _ in built)
    assert all(kw["loss_fn"] is losses.l1 and kw["stage_start"] == 0 for _, kw in built)
  else:
    assert built == []


def test_bench_cli_rejects_bad_model_kwargs():
  with pytest.raises(SystemExit):
    bench.main(["--model-kwargs", "[1, 2]"])
  with pytest.raises(SystemExit):
    bench.main(["--model-kwargs", "{not json"])


@pytest.mark.parametrize("fixed_gb,per_image_gb,memory_gb,convex,max_calls", [
    (1.0, 0.5, 20.0, 1e-5, 4), (1.0, 0.5, 1.2, 1e-5, 1), (1.0, 0.5, 1.5, 1e-5, 2), (1.0, 0.5, 2.0, 1e-5, 4),
    (2.0, 0.3, 9.0, 1e-5, 4), (0.1, 0.001, 20.0, 0.0, 3), (0.1, 0.001, 20.0, 1e-4, 14)])
def test_max_batch_search_finds_the_largest_fitting_batch(monkeypatch, fixed_gb, per_image_gb, memory_gb, convex,
                                                          max_calls):
  """Affine extrapolation plus checks gives the exact answer with a few compilations, also when the need is
  slightly convex (XLA's buffer assignment is not exactly affine)."""
  def need(batch):
    return int((fixed_gb + per_image_gb * batch + convex * batch ** 2) * 2**30)

  calls = []

  def fake(name, *, size, batch, remat, dtype="float32", preset=None, model_kwargs=None, policy_overrides=None):
    calls.append(batch)
    return {"batch": batch, "total_bytes": need(batch), "temp_bytes": 0, "argument_bytes": 0}

  monkeypatch.setattr(bench, "train_memory_bytes", fake)
  rec = bench.max_batch("drsformer", size=128, memory_gb=memory_gb, remat=False)
  want = max([0] + [b for b in range(1, 1025) if need(b) <= memory_gb * 2**30])
  assert rec["max_batch"] == want
  assert want == 0 or rec["xla_bytes_at_max"] == need(want)
  assert len(calls) <= max_calls, calls


def test_policy_flag_reaches_the_network(capsys):
  """``--policy`` overrides the device's policy (the record shows the policy used); a bad field is a usage error."""
  rc = bench.main(["--model", "drsformer", "--model-kwargs", json.dumps(TINY), "--size", "16", "--runs", "1",
                   "--policy", '{"scan_blocks": true, "conv": "xla"}'])
  assert rc == 0
  rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rec["policy"]["scan_blocks"] is True and rec["policy"]["conv"] == "xla" and rec["conv_impl"] == "xla"
  assert rec["policy"]["fusion_guards"] is True  # the rest stays the CPU's choice
  for bad in ('{"conv_impl": "xla"}', '[1]', '{"conv": "cudnn"}'):
    with pytest.raises(SystemExit):
      bench.main(["--policy", bad])


# ------------------------------------------------------------------------------------------------------------
# Same-run reference (--reference-dir): stand-in files with the authors' constructor signatures, written here.
# ------------------------------------------------------------------------------------------------------------

TINY_MEFC = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 2]}  # the authors' file always has MEFC

STANDIN_DRS = '''
import torch
from torch import nn


class DRSformer(nn.Module):
    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8], heads=[1, 2, 4, 8],
                 ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias'):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(inp_channels, dim, 3, padding=1, bias=bias),
                                  nn.Conv2d(dim, out_channels, 3, padding=1, bias=bias))

    def forward(self, x):
        return x + self.body(x)
'''

STANDIN_AST = '''
import torch
from torch import nn
import not_installed_anywhere_xyz  # like ast_ref.py's timm/einops imports when they are missing


class AST(nn.Module):
    pass
'''


@pytest.fixture
def standin_dir(tmp_path):
  (tmp_path / "drs_ref.py").write_text(STANDIN_DRS)
  (tmp_path / "ast_ref.py").write_text(STANDIN_AST)
  return tmp_path


def test_reference_dir_times_the_authors_network_in_the_same_run(capsys, standin_dir):
  pytest.importorskip("torch", reason="--reference-dir times a PyTorch network")
  import torch
  rc = bench.main(["--model", "drsformer", "--model-kwargs", json.dumps(TINY_MEFC), "--size", "16", "--runs", "2",
                   "--reference-dir", str(standin_dir), "--reference-precision", "default"])
  assert rc == 0
  rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  ref = rec["reference"]
  assert ref["impl"] == "pytorch-reference" and ref["file"] == "drs_ref.py" and ref["device"] == "cpu"
  assert ref["precision"] == ref["requested_precision"] == "default" and "all" not in ref
  assert ref["torch"] == torch.__version__ and ref["torch_threads"] == torch.get_num_threads()
  # Our --model-kwargs reach the authors' constructor under its own names.
  assert ref["kwargs"] == {"inp_channels": 3, "out_channels": 3, "dim": 8, "num_blocks": [1, 1, 1, 1],
                           "heads": [1, 1, 1, 2]}
  assert ref["params"] == 2 * 8 * 3 * 9  # the stand-in's two convolutions at dim 8
  assert ref["runs"] == 2 and 0 < ref["min_s"] <= ref["median_s"] and ref["median_cpu_s"] > 0
  assert ref["device_peak_gb"] is None  # CPU: no device allocator
  # The ratios are recorded to 4 decimals: a ratio of 0.016 is off by up to 5e-5, more than 1e-3 of it.
  assert rec["speedup"] == pytest.approx(ref["median_s"] / rec["median_s"], rel=1e-3, abs=5e-5)
  assert rec["speedup_cpu"] == pytest.approx(ref["median_cpu_s"] / rec["median_cpu_s"], rel=1e-3, abs=5e-5)
  assert rec["memory_ratio"] is None


def test_reference_best_precision_keeps_the_fastest_and_records_all(standin_dir):
  pytest.importorskip("torch", reason="--reference-dir times a PyTorch network")
  from sparse_restore import bench_reference
  ref = bench_reference.measure(str(standin_dir), "drsformer", dict(TINY_MEFC, bias=True, layernorm_type="BiasFree"),
                                mode="train", batch=2, height=16, width=16, precision="best", runs=2)
  assert [r["precision"] for r in ref["all"]] == ["default", "bf16"]  # TF32 switches do nothing on a CPU
  assert ref["median_s"] == min(r["median_s"] for r in ref["all"])
  assert ref["precision"] in ("default", "bf16") and ref["requested_precision"] == "best"
  assert ref["kwargs"]["bias"] is True and ref["kwargs"]["LayerNorm_type"] == "BiasFree"
  assert ref["params"] == 2 * (8 * 3 * 9) + 8 + 3  # biases on


@pytest.mark.parametrize("setup,message", [
    ("missing", "no such folder"), ("file", "not a folder"), ("empty", "drs_ref.py: missing"),
    ("no_class", "defines no class DRSformer")])
def test_reference_dir_errors_are_one_usage_line(capsys, tmp_path, setup, message):
  pytest.importorskip("torch", reason="the folder is checked after PyTorch is found")
  ref = tmp_path / "refs"
  if setup == "file":
    ref.write_text("")
  elif setup in ("empty", "no_class"):
    ref.mkdir()
    if setup == "no_class":
      (ref / "drs_ref.py").write_text("import torch\nclass Other(torch.nn.Module):\n    pass\n")
  with pytest.raises(SystemExit) as exc:
    bench.main(["--model", "drsformer", "--size", "16", "--reference-dir", str(ref)])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert f"--reference-dir: {ref}" in err and message in err and "Traceback" not in err


def test_reference_dir_refuses_what_the_authors_file_cannot_express(capsys, standin_dir):
  pytest.importorskip("torch", reason="the folder is checked after PyTorch is found")
  for argv, message in (
      (["--model", "drsformer_nomefc"], "no switch for use_mefc=False"),
      (["--model", "drsformer", "--model-kwargs", '{"ffn_type": "dfn"}'], "no switch for ffn_type='dfn'"),
      (["--model", "ast"], "cannot be imported: No module named 'not_installed_anywhere_xyz'"),
      (["--model", "drsformer", "--mode", "max-batch"], "times forward and train modes"),
      (["--model", "drsformer", "--reference-precision", "fp8"], "invalid choice")):
    with pytest.raises(SystemExit) as exc:
      bench.main(argv + ["--size", "16", "--reference-dir", str(standin_dir)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_reference_dir_without_torch_is_a_usage_error(capsys, monkeypatch, standin_dir):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(SystemExit) as exc:
    bench.main(["--model", "drsformer", "--size", "16", "--reference-dir", str(standin_dir)])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "--reference-dir needs PyTorch" in err and "Traceback" not in err


def test_reference_kwargs_map_ast_fields():
  from sparse_restore import bench_reference
  arch, config = bench.model_config("ast", None, {"embed_dim": 8, "depths": [1] * 9, "img_size": 32})
  kw = bench_reference.reference_kwargs(arch, config)
  assert kw == {"token_projection": "linear", "img_size": 32, "embed_dim": 8, "depths": [1] * 9,
                "num_heads": list(config["num_heads"]), "win_size": 8, "mlp_ratio": 4.0, "token_mlp": "frfn"}


# ------------------------------------------------------------------------------------------------------------
# Input pipeline throughput (--mode input-pipeline)
# ------------------------------------------------------------------------------------------------------------


def test_input_pipeline_mode_reports_images_per_second(capsys, tmp_path, data_dir):
  rc = bench.main(["--mode", "input-pipeline", "--dataset", "rain200h", "--manual-dir",
                   str(data_dir / "rain200h_sample"), "--data-dir", str(tmp_path / "tfds"), "--size", "64",
                   "--batch", "4", "--num-workers", "0", "--runs", "3", "--warmup-batches", "1"])
  assert rc == 0
  rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert rec["mode"] == "input-pipeline" and rec["num_workers"] == 0 and rec["batch_shape"] == [4, 64, 64, 3]
  assert rec["random_flip"] and rec["random_rot90"] and rec["runs"] == 3
  assert rec["images_per_s"] == pytest.approx(4 / rec["seconds_per_batch"], rel=1e-2)
  with pytest.raises(SystemExit):
    bench.main(["--mode", "input-pipeline", "--num-workers", "two"])


def test_lower_for_reports_convolution_counts_without_running(capsys):
  """--lower-for cuda: the GPU policy's program, lowered on this CPU; 'taps' leaves no grouped convolution."""
  recs = {}
  for conv in ("auto", "taps"):
    rc = bench.main(["--model", "drsformer", "--model-kwargs", json.dumps(TINY_MEFC), "--size", "16", "--mode",
                     "forward", "--lower-for", "cuda", "--conv-impl", conv])
    assert rc == 0
    recs[conv] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  xla, taps = recs["auto"], recs["taps"]
  assert xla["lowered_for"] == "cuda" and xla["policy"]["conv"] == "xla" and not xla["policy"]["fusion_guards"]
  assert "median_s" not in xla  # nothing ran
  assert xla["grouped"] > 0 and xla["distinct"] <= xla["convolutions"] and xla["optimization_barriers"] == 0
  assert taps["policy"]["conv"] == "taps" and taps["grouped"] == 0 and taps["convolutions"] < xla["convolutions"]
  with pytest.raises(SystemExit):
    bench.main(["--mode", "max-batch", "--lower-for", "cuda"])


def test_bench_ast_forward(capsys):
  """README: `bench --model ast --size 128,256,512,1024 --mode forward`, on a tiny AST at 32 px."""
  words = doc_command("python -m sparse_restore.bench --model ast --size 128,256,512,1024 --mode forward")
  args = cli_args(words, "sparse_restore.bench") + ["--size", "32", "--model-kwargs", json.dumps(TINY_AST),
                                                     "--runs", "1"]
  assert bench.main(args) == 0
  lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
  assert len(lines) == 1
  rec = json.loads(lines[0])
  assert (rec["model"], rec["arch"], rec["mode"], rec["height"], rec["batch"]) == ("ast", "ast", "forward", 32, 1)
  assert rec["model_kwargs"] == TINY_AST and rec["median_s"] > 0 and rec["params"] < 2_000_000


@pytest.mark.slow  # Compiles two tiny DRSformer train steps: ~1.5 min of CPU time on a busy 2-core host.
def test_bench_train_remat_bfloat16_and_max_batch(capsys):
  """README Performance: `bench --mode train [--remat] [--dtype bfloat16]` and `--mode max-batch --memory-gb 20
  [--remat]` with their options, on a tiny DRSformer at 16 px (max-batch with a budget below one sample: one
  compilation, answer 0)."""
  train = [c for c in COMMANDS if c.source.startswith("README.md") and "train" in c.tokens and "[--remat]" in c.tokens]
  maxb = [c for c in COMMANDS if c.source.startswith("README.md") and "max-batch" in c.tokens]
  assert len(train) == 1 and len(maxb) == 1
  tiny = ["--model-kwargs", json.dumps(TINY_ONE_HEAD), "--size", "16"]
  assert bench.main(cli_args(variants(train[0].tokens)[-1], "sparse_restore.bench") + tiny + ["--runs", "1"]) == 0
  rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert (rec["mode"], rec["remat"], rec["dtype"], rec["batch"]) == ("train", True, "bfloat16", 2)
  assert rec["median_s"] > 0
  assert bench.main(cli_args(variants(maxb[0].tokens)[-1], "sparse_restore.bench") + tiny
                    + ["--memory-gb", "0.0001"]) == 0
  captured = capsys.readouterr()
  rec = json.loads(captured.out.strip().splitlines()[-1])
  assert (rec["mode"], rec["remat"], rec["max_batch"], rec["memory_gb"]) == ("max-batch", True, 0, 0.0001)
  assert re.search(r"\[max-batch\] batch 1: [\d.]+ GiB", captured.err), captured.err
