"""TFDS CLI entry for AGAN-Data (raindrop).

    tfds build data/agan --manual_dir <folder> [--data_dir <tfds dir>]

Manual download (links in the README of https://github.com/joshyZhou/AST); unpack so that <folder> holds
  train/data/*.png  and  train/gt/*.png    training pairs (paired by file name)
  test_a/data/*.png  and  test_a/gt/*.png    test pairs
The builder itself is `sparse_restore.datasets.Agan` (its MANUAL_DOWNLOAD_INSTRUCTIONS and README.md here give
the details); evaluation protocol 'basicsr' on the RGB channel.
"""
from sparse_restore.datasets import builders


class Builder(builders.Agan, skip_registration=True):
  """AGAN-Data (raindrop): the package's builder under the name the TFDS CLI expects (writes <data_dir>/agan/)."""

  name = "agan"
