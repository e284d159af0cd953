"""The evaluate CLI and evaluate_folders on the shared sample folders and on bad inputs."""
import csv
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from doc_commands import cli_args, doc_command, substitute
from sparse_restore import evaluate
from sparse_restore import imageio
from sparse_restore import metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, cwd=None):
  env = dict(os.environ, PYTHONWARNINGS="ignore")
  return subprocess.run([sys.executable, "-m", "sparse_restore.evaluate", *map(str, args)], capture_output=True,
                        text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture()
def samples(data_dir):
  return data_dir / "derain_results_sample"


def test_cli_restormer_rain200h_with_reports(samples, tmp_path):
  res, tgt = samples / "Rain200H" / "result", samples / "Rain200H" / "target"
  r = _run("--results", res, "--targets", tgt, "--protocol", "restormer",
           "--csv", tmp_path / "s.csv", "--json", tmp_path / "s.json")
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert lines[1].split() == ["1", "39.271349", "0.970467"]
  assert lines[4].startswith("mean") and "3 images" in lines[4]
  rows = list(csv.DictReader(open(tmp_path / "s.csv")))
  assert [row["name"] for row in rows] == ["1", "2", "3", "mean"]
  assert rows[0]["psnr"] == "39.271349" and rows[0]["height"] == "321" and rows[0]["width"] == "481"
  doc = json.load(open(tmp_path / "s.json"))
  assert doc["protocol"] == "restormer" and doc["channel"] == "y" and doc["count"] == 3
  assert abs(doc["images"][0]["psnr"] - 39.271349) < 1e-6 and abs(doc["images"][0]["ssim"] - 0.970467) < 1e-6
  means = np.mean([im["psnr"] for im in doc["images"]])
  assert abs(doc["mean"]["psnr"] - means) < 1e-12
  assert float(rows[3]["psnr"]) == pytest.approx(means, abs=1e-6)


def test_cli_rcdnet_and_rgb(samples):
  res, tgt = samples / "DID-DDN" / "result", samples / "DID-DDN" / "target"
  r = _run("--results", res, "--targets", tgt, "--protocol", "rcdnet", "--channel", "rgb", "--quiet")
  assert r.returncode == 0, r.stderr
  assert len(r.stdout.splitlines()) == 1 and "channel rgb" in r.stdout
  records = evaluate.evaluate_folders(str(res), str(tgt), "rcdnet", "rgb")
  mean = metrics.summarize(records)
  assert f"{mean['psnr']:.6f}" in r.stdout


def test_library_records_match_metrics(samples):
  res, tgt = samples / "SPA-Data" / "result", samples / "SPA-Data" / "target"
  records = evaluate.evaluate_folders(str(res), str(tgt), "restormer")
  assert [r["name"] for r in records] == ["1", "2", "3"]
  for r in records:
    a, b = imageio.read_uint8_rgb(r["result"]), imageio.read_uint8_rgb(r["target"])
    assert (r["psnr"], r["ssim"]) == metrics.psnr_ssim(a, b, "restormer")
    assert (r["height"], r["width"]) == (512, 512)


def test_pairs_by_stem_across_extensions(samples, tmp_path):
  """Targets saved as BMP/TIFF pair with PNG results of the same stem and score identically."""
  res = samples / "Rain200H" / "result"
  tgt = tmp_path / "targets"
  tgt.mkdir()
  for i, ext in ((1, "bmp"), (2, "tif"), (3, "png")):
    Image.open(samples / "Rain200H" / "target" / f"{i}.png").save(tgt / f"{i}.{ext}")
  a = evaluate.evaluate_folders(str(res), str(tgt), "restormer")
  b = evaluate.evaluate_folders(str(res), str(samples / "Rain200H" / "target"), "restormer")
  assert [(r["psnr"], r["ssim"]) for r in a] == [(r["psnr"], r["ssim"]) for r in b]


def test_unpaired_and_ambiguous_files_exit_1(samples, tmp_path):
  res = tmp_path / "res"
  shutil.copytree(samples / "Rain200H" / "result", res)
  shutil.copy(res / "1.png", res / "extra.png")
  tgt = tmp_path / "tgt"
  shutil.copytree(samples / "Rain200H" / "target", tgt)
  os.remove(tgt / "3.png")
  shutil.copy(tgt / "2.png", tgt / "2.bmp")
  r = _run("--results", res, "--targets", tgt, "--protocol", "restormer", "--csv", tmp_path / "x.csv")
  assert r.returncode == 1
  assert "extra.png" in r.stderr and "3.png" in r.stderr and "ambiguous" in r.stderr and "2.bmp" in r.stderr
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "x.csv").exists()
  with pytest.raises(evaluate.EvaluationError, match="extra.png"):
    evaluate.evaluate_folders(str(res), str(tgt))


def test_size_mismatch_exit_1(samples, tmp_path):
  r = _run("--results", samples / "Rain200H" / "result", "--targets", samples / "SPA-Data" / "target",
           "--protocol", "restormer")
  assert r.returncode == 1
  assert r.stderr.count("size mismatch") == 3 and "321x481" in r.stderr and "512x512" in r.stderr
  assert "Traceback" not in r.stderr


def test_corrupt_image_exit_1(samples, tmp_path):
  res = tmp_path / "res"
  shutil.copytree(samples / "Rain200H" / "result", res)
  (res / "2.png").write_bytes((res / "2.png").read_bytes()[:500])
  r = _run("--results", res, "--targets", samples / "Rain200H" / "target", "--protocol", "restormer")
  assert r.returncode == 1 and "2.png" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_2(samples, tmp_path):
  res, tgt = samples / "Rain200H" / "result", samples / "Rain200H" / "target"
  r = _run("--results", res, "--targets", tgt, "--protocol", "restormer", "--csv", tmp_path / "scores.png")
  assert r.returncode == 2 and "image extension" in r.stderr
  r = _run("--results", res, "--targets", tgt, "--protocol", "restormer", "--json", tgt / "1.png")
  assert r.returncode == 2
  r = _run("--results", tmp_path / "missing", "--targets", tgt, "--protocol", "restormer")
  assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
  r = _run("--results", res, "--targets", tgt, "--protocol", "psnr")
  assert r.returncode == 2 and "invalid choice" in r.stderr
  r = _run("--results", res, "--targets", tgt)
  assert r.returncode == 2 and "--protocol" in r.stderr


def test_identical_folders_give_inf(samples, tmp_path):
  tgt = samples / "Rain200L" / "target"
  r = _run("--results", tgt, "--targets", tgt, "--protocol", "basicsr", "--json", tmp_path / "s.json",
           "--csv", tmp_path / "s.csv")
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[1].split() == ["1", "inf", "1.000000"]
  doc = json.load(open(tmp_path / "s.json"))  # Strict JSON: non-finite numbers are written as strings.
  assert doc["mean"] == {"psnr": "inf", "ssim": 1.0}
  assert list(csv.DictReader(open(tmp_path / "s.csv")))[-1]["psnr"] == "inf"


def _pair_folders(tmp_path, result, target, name="a.png"):
  (tmp_path / "res").mkdir(exist_ok=True)
  (tmp_path / "tgt").mkdir(exist_ok=True)
  Image.fromarray(result).save(tmp_path / "res" / name)
  Image.fromarray(target).save(tmp_path / "tgt" / name)
  return tmp_path / "res", tmp_path / "tgt"


@pytest.mark.parametrize("protocol", metrics.PROTOCOLS)
def test_images_too_small_for_ssim_name_the_files(tmp_path, protocol):
  rng = np.random.default_rng(0)
  res, tgt = _pair_folders(tmp_path, rng.integers(0, 256, (10, 40, 3), np.uint8),
                           rng.integers(0, 256, (10, 40, 3), np.uint8))
  r = _run("--results", res, "--targets", tgt, "--protocol", protocol)
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  # The start line ("scoring 1 pair ...") may come first; the error block starts a line of its own.
  assert r.stderr.startswith("error: cannot score:") or "\nerror: cannot score:" in r.stderr, r.stderr
  assert (f"too small: {res / 'a.png'} and {tgt / 'a.png'} is 10x40: SSIM needs at least 11x11 pixels"
          in r.stderr), r.stderr
  # 11x11 is enough.
  _pair_folders(tmp_path, rng.integers(0, 256, (11, 11, 3), np.uint8), rng.integers(0, 256, (11, 11, 3), np.uint8))
  assert _run("--results", res, "--targets", tgt, "--protocol", protocol).returncode == 0


def test_ssim_size_rule_counts_the_rcdnet_downsampling():
  assert evaluate.ssim_size_problem(11, 11, "rcdnet") is None
  assert evaluate.ssim_size_problem(384, 10, "rcdnet") is not None  # min side 10 < 11 before downsampling too
  # rcdnet downsamples by round(min(H, W) / 256): 640 x 21 is scored at factor 1 (round(21/256) = 0).
  assert evaluate.ssim_size_problem(640, 21, "rcdnet") is None
  assert evaluate.ssim_size_problem(10, 10, "basicsr") == ("is 10x10: SSIM needs at least 11x11 pixels (its "
                                                           "Gaussian window)")


def test_grayscale_against_colour_is_an_error_naming_both_files(tmp_path):
  rng = np.random.default_rng(1)
  gray = rng.integers(0, 256, (16, 16), np.uint8)
  colour = np.repeat(gray[..., None], 3, axis=-1)
  colour[..., 0] //= 2
  res, tgt = _pair_folders(tmp_path, gray, colour)
  for channel in ("y", "rgb"):
    r = _run("--results", res, "--targets", tgt, "--protocol", "restormer", "--channel", channel)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (f"grayscale vs colour: {res / 'a.png'} is grayscale, {tgt / 'a.png'} is colour; refusing to score"
            in r.stderr), r.stderr
  # The other way round, and a 16-bit gray file, too.
  Image.fromarray(colour).save(res / "a.png")
  Image.fromarray(gray.astype(np.uint16) * 257).save(tgt / "a.png")
  with pytest.raises(evaluate.EvaluationError, match=rf"{tgt / 'a.png'} is grayscale, {res / 'a.png'} is colour"):
    evaluate.evaluate_folders(str(res), str(tgt))
  # Two grayscale files are scored (on their replicated gray values).
  Image.fromarray(gray).save(res / "a.png")
  (record,) = evaluate.evaluate_folders(str(res), str(tgt))
  assert record["psnr"] == math.inf and record["ssim"] == 1.0
  help_text = " ".join(evaluate.build_parser().format_help().split())
  assert "grayscale image paired with a colour one is an error" in help_text


def test_cli_rcdnet_with_csv_matches_readme(data_dir, tmp_path, monkeypatch, capsys):
  """README: `evaluate --protocol rcdnet --csv scores.csv`, and the README's number for Rain200H/1.png under
  that protocol (39.331564 dB / 0.971420)."""
  samples = data_dir / "derain_results_sample" / "Rain200H"
  words = doc_command("python -m sparse_restore.evaluate --results out/ --targets DID/test/target --protocol rcdnet "
                      "--csv scores.csv")
  args = substitute(cli_args(words, "sparse_restore.evaluate"),
                    {"out/": str(samples / "result"), "DID/test/target": str(samples / "target")})
  monkeypatch.chdir(tmp_path)  # `scores.csv` is written where the command runs
  assert evaluate.main(args) == 0
  rows = (tmp_path / "scores.csv").read_text().splitlines()
  assert rows[0].split(",")[0] == "name" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "mean"]
  header = rows[0].split(",")
  first = dict(zip(header, rows[1].split(",")))
  readme = " ".join((REPO / "README.md").read_text().split())
  m = re.search(r"Rain200H/1\.png gives [\d.]+ dB / [\d.]+ \(restormer\) and ([\d.]+) dB / ([\d.]+) \(rcdnet\)", readme)
  assert m, "README.md no longer states the rcdnet score of Rain200H/1.png"
  assert (first["psnr"], first["ssim"]) == m.groups()
  assert "protocol rcdnet" in capsys.readouterr().out
