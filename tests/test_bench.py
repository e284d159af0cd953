"""Smoke test of the benchmark CLI (``python -m sparse_restore.bench``) on a tiny registry network."""
import json

import pytest

from sparse_restore import bench

TINY = {"dim": 8, "num_blocks": [1, 1, 1, 1], "heads": [1, 1, 1, 2], "use_mefc": False}
FIELDS = ("median_s", "min_s", "median_cpu_s", "runs", "compile_s", "compile_cpu_s", "first_call_s",
          "images_per_s", "us_per_pixel", "peak_rss_gb", "gflop", "params", "backend", "model_kwargs")


@pytest.mark.parametrize("mode,batch,sizes", [("forward", 1, (16, 24)), ("train", 2, (16,))])
def test_bench_cli_prints_one_json_record_per_size(capsys, mode, batch, sizes):
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


def test_bench_cli_rejects_bad_model_kwargs():
  with pytest.raises(SystemExit):
    bench.main(["--model-kwargs", "[1, 2]"])
  with pytest.raises(SystemExit):
    bench.main(["--model-kwargs", "{not json"])
