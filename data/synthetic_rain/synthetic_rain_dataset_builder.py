"""TFDS CLI entry for the synthetic-rain demo set.

    tfds build data/synthetic_rain [--data_dir <tfds dir>]

Nothing to download: rainy/clean tiles are generated from scikit-image's bundled photos (train and test splits
from different photos). The builder itself is `sparse_restore.datasets.SyntheticRain`; evaluation protocol
'restormer' on the Y channel.
"""
from sparse_restore.datasets import synthetic_rain


class Builder(synthetic_rain.SyntheticRain, skip_registration=True):
  """Synthetic rain demo: the package's builder under the name the TFDS CLI expects.

  Writes <data_dir>/synthetic_rain/.
  """

  name = "synthetic_rain"
