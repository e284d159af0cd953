"""TFDS CLI entry for SPA-Data.

    tfds build data/spa --manual_dir <folder> [--data_dir <tfds dir>]

Manual download (links in the README of https://github.com/cschenxiang/DRSformer); unpack so that <folder> holds
  train/input/*.png  and  train/target/*.png    training pairs (paired by file name)
  test/input/*.png  and  test/target/*.png    test pairs
The builder itself is `sparse_restore.datasets.Spa` (its MANUAL_DOWNLOAD_INSTRUCTIONS and README.md here give
the details); evaluation protocol 'restormer' on the Y channel.
"""
from sparse_restore.datasets import builders


class Builder(builders.Spa, skip_registration=True):
  """SPA-Data: the package's builder under the name the TFDS CLI expects (writes <data_dir>/spa/)."""

  name = "spa"
