"""Labelled image sources with one element structure: {'image': encoded bytes, 'label': int32}.

- `tfds_splits`: TFDS `cats_vs_dogs` (or another image classification dataset with `image` and
  `label` features), split as the tutorial does. It downloads on first use where there is internet,
  into `data_dir` or `$TFDS_DATA_DIR` (default `~/tensorflow_datasets`).
- `folder_splits`: a local folder in ImageFolder layout (see `tlflax.data.folders`).
"""
import dataclasses
import os
from typing import Optional

import tensorflow as tf
import tensorflow_datasets as tfds

from tlflax.data import folders

# TFDS `cats_vs_dogs` has a single `train` split; the tutorials slice it.
SPLIT_SCHEMES = {
    # The original tutorial: 80% / 10% / 10% of train.
    'original': {'train': 'train[:80%]', 'validation': 'train[80%:90%]', 'test': 'train[90%:]'},
    # The later tutorial: 80% / 20%, and the test set is the first fifth of the validation part.
    'later': {'train': 'train[:80%]', 'validation': 'train[84%:]', 'test': 'train[80%:84%]'},
}


@dataclasses.dataclass(frozen=True)
class Source:
  """One split: a tf.data.Dataset of {'image': encoded bytes, 'label': int32}, and its size."""
  dataset: tf.data.Dataset
  num_examples: int
  class_names: tuple[str, ...]


def check_split_scheme(name: str):
  """Raises `DataError` unless `name` is one of `SPLIT_SCHEMES`."""
  if name not in SPLIT_SCHEMES:
    raise folders.DataError(f'split_scheme must be one of {sorted(SPLIT_SCHEMES)}, got {name!r}')


def tfds_splits(name: str = 'cats_vs_dogs', split_scheme: str = 'original',
                data_dir: Optional[str] = None) -> dict[str, Source]:
  """The train/validation/test splits of a TFDS image classification dataset."""
  check_split_scheme(split_scheme)
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare()
  class_names = tuple(builder.info.features['label'].names)
  splits = {}
  for split, tfds_split in SPLIT_SCHEMES[split_scheme].items():
    dataset = builder.as_dataset(split=tfds_split, shuffle_files=False,
                                 decoders={'image': tfds.decode.SkipDecoding()})
    dataset = dataset.map(lambda x: {'image': x['image'], 'label': tf.cast(x['label'], tf.int32)})
    splits[split] = Source(dataset, int(dataset.cardinality()), class_names)
    if not splits[split].num_examples:
      raise folders.DataError(f'TFDS {name}: the {split} split ({tfds_split}) is empty')
  return splits


def folder_splits(root, seed: int = 0, max_pixels: int = 50_000_000) -> dict[str, Source]:
  """The train/validation/test splits of an image folder, checked image by image."""
  files, class_names = folders.scan_image_folder(root, seed, max_pixels=max_pixels)

  def source(split: folders.LabelledFiles) -> Source:
    dataset = tf.data.Dataset.from_tensor_slices(  # bytes: file names need not be UTF-8
        {'image': [os.fsencode(p) for p in split.paths],
         'label': tf.constant(split.labels, tf.int32)})
    dataset = dataset.map(lambda x: {'image': tf.io.read_file(x['image']), 'label': x['label']},
                          num_parallel_calls=tf.data.AUTOTUNE)
    return Source(dataset, len(split.paths), class_names)

  return {split: source(split_files) for split, split_files in files.items()}
