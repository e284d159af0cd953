"""Every command in the documentation is valid, each one is run by some test (or by CI), and the flags and files
the documentation names exist. The commands are found by tests/doc_commands.py.

Static checks (quick, nothing is run; a failure names the file, line and command):
  * test_command_is_valid (one per command): `python -m sparse_restore.{infer,evaluate,convert}` parse with the
    CLI's own build_parser(); `sparse_restore.bench`, which has no build_parser(), with a parser made from its
    `--help` options; `sparse_restore.main` with main.py's absl flags on a fresh FlagValues and the
    ml_collections config flag: the config file loads, each `--config.a.b=v` names a field of that (locked)
    config and `v` parses for its type; `data/tfds_build.py` with the TFDS build parser it hands to absl
    (dataset folder checked); `python -m pytest` paths and `-m` markers; pip extras against pyproject.toml;
    `tensorboard --logdir` against the --workdir of the training commands; `python -c` code parses and its
    `get_builder` names a registered dataset;
  * test_flags_named_in_prose_exist: `--flags` in inline code exist in some documented program, and
    `--config.a.b[=v]` in a config's docstring names a field of that config;
  * test_files_named_in_the_documentation_exist: relative links, repository paths (configs/, colab/, data/,
    tests/, sparse_restore/), README.md's config names, data/README.md's dataset folders;
  * test_every_command_has_a_runner: RUNNERS below lists every command with where it runs, and the tests it names
    exist (and are marked slow where it says so);
  * negative tests on a README with one mistake per line show each kind of mistake is reported.

The commands run by tests are run by the test modules of what they exercise (test_main.py, test_infer.py,
test_convert.py, ...), taken from the documentation (tests/doc_commands.py: doc_command), with files swapped for
fixtures/temporary paths and flags appended to scale them down (a tiny network, a few steps, small images).
"""
import argparse
import ast
import copy
import functools
import importlib
import os
import pathlib
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from doc_commands import (COMMANDS, DOCSTRING_DOCS, DOCSTRING_SPAN, MARKDOWN_DOCS, MARKDOWN_SPAN, REPO, Command,
                          _code_spans, _docstring_lines, docstring_commands, markdown_commands, variants)
from sparse_restore import config_files

ARGPARSE_CLIS = ("infer", "evaluate", "bench", "convert")

# Where each documented command runs: a test ("file.py::name", "(slow)" when it is marked so), "CI: ..." or
# "not run: <why>". Keys are the commands' canonical text (tests/doc_commands.py: Command.text).
RUNNERS = {
    'python3 -m venv .venv':
        'CI: .ci/run (fresh venv, the README install, then `python -m pytest`)',
    '. .venv/bin/activate':
        'CI: .ci/run (fresh venv, the README install, then `python -m pytest`)',
    'pip install -e ".[all]"':
        'CI: .ci/run (fresh venv, the README install, then `python -m pytest`)',
    'python -m sparse_restore.main --config configs/demo.py --workdir /tmp/sparse_restore_demo':
        'CI: .ci/run runs it after the tests (fresh workdir; prints its wall time and PSNR lines, fails '
        'unless it prints a gain of >= 1.5 dB); configs/tiny.py through main.py: '
        'test_main.py::test_train_mode',
    'python -m pytest':
        'CI: .ci/run (fresh venv, the README install, then `python -m pytest`)',
    'python -m sparse_restore.convert --input DRSformer_Rain200H.pth --output models/drsformer_rain200h':
        'test_convert.py::test_cli_drsformer_fixture_matches_reference, '
        'test_main.py::test_main_evaluates_a_converted_model',
    'python -m sparse_restore.convert --arch ast --input AST_SPAD.pth --output models/ast_spad --verify':
        'test_convert.py::test_convert_ast_with_verify_matches_reference',
    'python -m sparse_restore.infer --checkpoint models/drsformer_rain200h --input photos/ --output restored/':
        'test_infer.py::test_folder_with_mixed_formats_and_a_corrupt_file',
    ('python -m sparse_restore.infer --checkpoint models/drsformer_rain200h --input big.jpg --output '
     'restored/ --tile 512 --tile-overlap 32 --batch 4'):
        'test_infer.py::test_tiled_ensemble_cli_matches_library (16 px tiles)',
    'python -m sparse_restore.infer --checkpoint /tmp/sparse_restore_demo --input photos/ --output out/ --ensemble':
        'test_main.py::test_training_commands_scaled_down (slow; a training workdir as the model)',
    'python -m sparse_restore.infer --checkpoint models/ast_spad --input photos/ --output restored/ --tile 512':
        "not run with the authors' AST file (not in shared/): "
        'test_convert.py::test_convert_ast_with_verify_matches_reference converts the AST fixture the same '
        'way; tiled infer CLI with rounded sizes: test_infer.py::test_rounded_tile_and_overlap_are_stated',
    'python -m sparse_restore.evaluate --results restored/ --targets Rain200H/test/target --protocol restormer':
        'test_evaluate.py::test_cli_restormer_rain200h_with_reports',
    'python -m sparse_restore.evaluate --results out/ --targets DID/test/target --protocol rcdnet --csv scores.csv':
        'test_evaluate.py::test_cli_rcdnet_with_csv_matches_readme',
    ('python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir runs/rain200h '
     '--config.data.manual_dir=/data/Rain200H'):
        'test_main.py::test_training_commands_scaled_down (slow)',
    ('python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir runs/rain200h '
     '--config.batch_size=8 --config.compute_dtype=bfloat16 --config.remat=True'):
        'test_main.py::test_training_commands_scaled_down (slow)',
    'python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir runs/rain200h --mode evaluate':
        'test_main.py::test_evaluate_mode_on_workdir_and_on_exported_model, '
        'test_main.py::test_training_commands_scaled_down (slow)',
    ('python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir '
     'runs/eval_converted --mode evaluate --checkpoint models/drsformer_rain200h '
     '--config.data.manual_dir=/data/Rain200H'):
        'test_main.py::test_main_evaluates_a_converted_model',
    'tensorboard --logdir runs/rain200h':
        'not run (a server): test_train.py::test_reference_run_writes_workdir checks the event files exist, '
        'test_main.py::test_training_commands_scaled_down (slow) reads train/loss back from them',
    'python -m sparse_restore.bench --model drsformer --size 128,256,512,1024 --mode forward':
        'test_bench.py::test_bench_cli_prints_one_json_record_per_size (tiny network, 16,24 px)',
    'python -m sparse_restore.bench --model drsformer --size 128 --batch 2 --mode train [--remat] [--dtype bfloat16]':
        'test_bench.py::test_bench_cli_prints_one_json_record_per_size (without the options), '
        'test_bench.py::test_bench_train_remat_bfloat16_and_max_batch (slow; with them)',
    'python -m sparse_restore.bench --model ast --size 128,256,512,1024 --mode forward':
        'test_bench.py::test_bench_ast_forward',
    'python -m sparse_restore.bench --model drsformer --size 128 --mode max-batch --memory-gb 20 [--remat]':
        'test_bench.py::test_bench_train_remat_bfloat16_and_max_batch (slow)',
    'python -m pytest -m slow':
        'CI: .ci/run runs it after the default selection',
    'pip install -e .':
        "not run: a subset of the `.[all]` install CI does (README's install table: measured in a fresh venv)",
    'pip install -e ".[train]"':
        "not run: a subset of the `.[all]` install CI does (README's install table: measured in a fresh venv)",
    'pip install torch':
        'not run: from PyPI a CUDA build of several GB; CI installs torch==2.13.0 (CPU) for Python 3.11 '
        '(.ci/run)',
    'pip install torch --index-url https://download.pytorch.org/whl/cpu':
        "not run: PyTorch's own index (CI uses the CPU wheel torch==2.13.0, .ci/run)",
    'pip install -e ".[train,cuda]"':
        'not run: needs an NVIDIA GPU host',
    'pip install -e ".[cuda]"':
        'not run: needs an NVIDIA GPU host',
    'pip install -e ".[tpu]"':
        'not run: needs a TPU host',
    ('python -c "from sparse_restore import datasets; datasets.get_builder(\'rain200h\', '
     'data_dir=\'~/tensorflow_datasets\', manual_dir=\'/path/to/Rain200H\').build()"'):
        'test_datasets.py::test_build_with_python_c',
    'python data/tfds_build.py data/rain200h --manual_dir /path/to/Rain200H --data_dir ~/tensorflow_datasets':
        'test_datasets.py::test_tfds_cli_build_subcommand_builds_the_data_folder',
    'python data/tfds_build.py data/synthetic_rain --data_dir ~/tensorflow_datasets':
        'test_datasets.py::test_tfds_build_synthetic_rain',
    'python -m pytest -m slow tests/test_notebooks.py':
        'CI: .ci/run runs them in its slow phase (`python -m pytest -m slow`): '
        'test_notebooks.py::test_train_tpu_notebook_runs (slow), '
        'test_notebooks.py::test_restore_with_pretrained_notebook_runs (slow)',
    'python -m pytest tests/test_notebooks.py':
        'CI: .ci/run (fresh venv, the README install, then `python -m pytest`: the static notebook checks)',
    'pip install jupyterlab':
        'not run: an optional third-party front end',
    'python colab/make_notebooks.py':
        'not run (it would rewrite colab/*.ipynb): '
        'test_notebooks.py::test_committed_notebook_matches_generator checks it would write the committed '
        'files',
    'python colab/make_notebooks.py --check':
        'test_notebooks.py::test_make_notebooks_check',
    ('python -m sparse_restore.main --config configs/ast_agan.py --workdir /tmp/ast_agan '
     '--config.data.manual_dir=/data/raindrop'):
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    'python -m sparse_restore.main --config configs/ast_demo.py --workdir /tmp/ast_demo':
        'not run: a demo (minutes); AST training stages: test_ast_configs.py::test_tiny_progressive_training '
        '(slow)',
    ('python -m sparse_restore.main --config configs/ast_densehaze.py --workdir /tmp/ast_densehaze '
     '--config.data.manual_dir=/data/Dense-Haze-v2'):
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    ('python -m sparse_restore.main --config configs/ast_spa.py --workdir /tmp/ast_spa '
     '--config.data.manual_dir=/data/SPA-Data'):
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    'python -m sparse_restore.main --config configs/ast_tiny.py --workdir /tmp/ast_tiny':
        'not through main.py: test_ast_configs.py::test_tiny_progressive_training (slow) trains this config '
        'with the training loop main.py calls',
    'python -m sparse_restore.main --config configs/default.py --workdir /tmp/drsformer_rain200h':
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    ('python -m sparse_restore.main --config configs/drsformer_ddn.py --workdir /tmp/drsformer_ddn '
     '--config.data.manual_dir=/data/DDN-Data'):
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    ('python -m sparse_restore.main --config configs/drsformer_did.py --workdir /tmp/drsformer_did '
     '--config.data.manual_dir=/data/DID-Data'):
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    ('python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir '
     '/tmp/drsformer_rain200h --config.data.manual_dir=/data/Rain200H'):
        'test_main.py::test_training_commands_scaled_down (slow)',
    ('python -m sparse_restore.main --config configs/drsformer_rain200l.py --workdir '
     '/tmp/drsformer_rain200l --config.data.manual_dir=/data/Rain200L'):
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    ('python -m sparse_restore.main --config configs/drsformer_spa.py --workdir /tmp/drsformer_spa '
     '--config.data.manual_dir=/data/SPA-Data'):
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    'python -m sparse_restore.main --config configs/tiny.py --workdir /tmp/tiny':
        'test_main.py::test_train_mode',
    'python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir /tmp/drsformer_rain200h':
        'not run: needs the dataset and days of training; flags and config fields checked by '
        'test_command_is_valid; the same job scaled down on Rain200H: '
        'test_main.py::test_training_commands_scaled_down (slow)',
    'python -m sparse_restore.main --config configs/demo.py --workdir /tmp/demo':
        "CI: .ci/run runs the same command after the tests (README's command 1, another workdir); "
        'configs/tiny.py through main.py: test_main.py::test_train_mode',
    ('python -m sparse_restore.main --config configs/drsformer_rain200h.py --workdir /tmp/eval --mode '
     'evaluate --checkpoint /path/to/converted_model'):
        'test_main.py::test_main_evaluates_a_converted_model',
    ('python -m sparse_restore.infer --checkpoint exports/drsformer_rain200h --input photos/ --output '
     'restored/ [--tile 512 --tile-overlap 32] [--ensemble] [--batch 4] [--dtype float32|bfloat16]'):
        'test_infer.py::test_tiled_ensemble_cli_matches_library (float32), '
        'test_infer.py::test_infer_docstring_options (bfloat16)',
    ('python -m sparse_restore.evaluate --results out/Rain200H --targets data/Rain200H/test/target '
     '--protocol restormer [--channel y|rgb] [--csv scores.csv] [--json scores.json]'):
        'test_evaluate.py::test_cli_restormer_rain200h_with_reports (--csv --json), '
        'test_evaluate.py::test_cli_rcdnet_and_rgb (--channel rgb)',
    'python -m sparse_restore.bench --model drsformer --size 256 --batch 1 --mode forward':
        'test_bench.py::test_bench_cli_prints_one_json_record_per_size (tiny network, 16,24 px)',
    'python -m sparse_restore.bench --model drsformer --model-kwargs \'{"dim": 8, "use_mefc": false}\' --size 32':
        'test_bench.py::test_bench_cli_prints_one_json_record_per_size',
    'python -m sparse_restore.bench --model drsformer --size 256 --mode forward --reference-dir refs/':
        'test_bench.py::test_reference_dir_times_the_authors_network_in_the_same_run (tiny network, 16 px, '
        'stand-in reference files)',
    'python -m sparse_restore.bench --model drsformer --size 128 --batch 4 --mode train --lower-for cuda':
        'test_bench.py::test_lower_for_reports_convolution_counts_without_running (tiny network, forward), '
        'test_lowering.py::test_lowers_for_accelerator_with_xla_grouped_convolutions_and_no_cpu_guards (train '
        'step)',
    ('python -m sparse_restore.bench --mode input-pipeline --manual-dir Rain200H/ --data-dir '
     '/tmp/tfds --batch 16 --size 128 --num-workers 0,2,4'):
        'test_bench.py::test_input_pipeline_mode_reports_images_per_second (the Rain200H sample, 64 px, 0 '
        'workers)',
    'python -m sparse_restore.convert --input DRSformer_Rain200H.pth --output exports/rain200h':
        'test_convert.py::test_cli_drsformer_fixture_matches_reference',
    'python -m sparse_restore.convert --arch ast --input model_best.pth --output exports/ast --verify':
        'test_convert.py::test_convert_ast_with_verify_matches_reference',
}


# ################################################################################################################
#                                          Checking one command line
# ################################################################################################################


class _ParseError(Exception):
  pass


def _raising(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """The parser with `error` raising instead of printing usage and exiting."""
  def error(message):
    raise _ParseError(message)
  parser.error = error
  return parser


def _parser_from_help(help_text: str) -> argparse.ArgumentParser:
  """An argparse parser with the options listed in a `--help` text (names, takes-a-value, choices)."""
  p = argparse.ArgumentParser(add_help=False)
  body = help_text.split("\noptions:", 1)[-1].split("\noptional arguments:", 1)[-1]
  for line in body.splitlines():
    m = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
    if not m:
      continue
    names, metavar = [], None
    for variant in m.group(1).split(", "):
      name, _, meta = variant.partition(" ")
      names.append(name)
      metavar = meta or metavar
    if "-h" in names:
      continue
    if metavar is None:
      p.add_argument(*names, action="store_true")
    elif metavar.startswith("{"):
      p.add_argument(*names, choices=metavar.strip("{}").split(","))
    else:
      p.add_argument(*names)
  return p


@functools.lru_cache(maxsize=None)
def _bench_help() -> str:
  """`python -m sparse_restore.bench --help`: bench.py builds its parser inside main() (no build_parser())."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  r = subprocess.run([sys.executable, "-m", "sparse_restore.bench", "--help"], capture_output=True, text=True,
                     env=env, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr
  return r.stdout


def cli_parser(name: str) -> argparse.ArgumentParser:
  """The argparse parser of `python -m sparse_restore.<name>`: its build_parser() if it has one, else one made
  from its --help text."""
  module = importlib.import_module("sparse_restore.convert.__main__" if name == "convert" else f"sparse_restore.{name}")
  if hasattr(module, "build_parser"):
    return _raising(module.build_parser())
  assert name == "bench", f"sparse_restore.{name} has no build_parser()"
  return _raising(_parser_from_help(_bench_help()))


def _repo_path(value: str) -> pathlib.Path:
  return REPO / value.split(":", 1)[0]


def check_main(args: Sequence[str]) -> Optional[str]:
  """Parses `python -m sparse_restore.main ARGS` with main.py's absl flags on a fresh FlagValues (main.FLAGS is
  left alone): unknown flags, bad enum values, a missing config file, a --config.<field> the config lacks or a
  value of the wrong type are reported."""
  from absl import flags
  from sparse_restore import config_files, main
  args = list(args)
  for i, a in enumerate(args):  # the config path is relative to the repository root, where the commands run
    if a == "--config" and i + 1 < len(args) and not os.path.isabs(args[i + 1]):
      if not _repo_path(args[i + 1]).is_file():
        return f"--config {args[i + 1]}: no such file in the repository"
      args[i + 1] = str(REPO / args[i + 1])
    elif a.startswith("--config=") and not os.path.isabs(a[9:]):
      args[i] = "--config=" + str(REPO / a[9:])
  argv = ["sparse_restore.main", *args]
  fv = flags.FlagValues()
  for flag in main.FLAGS.get_flags_for_module(main.__name__):
    if flag.name != "config":
      fv[flag.name] = copy.deepcopy(flag)  # keeps mark_flags_as_required's validators
  config_files.define_config_flag("config", "config file", flag_values=fv,
                                  lock_config=main.FLAGS["config"].parser._lock_config, sys_argv=argv)
  try:
    rest = fv(argv)
    fv.config.to_dict()  # a config file that failed to load raises here
  except Exception as e:  # noqa: BLE001  (absl flags.Error, config errors: AttributeError, KeyError, TypeError, ...)
    message = str(e)
    if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":  # a KeyError's repr
      message = message[1:-1].replace("\\n", " ").replace("\\'", "'")
    return f"{type(e).__name__}: {' '.join(message.split())}"
  if rest[1:]:
    return f"unexpected arguments {rest[1:]}"
  return None


def check_argparse_cli(name: str, args: Sequence[str]) -> Optional[str]:
  try:
    cli_parser(name).parse_args(list(args))
  except _ParseError as e:
    return str(e)
  return None


_TFDS_PARSE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("tfds_build", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
class App:
  @staticmethod
  def run(main, flags_parser):
    flags_parser(["tfds_build.py", *sys.argv[2:]])
module.app = App
module.main()
"""


@functools.lru_cache(maxsize=None)
def _tfds_build_run(args: Tuple[str, ...]) -> subprocess.CompletedProcess:
  """Parses ARGS with the flags parser data/tfds_build.py hands to absl's app.run (nothing is built). In a
  subprocess: TFDS's parser also takes in every absl flag of the process, and main.py's --config, defined in this
  one, would clash with TFDS's own -c/--config."""
  return subprocess.run([sys.executable, "-c", _TFDS_PARSE, str(REPO / "data" / "tfds_build.py"), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def _tfds_build_parse(args: Tuple[str, ...]) -> Optional[str]:
  r = _tfds_build_run(args)
  if r.returncode != 0:
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln] or r.stderr.splitlines()[-3:]
    return "the TFDS build parser refused the arguments: " + " ".join(" ".join(lines).split())
  return None


def check_tfds_build(args: Sequence[str]) -> Optional[str]:
  positional = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or not args[i - 1].startswith("-"))]
  for p in positional:
    name = pathlib.PurePosixPath(p).name
    if not (REPO / p / f"{name}_dataset_builder.py").is_file():
      return f"dataset folder {p}: {p}/{name}_dataset_builder.py does not exist in the repository"
  return _tfds_build_parse(tuple(args))


def check_python_c(code: str) -> Optional[str]:
  """`python -c CODE`: valid Python; `datasets.get_builder(name, ...)` calls name a registered dataset and use
  accepted keywords."""
  import inspect
  from sparse_restore import datasets
  try:
    tree = ast.parse(code)
  except SyntaxError as e:
    return f"the Python code does not parse: {e}"
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get_builder":
      if node.args and isinstance(node.args[0], ast.Constant):
        try:
          datasets.get_builder(node.args[0].value)
        except Exception as e:  # noqa: BLE001
          return f"get_builder({node.args[0].value!r}): {e}"
      accepted = inspect.signature(datasets.get_builder).parameters
      unknown = [k.arg for k in node.keywords if k.arg not in accepted]
      if unknown:
        return f"get_builder does not accept {unknown}"
  return None


@functools.lru_cache(maxsize=None)
def _pyproject() -> dict:
  try:
    import tomllib
  except ImportError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib
  return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pyproject_extras() -> List[str]:
  return list(_pyproject()["project"].get("optional-dependencies", {}))


def _pytest_markers() -> List[str]:
  return [m.split(":")[0].strip() for m in _pyproject()["tool"]["pytest"]["ini_options"].get("markers", [])]


def check_tokens(tokens: Sequence[str], context: Sequence[Command] = ()) -> Optional[str]:
  """None if the command line is valid, else what is wrong. `context`: the other commands of the same file."""
  prog, args = tokens[0], list(tokens[1:])
  if prog == ".":
    return None if args == [".venv/bin/activate"] else f"unexpected `. {' '.join(args)}`"
  if prog == "pip":
    if args[:1] != ["install"]:
      return f"unexpected pip subcommand {args[:1]}"
    for a in args[1:]:
      m = re.fullmatch(r"\.\[([\w,-]+)\]", a)
      if m:
        missing = [e for e in m.group(1).split(",") if e not in _pyproject_extras()]
        if missing:
          return f"extras {missing} are not in pyproject.toml ({_pyproject_extras()})"
    return None
  if prog == "tensorboard":
    if len(args) != 2 or args[0] != "--logdir":
      return "expected `tensorboard --logdir DIR`"
    workdirs = {c.tokens[c.tokens.index("--workdir") + 1] for c in context
                if "sparse_restore.main" in c.tokens and "--workdir" in c.tokens[:-1]}
    if args[1] not in workdirs:
      return f"--logdir {args[1]} is not the --workdir of any training command here ({sorted(workdirs)})"
    return None
  if prog not in ("python", "python3"):
    return f"unknown program {prog!r}"
  if args[:2] == ["-m", "venv"]:
    return None if len(args) == 3 else "expected `python -m venv DIR`"
  if args[:2] == ["-m", "pytest"]:
    rest = args[2:]
    for i, a in enumerate(rest):
      if a == "-m":
        if i + 1 >= len(rest) or rest[i + 1].replace("not ", "") not in _pytest_markers():
          return f"pytest -m: marker {rest[i + 1:i + 2]} is not declared in pyproject.toml"
      elif not a.startswith("-") and (i == 0 or rest[i - 1] != "-m"):
        if not (REPO / a.split("::")[0]).exists():
          return f"pytest path {a} does not exist"
    return None
  if args[:1] == ["-c"]:
    return check_python_c(args[1]) if len(args) == 2 else "expected `python -c CODE`"
  if args[:1] == ["-m"] and len(args) > 1 and args[1].startswith("sparse_restore."):
    name = args[1].split(".", 1)[1]
    if name == "main":
      return check_main(args[2:])
    if name in ARGPARSE_CLIS:
      return check_argparse_cli(name, args[2:])
    return f"unknown module {args[1]}"
  if args and args[0].endswith(".py"):
    if not (REPO / args[0]).is_file():
      return f"script {args[0]} does not exist in the repository"
    if args[0] == "data/tfds_build.py":
      return check_tfds_build(args[1:])
    if args[0] == "colab/make_notebooks.py":
      return None if set(args[1:]) <= {"--check"} else f"colab/make_notebooks.py takes only --check, got {args[1:]}"
    return f"no check for script {args[0]}; add one"
  return f"no check for `python {' '.join(args[:2])}`; add one"


def check_command(cmd: Command, context: Sequence[Command] = ()) -> List[str]:
  """Problems of every variant of a documented command, each naming the file, line and command."""
  problems = []
  for v in variants(cmd.tokens):
    problem = check_tokens(v, context)
    if problem:
      shown = "" if list(v) == list(cmd.tokens) else f" (as `{' '.join(v)}`)"
      problems.append(f"{cmd.where()}{shown}: {problem}")
  return problems


# ################################################################################################################
#                                               Static tests
# ################################################################################################################



def test_commands_are_found():
  """The extraction sees every documentation file's commands (guards against the parser silently finding none)."""
  by_file = {}
  for c in COMMANDS:
    by_file.setdefault(c.source.split(":")[0], []).append(c)
  for rel in MARKDOWN_DOCS + DOCSTRING_DOCS:
    assert by_file.get(rel), f"no command found in {rel}"
  for cli in ("main", "infer", "evaluate", "bench", "convert"):
    assert any(f"sparse_restore.{cli}" in c.tokens for c in by_file["README.md"]), f"README.md: no {cli} command"
  assert len(by_file["README.md"]) >= 20, [c.text for c in by_file["README.md"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.source}:{i}" for i, c in enumerate(COMMANDS)])
def test_command_is_valid(cmd):
  context = [c for c in COMMANDS if c.source.split(":")[0] == cmd.source.split(":")[0]]
  problems = check_command(cmd, context)
  assert not problems, "\n".join(problems)



def coverage_problems(runners: Dict[str, str]) -> List[str]:
  """What is wrong with a coverage table like RUNNERS (see test_every_command_has_a_runner)."""
  texts = {c.text: c for c in COMMANDS}
  problems = [f"{c.where()}: missing from RUNNERS in tests/test_docs.py (add it with the test that runs it)"
              for t, c in texts.items() if t not in runners]
  problems += [f"RUNNERS entry for a command the documentation no longer has: `{t}`" for t in runners
               if t not in texts]
  for command, runner in runners.items():
    refs = re.findall(r"(test_\w+\.py)::(test_\w+)( \(slow)?", runner or "")
    if not refs and not (runner or "").startswith(("CI:", "not run")):
      problems.append(f"`{command}` -> {runner}: name a test, CI: or not run")
    for file, name, slow in refs:
      path = REPO / "tests" / file
      m = re.search(rf"^((?:@.*\n)*)def {name}\(", path.read_text() if path.is_file() else "", re.M)
      if not m:
        problems.append(f"`{command}` -> tests/{file}::{name} does not exist")
      elif slow and "mark.slow" not in m.group(1):
        problems.append(f"tests/{file}::{name} is called slow in RUNNERS but is not marked so")
  return problems


def test_every_command_has_a_runner():
  """Each documented command is in RUNNERS (and nothing else is); the tests RUNNERS names exist, and those it
  calls slow are marked slow."""
  problems = coverage_problems(RUNNERS)
  assert not problems, "\n".join(problems)


def test_coverage_table_mistakes_are_reported():
  runners = {("python -m pytest --lf" if k == "python -m pytest" else k): v for k, v in RUNNERS.items()}
  evaluate = next(k for k, v in runners.items() if "test_cli_restormer_rain200h_with_reports" in v)
  runners[evaluate] = runners[evaluate].replace("test_cli_restormer_rain200h_with_reports",
                                                "test_cli_restormer_renamed", 1)
  notebooks = next(k for k, v in runners.items() if "test_make_notebooks_check" in v)
  runners[notebooks] = runners[notebooks].replace("test_make_notebooks_check", "test_make_notebooks_check (slow)", 1)
  problems = coverage_problems(runners)
  assert len(problems) == 4, problems
  assert re.match(r"README\.md:\d+: `python -m pytest`: missing from RUNNERS", problems[0]), problems[0]
  assert "no longer has: `python -m pytest --lf`" in problems[1]
  assert "tests/test_evaluate.py::test_cli_restormer_renamed does not exist" in problems[2]
  assert "test_make_notebooks_check is called slow" in problems[3]

# A README with mistakes of each kind: every one must be reported with its file, line and command.
BAD_README = '''# x

```bash
python -m sparse_restore.infer --checkpoint m --input a --output b --tiles 512
python -m sparse_restore.evaluate --results r --targets t
python -m sparse_restore.evaluate --results r --targets t --protocol matlab
python -m sparse_restore.bench --model drsformer --mode fast
python -m sparse_restore.bench --model drsformer --size 128 [--remmat]
python -m sparse_restore.convert --input a.pth --output o --verfy
python -m sparse_restore.main --config configs/tiny.py --workdir w \\
    --config.batch_sise=8
python -m sparse_restore.main --config configs/tiny.py --workdir w --config.batch_size=eight
python -m sparse_restore.main --config configs/tiny.py --workdir w --config.model.numblocks="(1, 1, 1, 1)"
python -m sparse_restore.main --config configs/nope.py --workdir w
python -m sparse_restore.main --config configs/tiny.py --workdir w --moed evaluate
python -m sparse_restore.main --config configs/tiny.py --workdir w --mode eval
python -m sparse_restore.main --config configs/tiny.py
python data/tfds_build.py data/rain300h --data_dir d
python data/tfds_build.py data/rain200h --manual-dir m
python data/build.py
python -m pytest tests/test_nope.py
python3 -m venv .venv && pip install -e ".[everything]"
tensorboard --logdir runs/elsewhere
python -c "from sparse_restore import datasets; datasets.get_builder('rain300h').build()"
python -m sparse_restore.restore --input a
make all
```
'''

BAD_CASES = [  # (line in BAD_README, text the problem must contain)
    (4, "unrecognized arguments: --tiles"), (5, "required: --protocol"), (6, "invalid choice: 'matlab'"),
    (7, "invalid choice: 'fast'"), (8, "unrecognized arguments: --remmat"), (9, "unrecognized arguments: --verfy"),
    (10, 'Did you mean "batch_size"'), (12, "flag --config.batch_size=eight"), (13, "numblocks"),
    (14, "configs/nope.py: no such file"), (15, "Unknown command line flag 'moed'"), (16, "--mode=eval"),
    (17, "--workdir must have a value"), (18, "data/rain300h/rain300h_dataset_builder.py does not exist"),
    (19, "unrecognized arguments: --manual-dir"), (20, "script data/build.py does not exist"),
    (21, "pytest path tests/test_nope.py does not exist"), (22, "extras ['everything']"),
    (23, "--logdir runs/elsewhere is not the --workdir"), (24, "rain300h"), (25, "unknown module"),
]


@functools.lru_cache(maxsize=None)
def _bad_problems() -> Tuple[str, ...]:
  cmds = markdown_commands("README.md", text=BAD_README.replace("make all\n", ""))
  return tuple(p for c in cmds for p in check_command(c, cmds))


@pytest.mark.parametrize("line,expected", BAD_CASES, ids=[str(n) for n, _ in BAD_CASES])
def test_mistakes_are_reported_with_file_line_and_command(line, expected):
  problems = [p for p in _bad_problems() if p.startswith(f"README.md:{line}: `")]
  assert problems, f"nothing reported for line {line} of BAD_README; all problems:\n" + "\n".join(_bad_problems())
  assert any(expected in p for p in problems), problems


def test_every_bad_line_is_reported_and_good_commands_pass():
  """The bad README's commands are all reported (and `python3 -m venv .venv`, valid, is not); an unknown program
  in a bash block stops the extraction, naming it."""
  reported = {int(p.split(":")[1]) for p in _bad_problems()}
  assert reported == {n for n, _ in BAD_CASES}
  with pytest.raises(AssertionError, match=r"README.md:26: `make all` in a bash block"):
    markdown_commands("README.md", text=BAD_README)


def test_extraction_of_continuations_comments_and_optional_parts():
  text = ('Run `python -m sparse_restore.infer --checkpoint m\n--input a --output b --tile 64` in prose.\n\n```\n'
          '# a comment line\npython -m sparse_restore.bench --model ast \\\n'
          '    --size 32 [--remat] [--dtype a|b]  # why\n'
          'import numpy  # a Python line of an untagged block: not a command\n```\n')
  cmds = markdown_commands("X.md", text=text)
  assert [(c.source, c.text, c.inline) for c in cmds] == [
      ("X.md:6", "python -m sparse_restore.bench --model ast --size 32 [--remat] [--dtype a|b]", False),
      ("X.md:1", "python -m sparse_restore.infer --checkpoint m --input a --output b --tile 64", True)]
  assert variants(cmds[0].tokens) == [
      ["python", "-m", "sparse_restore.bench", "--model", "ast", "--size", "32"],
      ["python", "-m", "sparse_restore.bench", "--model", "ast", "--size", "32", "--remat", "--dtype", "a"],
      ["python", "-m", "sparse_restore.bench", "--model", "ast", "--size", "32", "--remat", "--dtype", "b"]]
  source = ('"""Doc.\n\n    python -m sparse_restore.evaluate --results r \\\\\n        --targets t --protocol rcdnet\n'
            'Also ``python colab/make_notebooks.py --check``.\n"""\nx = 1\n')
  cmds = docstring_commands("m.py", source)
  assert [(c.source, c.text) for c in cmds] == [
      ("m.py:3", "python -m sparse_restore.evaluate --results r --targets t --protocol rcdnet"),
      ("m.py:5", "python colab/make_notebooks.py --check")]


# ----------------------------------------------------------------------------------------- flags and files in prose


@functools.lru_cache(maxsize=None)
def _known_flags() -> frozenset:
  """Every --flag some documented program accepts: the argparse CLIs, main.py's absl flags, TFDS build."""
  from sparse_restore import main
  names = set()
  for cli in ARGPARSE_CLIS:
    for action in cli_parser(cli)._actions:
      names.update(o for o in action.option_strings if o.startswith("--"))
  names.update(f"--{f.name}" for f in main.FLAGS.get_flags_for_module(main.__name__))
  names.update(f"--{f.name}" for f in main.FLAGS.get_flags_for_module("absl.logging"))  # --verbosity
  names.add("--helpfull")
  tfds_help = _tfds_build_run(("--help",))
  assert tfds_help.returncode == 0, tfds_help.stderr
  names.update(re.findall(r"--[\w-]+", tfds_help.stdout))
  names.add("--check")  # colab/make_notebooks.py
  return frozenset(names)


def _config_field(config_file: str, path: str):
  """The value of field ``path`` of configs/<file> (AttributeError/KeyError when it does not exist)."""
  node = config_files.load_config(_repo_path(config_file))
  for part in path.split("."):
    node = node[part]
  return node


def _inline_spans(rel: str) -> List[Tuple[str, str]]:
  """(file:line, text) of the inline code spans of a Markdown file's prose or of a module docstring."""
  if rel.endswith(".md"):
    prose, fence = [], False
    for n, line in enumerate((REPO / rel).read_text().splitlines(), 1):
      if line.strip().startswith("```"):
        fence = not fence
      elif not fence:
        prose.append((n, line))
    spans = _code_spans(prose, MARKDOWN_SPAN)
  else:
    spans = _code_spans(_docstring_lines(rel), DOCSTRING_SPAN)
  return [(f"{rel}:{n}", re.sub(r"=\s+", "=", text)) for n, text in spans]  # `--a=\n  b` wrapped in a docstring


def prose_flag_problems(rel: str, spans: Sequence[Tuple[str, str]]) -> List[str]:
  """Problems of the `--flag`s in inline code spans of file ``rel`` (see test_flags_named_in_prose_exist)."""
  problems = []
  own = rel if rel.startswith("configs/") else "configs/default.py"
  for where, span in spans:
    words = span.split()
    for i, w in enumerate(words):
      if not w.startswith("--") or "<" in w or re.match(r"(python3?|pip) ", span):
        continue
      problem = None
      if w == "--config" and i + 1 < len(words):
        path = words[i + 1].split(":")[0]
        if not _repo_path(path).is_file():
          problem = f"{path} does not exist"
        elif ":" in words[i + 1] and "<" not in words[i + 1]:
          problem = check_main(["--config", words[i + 1], "--workdir", "w"])
      elif w.startswith("--config."):
        field = w[len("--config."):].split("=")[0]
        if len(field) == 1:
          continue  # `--config.x`: a placeholder
        if "=" in w:
          problem = check_main(["--config", own, "--workdir", "w", w])
        else:
          try:
            _config_field(own, field)
          except (AttributeError, KeyError) as e:
            problem = f"{own} has no field {field} ({' '.join(str(e).split())})"
      elif w.split("=")[0] not in _known_flags():
        problem = f"no documented program accepts {w.split('=')[0]}"
      if problem:
        problems.append(f"{where}: `{span}`: {problem}")
  return problems


def test_flags_named_in_prose_exist():
  """`--flag`s in inline code exist in some documented program; `--config.a.b[=v]` names a field of the config
  the text is about (that file's own config in configs/*.py docstrings, else default.py) and `v` parses."""
  problems = [p for rel in MARKDOWN_DOCS + DOCSTRING_DOCS for p in prose_flag_problems(rel, _inline_spans(rel))]
  assert not problems, "\n".join(problems)


def test_wrong_flags_in_prose_are_reported():
  spans = [("configs/ast_spa.py:9", "--config.eval.tiles=0"), ("configs/ast_spa.py:10", "--config.data.manual_dri"),
           ("configs/ast_spa.py:11", "--config.eval.tile=big"), ("README.md:3", "--ensembel"),
           ("README.md:4", "--config configs/ast_spa.py:many"), ("README.md:5", "--config.x")]
  problems = prose_flag_problems("configs/ast_spa.py", spans)
  assert [p.split(":")[1] for p in problems] == ["9", "10", "11", "3", "4"], problems
  assert "tiles" in problems[0] and "manual_dri" in problems[1] and "--config.eval.tile=big" in problems[2]
  assert "--ensembel" in problems[3]


def file_problems(rel: str, text: str) -> List[str]:
  """Relative Markdown links and repository paths (configs/, colab/, data/, tests/, sparse_restore/ files) of
  ``text`` (file ``rel``) that do not exist; for README.md also the config names of its `Configs:` paragraph
  (`drsformer_{a,b}.py` expanded), for data/README.md the dataset folders of its table."""
  problems = []
  for n, line in enumerate(text.splitlines(), 1):
    where = f"{rel}:{n}"
    links = re.findall(r"\]\(([^)\s]+)\)", line)
    for target in links:
      if not re.match(r"[a-z]+://", target) and not (REPO / rel).parent.joinpath(target.split("#")[0]).exists():
        problems.append(f"{where}: link target {target} does not exist")
    repo_paths = r"(?<![\w/.<])((?:configs|colab|data|tests|sparse_restore)/[\w./-]*\.(?:py|ipynb|md))"
    for path in re.findall(repo_paths, line):
      if not (REPO / path).exists() and path not in links:
        problems.append(f"{where}: {path} does not exist")
  if rel == "README.md":
    configs_par = text[text.index("Configs:"):].split("\n\n")[0]
    names = []
    for m in re.finditer(r"`([^`]+\.py)`", configs_par):
      for part in re.findall(r"[\w{},]+\.py", m.group(1)):
        b = re.match(r"(\w*)\{([\w,]+)\}(\w*\.py)", part)
        names += [b.group(1) + x + b.group(3) for x in b.group(2).split(",")] if b else [part]
    assert len(names) >= 10, names
    problems += [f"README.md (Configs:): configs/{n} does not exist" for n in names
                 if not (REPO / "configs" / n).is_file()]
  if rel == "data/README.md":
    for name in re.findall(r"^\| `(\w+)` \|", text, re.M):
      if not (REPO / "data" / name / f"{name}_dataset_builder.py").is_file():
        problems.append(f"data/README.md: dataset {name}: data/{name}/{name}_dataset_builder.py does not exist")
  return problems


def test_files_named_in_the_documentation_exist():
  problems = []
  for rel in MARKDOWN_DOCS:
    problems += file_problems(rel, (REPO / rel).read_text())
  for rel in DOCSTRING_DOCS:
    lines = dict(_docstring_lines(rel))
    problems += file_problems(rel, "\n".join(lines.get(n, "") for n in range(1, max(lines, default=0) + 1)))
  assert not problems, "\n".join(problems)


def test_missing_files_are_reported():
  readme = (REPO / "README.md").read_text()
  broken = (readme.replace("(data/README.md)", "(data/READ_ME.md)")
            .replace("`colab/train_tpu.ipynb`", "`colab/train.ipynb`")
            .replace("`tiny.py`", "`tinier.py`").replace("ast_{spa,agan,", "ast_{spa,agn,"))
  problems = file_problems("README.md", broken)
  assert len(problems) == 4, problems
  for bad in ("data/READ_ME.md", "colab/train.ipynb", "configs/tinier.py", "configs/ast_agn.py"):
    assert any(bad in p for p in problems), (bad, problems)
  assert any(p.startswith("README.md:") and "data/READ_ME.md" in p for p in problems)
  data_readme = (REPO / "data" / "README.md").read_text().replace("| `did` |", "| `didd` |")
  assert file_problems("data/README.md", data_readme) == [
      "data/README.md: dataset didd: data/didd/didd_dataset_builder.py does not exist"]


def test_demo_prints_psnr_at_the_end():
  """README Quick start ("What the demo does and prints"): the demo ends with the PSNR of the restored held-out
  tiles and of their rainy inputs. main.py prints them when the training loop evaluated, which it does after the
  last step only when eval_every_steps > 0 (train.py)."""
  readme = (REPO / "README.md").read_text()
  start = readme.index("**What the demo does and prints.**")
  shown = readme[start:readme.index("\n## ", start)]
  assert re.search(r"restored PSNR [\d.]+ dB .* degraded input PSNR [\d.]+ dB", shown), shown
  config = _config_field("configs/demo.py", "eval_every_steps")
  assert config > 0, f"configs/demo.py: eval_every_steps = {config}: no evaluation, no PSNR printed"
