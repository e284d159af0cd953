"""TFDS CLI entry for Dense-Haze.

    tfds build data/densehaze --manual_dir <folder> [--data_dir <tfds dir>]

Manual download (links in the README of https://github.com/joshyZhou/AST); unpack so that <folder> holds
  train_dense/input/*.png  and  train_dense/gt/*.png    training pairs (paired by file name)
  valid_dense/input/*.png  and  valid_dense/gt/*.png    test pairs
The builder itself is `sparse_restore.datasets.Densehaze` (its MANUAL_DOWNLOAD_INSTRUCTIONS and README.md here give
the details); evaluation protocol 'basicsr' on the RGB channel.
"""
from sparse_restore.datasets import builders


class Builder(builders.Densehaze, skip_registration=True):
  """Dense-Haze: the package's builder under the name the TFDS CLI expects (writes <data_dir>/densehaze/)."""

  name = "densehaze"
