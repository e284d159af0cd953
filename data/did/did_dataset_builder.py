"""TFDS CLI entry for DID-Data.

    tfds build data/did --manual_dir <folder> [--data_dir <tfds dir>]

Manual download (links in the README of https://github.com/cschenxiang/DRSformer); unpack so that <folder> holds
  train/input/*.png  and  train/target/*.png    training pairs (paired by file name)
  test/input/*.png  and  test/target/*.png    test pairs
The builder itself is `sparse_restore.datasets.Did` (its MANUAL_DOWNLOAD_INSTRUCTIONS and README.md here give
the details); evaluation protocol 'rcdnet' on the Y channel.
"""
from sparse_restore.datasets import builders


class Builder(builders.Did, skip_registration=True):
  """DID-Data: the package's builder under the name the TFDS CLI expects (writes <data_dir>/did/)."""

  name = "did"
