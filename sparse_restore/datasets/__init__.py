"""Paired image-restoration datasets as TFDS builders (array_record, readable by grain without TensorFlow).

    from sparse_restore import datasets
    builder = datasets.get_builder('rain200h', data_dir='~/tfds', manual_dir='~/data/Rain200H').build()
    source = builder.as_data_source('test')            # random access: source[i] -> dict of numpy arrays
    datasets.get_spec('rain200h').protocol, .channel   # 'restormer', 'y': how results on the set are scored

Registered names: 'rain200h', 'rain200l', 'did', 'ddn', 'spa', 'agan', 'densehaze' (raw folders downloaded by
hand, see each builder's MANUAL_DOWNLOAD_INSTRUCTIONS or data/README.md) and 'synthetic_rain' (generated offline
from scikit-image's sample photos). The same builders can be built with the TFDS CLI: ``tfds build
data/rain200h --manual_dir ...`` (the CLI needs TensorFlow).
"""
from sparse_restore.datasets.paired import (  # noqa: F401
    CHANNELS,
    PROTOCOLS,
    SPECS,
    Agan,
    DatasetError,
    DatasetSpec,
    Ddn,
    Densehaze,
    Did,
    Pair,
    PairedImageBuilder,
    Rain200h,
    Rain200l,
    RestorationBuilder,
    Spa,
    builder_class,
    get_builder,
    get_spec,
    names,
    pair_folders,
    read_image,
    register,
)
from sparse_restore.datasets.synthetic_rain import SyntheticRain, synthesize_rain  # noqa: F401
