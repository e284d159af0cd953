"""TFDS CLI entry for Rain200L.

    tfds build data/rain200l --manual_dir <folder> [--data_dir <tfds dir>]

Manual download (links in the README of https://github.com/cschenxiang/DRSformer); unpack so that <folder> holds
  train/input/*.png  and  train/target/*.png    training pairs (paired by file name)
  test/input/*.png  and  test/target/*.png    test pairs
The builder itself is `sparse_restore.datasets.Rain200l` (its MANUAL_DOWNLOAD_INSTRUCTIONS and README.md here give
the details); evaluation protocol 'restormer' on the Y channel.
"""
from sparse_restore.datasets import builders


class Builder(builders.Rain200l, skip_registration=True):
  """Rain200L: the package's builder under the name the TFDS CLI expects (writes <data_dir>/rain200l/)."""

  name = "rain200l"
