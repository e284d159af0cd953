"""`tfds build` for the dataset folders here, without the rest of the TFDS CLI.

TFDS 4.9.10's `tfds` console script imports apache_beam and mlcroissant at start-up (for its `convert_format` and
`build_croissant` subcommands), which this project does not install. This runs the CLI's own `build` subcommand
with the same arguments:

    python data/tfds_build.py data/rain200h --manual_dir /path/to/Rain200H --data_dir ~/tensorflow_datasets
    python data/tfds_build.py data/synthetic_rain --data_dir ~/tensorflow_datasets

With apache-beam and mlcroissant installed, `tfds build data/rain200h --manual_dir ...` does the same.
"""
from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils


def main():
  """Parses `tfds build` arguments and runs the build."""
  app.run(lambda args: args.execute(),
          flags_parser=cli_utils.make_flags_parser(build.Args, description="tfds build (build subcommand only)"))


if __name__ == "__main__":
  main()
