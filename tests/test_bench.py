"""Smoke test of the benchmark CLI (``python -m sparse_restore.bench``) on a tiny registry network."""
import json

import pytest

from sparse_restore import bench, losses, train

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 2], "use_mefc": False}
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
