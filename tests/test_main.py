"""``python -m sparse_restore.main`` as a program: config overrides, train mode, evaluate mode, clear failures.

Each test starts real subprocesses (4 simulated CPU devices, inherited from tests/conftest.py's XLA_FLAGS).
Compiled programs are shared with the other tests through JAX's persistent compilation cache (tests/conftest.py).
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from doc_commands import cli_args, doc_command, substitute
from sparse_restore import config_files

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
  return config_files.load_config(REPO / "configs" / f"{name}.py")


@pytest.fixture(scope="module")
def env():
  """Environment of the subprocesses: the run's persistent compilation cache (set by tests/conftest.py), quiet
  TensorFlow."""
  assert os.environ.get("JAX_COMPILATION_CACHE_DIR"), "tests/conftest.py sets the compilation cache"
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """synthetic_rain generated once for the module (the jobs would otherwise build it in each workdir)."""
  from sparse_restore import input_pipeline
  d = str(tmp_path_factory.mktemp("tfds"))
  cfg = load_config("tiny")
  cfg.data.data_dir = d
  input_pipeline.prepare(cfg.data)
  return d


def run_main(args, env, timeout=1200):
  cmd = [sys.executable, "-m", "sparse_restore.main", *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_typo_in_override_fails_clearly(env, tmp_path):
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(tmp_path / "w"), "--config.num_train_step=3"], env,
               timeout=300)
  assert p.returncode != 0
  assert "num_train_step" in p.stderr
  assert not (tmp_path / "w").exists()  # failed while parsing flags, before doing anything


def test_missing_workdir_flag_fails(env):
  p = run_main(["--config", "configs/tiny.py"], env, timeout=300)
  assert p.returncode != 0 and "workdir" in p.stderr


@pytest.fixture(scope="module")
def trained(env, data_dir, tmp_path_factory):
  """Trains configs/tiny.py through main.py with overrides (6 steps, evaluation at the end)."""
  workdir = tmp_path_factory.mktemp("main") / "run"
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
                "--config.eval_every_steps=6", "--config.max_checkpoints_to_keep=2", "--config.eval.save_images=true"],
               env)
  assert p.returncode == 0, p.stderr[-5000:]
  return workdir, p


def test_train_mode(trained):
  workdir, p = trained
  assert "finished training at step 6" in p.stdout
  assert "restored PSNR" in p.stdout and "degraded input PSNR" in p.stdout
  # The closing summary says where everything is and what to run next.
  assert f"checkpoint    {workdir}/checkpoints/6" in p.stdout
  assert f"side by side  {workdir}/eval/6/compare/" in p.stdout
  assert f"tensorboard --logdir {workdir}" in p.stdout
  assert f"python -m sparse_restore.infer --checkpoint {workdir} --input" in p.stdout
  assert "learned only the synthetic rain" in p.stdout
  steps = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
  assert steps == [4, 6]  # max_checkpoints_to_keep=2 took effect
  info = json.loads((workdir / "model.json").read_text())
  assert info["arch"] == "drsformer" and info["config"]["dim"] == 8
  doc = json.loads((workdir / "eval" / "6" / "metrics.json").read_text())
  assert doc["summary"]["count"] == 2 and doc["summary"]["step"] == 6
  assert len(list((workdir / "eval" / "6" / "images").glob("*.png"))) == 2


# Lines other libraries print or log: Python log records in absl's format (Orbax, TFDS, grain and JAX through the
# absl handler), TFDS's banner and progress bars, JAX's TPU probe. (XLA's C++ log lines, `file.cc:N]`, are not
# Python records: TF_CPP_MIN_LOG_LEVEL decides; its slow-operation alarm, an ERROR, can appear on a loaded machine.)
LIBRARY_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.-]+\.py:\d+\]|Downloading and preparing|"
                          r"Generating splits|Unable to initialize backend|OpenCV is not installed|dataset_info\.json",
                          re.M)


def test_console_is_quiet_and_says_what_happens(trained):
  """By default the job prints its own plain lines (what it is doing, progress with step/total, loss, steps/s),
  and no line of the libraries it uses."""
  _, p = trained
  assert not LIBRARY_LINE.search(p.stderr), LIBRARY_LINE.search(p.stderr).group(0)
  assert not LIBRARY_LINE.search(p.stdout)
  err = p.stderr
  for expected in ("compiling the train step (batch 8, 32x32 patches, CPU) ...", "compiled in ",
                   "step 6/6 (100%), loss ", "evaluating 2 images of synthetic_rain/test", "initialising the parameters"):
    assert expected in err, (expected, err)
  assert err.index("compiling the train step") < err.index("step 6/6") < err.index("evaluating 2 images")
  assert "\r" not in err


def test_comparison_images(trained):
  """eval/<step>/compare/<name>.png: rainy input | restored | clean target with white separators; the restored
  panel is exactly the image the scores were computed on (images/<name>.png)."""
  import numpy as np
  from PIL import Image
  from sparse_restore import model_eval
  workdir, _ = trained
  names = sorted(f.name for f in (workdir / "eval" / "6" / "images").glob("*.png"))
  assert sorted(f.name for f in (workdir / "eval" / "6" / "compare").glob("*.png")) == names
  restored = np.asarray(Image.open(workdir / "eval" / "6" / "images" / names[0]))
  strip = np.asarray(Image.open(workdir / "eval" / "6" / "compare" / names[0]))
  h, w, _ = restored.shape
  gap = model_eval.SEPARATOR_PX
  assert strip.shape == (h, 3 * w + 2 * gap, 3)
  np.testing.assert_array_equal(strip[:, w + gap:2 * w + gap], restored)
  assert (strip[:, w:w + gap] == 255).all() and (strip[:, 2 * w + gap:2 * w + 2 * gap] == 255).all()
  assert not np.array_equal(strip[:, :w], strip[:, -w:])  # rainy input and clean target differ


def _run_with_injected_warnings(args, env):
  """main's CLI, with a WARNING through absl, a Python warning and an INFO line through absl emitted from inside
  the job (as a library's or our own code's would be), plus a warning that is known to be harmless."""
  code = (
      "import sys, warnings\n"
      "from absl import app, logging\n"
      "from sparse_restore import main, train\n"
      "original = train.train_and_evaluate\n"
      "def wrapped(*a, **k):\n"
      "  logging.warning('disk almost full: checkpoint may fail')\n"
      "  warnings.warn('sparse_restore: this option is deprecated')\n"
      "  logging.info('library detail that nobody needs')\n"
      "  logging.warning('Variant folder /x/1.0.0 has no dataset_info.json')\n"
      "  return original(*a, **k)\n"
      "train.train_and_evaluate = wrapped\n"
      "sys.argv = ['sparse_restore.main'] + sys.argv[1:]\n"
      "app.run(main.main, flags_parser=main.parse_flags)\n")
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=1200)


@pytest.mark.slow  # Two more training jobs (~45 s); test_console_is_quiet_and_says_what_happens runs by default.
def test_warnings_still_show_and_verbosity_shows_everything(env, data_dir, tmp_path):
  """Quiet mode keeps real warnings (absl WARNING, Python warnings) and drops INFO and the known harmless ones;
  --verbosity=0 shows the libraries' INFO lines (Orbax's checkpointing, ...) again. The train step is `trained`'s
  (same shapes and schedule), so it comes from the persistent compilation cache."""
  args = ["--config", "configs/tiny.py"]
  # This one builds its data in the workdir (TFDS's banner, progress bars and probes must stay hidden).
  quiet = _run_with_injected_warnings(args + ["--workdir", str(tmp_path / "quiet")], env)
  assert quiet.returncode == 0, quiet.stderr[-5000:]
  assert "disk almost full: checkpoint may fail" in quiet.stderr
  assert "sparse_restore: this option is deprecated" in quiet.stderr
  assert "library detail that nobody needs" not in quiet.stderr and "dataset_info.json" not in quiet.stderr
  assert not re.search(r"^I\d{4} ", quiet.stderr, re.M)
  assert "building the synthetic_rain dataset in" in quiet.stderr and "built in " in quiet.stderr
  for line in (quiet.stdout + quiet.stderr).splitlines():
    if "disk almost full" in line:
      continue  # the injected absl warning, in absl's format
    assert not LIBRARY_LINE.search(line), line
  assert "finished training at step 6" in quiet.stdout

  args.append(f"--config.data.data_dir={data_dir}")

  loud = run_main(args + ["--workdir", str(tmp_path / "loud"), "--verbosity=0"], env)
  assert loud.returncode == 0, loud.stderr[-5000:]
  info = re.findall(r"^I\d{4} .*$", loud.stderr, re.M)
  assert any("checkpoint" in line.lower() for line in info), loud.stderr[-3000:]
  assert "compiling the train step" in loud.stderr and "finished training at step 6" in loud.stdout


def test_evaluate_mode_on_workdir_and_on_exported_model(trained, env, data_dir, tmp_path):
  """--mode evaluate scores the newest checkpoint of a workdir, and an exported model given by --checkpoint, on
  full images: same parameters, same numbers, images and metrics written under the workdir."""
  workdir, _ = trained
  train_doc = json.loads((workdir / "eval" / "6" / "metrics.json").read_text())
  (workdir / "eval" / "6" / "metrics.json").unlink()
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(workdir), "--mode", "evaluate",
                f"--config.data.data_dir={data_dir}"], env)
  assert p.returncode == 0, p.stderr[-5000:]
  doc = json.loads((workdir / "eval" / "6" / "metrics.json").read_text())
  assert doc["summary"]["psnr"] == pytest.approx(train_doc["summary"]["psnr"], abs=1e-9)
  assert "restored PSNR" in p.stdout

  from sparse_restore import checkpoint
  _, params, info = checkpoint.load_model(str(workdir))
  export = checkpoint.save_model(str(tmp_path / "export"), info["arch"], info["config"], params)
  other = tmp_path / "eval_export"
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(other), "--mode", "evaluate", "--checkpoint", export,
                f"--config.data.data_dir={data_dir}", "--config.data.max_eval_images=3"], env)
  assert p.returncode == 0, p.stderr[-5000:]
  doc3 = json.loads((other / "eval" / "pretrained" / "metrics.json").read_text())
  assert doc3["summary"]["count"] == 3 and doc3["summary"]["source"] == export
  first_two = {r["name"]: r["psnr"] for r in doc3["images"][:2]}
  assert first_two == pytest.approx({r["name"]: r["psnr"] for r in doc["images"]}, abs=1e-9)
  assert len(list((other / "eval" / "pretrained" / "images").glob("*.png"))) == 3


def test_refuses_other_model_in_workdir(trained, env, data_dir):
  workdir, _ = trained
  p = run_main(["--config", "configs/tiny.py", "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
                "--config.model.dim=16"], env, timeout=600)
  assert p.returncode != 0
  assert "describes a different model than the config (dim: 8 in the workdir vs 16 in the config)" in p.stderr
  assert "Traceback" not in p.stderr


def test_invalid_values_fail_fast_naming_each_field(env, tmp_path):
  """Bad values are refused in seconds, before the workdir, the dataset or any compilation: one error line per
  field, no traceback (model.dim=0 was a ZeroDivisionError, a NaN or negative lr failed at step 2 after minutes
  of compiling, a negative batch only after the dataset build)."""
  import time
  cases = [
      (["--config.model.dim=0", "--config.batch_size=-4", "--config.lr=nan"],
       ["error: config.model.dim: must be >= 1, got 0", "error: config.batch_size: must be >= 1, got -4",
        "error: config.lr: must be finite and > 0, got nan"]),
      (["--config.lr=-1"], ["error: config.lr: must be finite and > 0, got -1.0"]),
  ]
  for overrides, expected in cases:
    workdir = tmp_path / "w"
    t0 = time.time()
    p = run_main(["--config", "configs/tiny.py", "--workdir", str(workdir), *overrides], env, timeout=300)
    elapsed = time.time() - t0
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert errors == expected, p.stderr[-3000:]
    assert not workdir.exists()  # neither the workdir nor its tfds/ dataset folder was created
    assert elapsed < 120, elapsed  # start-up and the checks only (a train-step compilation takes minutes here)


@pytest.fixture(scope="module")
def converted_drsformer(fixtures_dir, tmp_path_factory):
  """README: `python -m sparse_restore.convert --input DRSformer_Rain200H.pth --output models/drsformer_rain200h`
  on the tiny MEFC fixture (in-process)."""
  from sparse_restore.convert import __main__ as convert_cli
  out = tmp_path_factory.mktemp("models") / "drsformer_rain200h"
  words = doc_command("python -m sparse_restore.convert --input DRSformer_Rain200H.pth --output "
                      "models/drsformer_rain200h")
  args = substitute(cli_args(words, "sparse_restore.convert"), {
      "DRSformer_Rain200H.pth": str(fixtures_dir / "drsformer_tiny_mefc.pth"), "models/drsformer_rain200h": str(out)})
  assert convert_cli.main(args + ["--quiet"]) == 0
  return out


def test_main_evaluates_a_converted_model(converted_drsformer, shared_dir, env, tmp_path):
  """README: `main --config configs/drsformer_rain200h.py --mode evaluate --checkpoint <converted>
  --config.data.manual_dir=...` builds the dataset from the raw folders and scores the converted model on full
  images (one image here); the saved PNG scores the same with `sparse_restore.evaluate`."""
  from sparse_restore import evaluate
  words = doc_command("python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir "
                      "runs/eval_converted --mode evaluate --checkpoint models/drsformer_rain200h "
                      "--config.data.manual_dir=/data/Rain200H")
  workdir = tmp_path / "runs" / "eval_converted"
  manual = shared_dir / "data" / "rain200h_sample"
  args = substitute(words, {"runs/eval_converted": str(workdir), "models/drsformer_rain200h": str(converted_drsformer),
                            "/data/Rain200H": str(manual)}) + ["--config.data.max_eval_images=1"]
  r = subprocess.run([sys.executable, *args[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  assert "rain200h/test (1 images, restormer protocol, Y): restored PSNR" in r.stdout, r.stdout
  out = workdir / "eval" / "pretrained"
  doc = json.loads((out / "metrics.json").read_text())
  assert doc["summary"]["count"] == 1 and doc["summary"]["source"] == str(converted_drsformer)
  (image,) = doc["images"]
  assert (workdir / "tfds" / "rain200h" / "1.0.0").is_dir()  # data_dir '' -> <workdir>/tfds
  (record,) = evaluate.evaluate_pairs([{"name": image["name"], "result": str(out / "images" / f"{image['name']}.png"),
                                        "target": str(manual / "test" / "target" / f"{image['name']}.png")}],
                                      "restormer", "y")
  assert record["psnr"] == pytest.approx(image["psnr"], abs=1e-6)


# Flags appended to the README's training commands: a tiny DRSformer, 32 px patches, 2 steps, one eval image.
SCALE_DOWN_TRAINING = ["--config.model.dim=8", "--config.model.num_blocks=(1, 1, 1, 1)",
                       "--config.model.use_mefc=False", "--config.model.ffn_type=dfn", "--config.data.patch_size=32",
                       "--config.data.num_workers=0", "--config.num_train_steps=2", "--config.constant_steps=1",
                       "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
                       "--config.eval_every_steps=0", "--config.data.max_eval_images=1"]


@pytest.mark.slow  # Compiles a DRSformer train step (bfloat16, rematerialised): ~1 min of CPU time, cached after.
def test_training_commands_scaled_down(shared_dir, env, tmp_path, capsys):
  """README Training, in order, on the Rain200H sample folders (3 train / 3 test pairs):
  1. `main --config configs/drsformer_rain200h.py --workdir runs/rain200h --config.data.manual_dir=...` with the
     next command's overrides (`--config.batch_size=8 --config.compute_dtype=bfloat16 --config.remat=True`),
     scaled down (SCALE_DOWN_TRAINING): trains 2 steps from the raw folders;
  2. `tensorboard --logdir runs/rain200h`: the event files there hold the train/loss scalars it would plot;
  3. `main ... --workdir runs/rain200h --mode evaluate`: scores the newest checkpoint;
  4. `infer --checkpoint /tmp/sparse_restore_demo --input photos/ --output out/ --ensemble`: restores with the
     training workdir as the model."""
  import numpy as np
  from PIL import Image
  from sparse_restore import infer
  manual = str(shared_dir / "data" / "rain200h_sample")
  workdir = tmp_path / "runs" / "rain200h"
  paths = {"runs/rain200h": str(workdir), "/data/Rain200H": manual}
  first = doc_command("python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir runs/rain200h "
                      "--config.data.manual_dir=/data/Rain200H")
  overrides = doc_command("python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir "
                          "runs/rain200h --config.batch_size=8 --config.compute_dtype=bfloat16 --config.remat=True")
  args = substitute(first + [w for w in overrides if w not in first], paths) + SCALE_DOWN_TRAINING
  r = subprocess.run([sys.executable, *args[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
  assert r.returncode == 0, r.stderr[-4000:]
  assert "finished training at step 2" in r.stdout, r.stdout
  info = json.loads((workdir / "model.json").read_text())
  assert info["config"]["dim"] == 8 and info["config"]["use_mefc"] is False

  logdir = substitute(doc_command("tensorboard --logdir runs/rain200h"), paths)[2]
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0, "scalars": 0})
  acc.Reload()
  tags = acc.Tags()
  assert "train/loss" in tags["scalars"] + tags["tensors"], tags
  events = acc.Tensors("train/loss") if "train/loss" in tags["tensors"] else acc.Scalars("train/loss")
  assert [e.step for e in events] == [1, 2]

  evaluate_cmd = doc_command("python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir "
                             "runs/rain200h --mode evaluate")
  args = substitute(evaluate_cmd, paths) + [f"--config.data.manual_dir={manual}", "--config.data.max_eval_images=1",
                                            *SCALE_DOWN_TRAINING[:4]]
  r = subprocess.run([sys.executable, *args[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-4000:]
  doc = json.loads((workdir / "eval" / "2" / "metrics.json").read_text())
  assert doc["summary"]["count"] == 1 and doc["summary"]["step"] == 2

  photos = tmp_path / "photos"
  photos.mkdir()
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photos / "a.png")
  infer_cmd = doc_command("python -m sparse_restore.infer --checkpoint /tmp/sparse_restore_demo --input photos/ "
                          "--output out/ --ensemble")
  args = substitute(cli_args(infer_cmd, "sparse_restore.infer"), {
      "/tmp/sparse_restore_demo": str(workdir), "photos/": str(photos), "out/": str(tmp_path / "out")})
  assert infer.main(args + ["--quiet"]) == 0
  err = capsys.readouterr().err
  assert f"model drsformer from {workdir} step 2" in err and "8x ensemble" in err, err
  assert Image.open(tmp_path / "out" / "a.png").size == (32, 32)
