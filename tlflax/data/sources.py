"""Labelled image sources with one element structure: {'image': encoded bytes, 'label': int32}.

- `tfds_splits`: any TFDS image classification dataset by name (`cats_vs_dogs`, `tf_flowers`,
  ...). The image and label features and the class names come from the builder's info. It
  downloads on first use where there is internet, into `data_dir` or `$TFDS_DATA_DIR` (default
  `~/tensorflow_datasets`).
- `folder_splits`: a local folder in ImageFolder layout (see `tlflax.data.folders`).

`check_class_counts` logs each split's examples per class and stops on a class without training
examples.
"""
from __future__ import annotations  # annotations name tf.data, imported where used

import dataclasses
import os
from typing import TYPE_CHECKING, Callable, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from tlflax.data import carving, decoders, folders
from tlflax.errors import DataError

if TYPE_CHECKING:  # imported where used: folders need no TensorFlow
  import tensorflow as tf

# Fixed slices of TFDS `train`, as the tutorials take them from `cats_vs_dogs` (its only split);
# 'auto' uses the dataset's own splits and carves the missing ones out by seed (`carving`).
SPLIT_SCHEMES = {
    # The original tutorial: 80% / 10% / 10% of train.
    'original': {'train': 'train[:80%]', 'validation': 'train[80%:90%]', 'test': 'train[90%:]'},
    # The later tutorial: 80% / 20%, and the test set is the first fifth of the validation part.
    'later': {'train': 'train[:80%]', 'validation': 'train[84%:]', 'test': 'train[80%:84%]'},
    'auto': None,
}
IMBALANCE_WARNING = 5.0  # warn when a training class has this many times the examples of another


def _read_nothing(record: dict) -> dict:
  return record


def _position(index: int) -> str:
  return f'example {index}'


def process_range(num_examples: int, index: Optional[int] = None) -> tuple[int, int]:
  """[start, end) of process `index`'s (default this process's) contiguous shard of a split: the
  `jax.process_count()` shards differ in size by at most one, larger first (TFDS's `even_splits`
  layout)."""
  index = jax.process_index() if index is None else index
  size, extra = divmod(num_examples, jax.process_count())
  start = index * size + min(index, extra)
  return start, start + size + (index < extra)


def gather_shards(local: np.ndarray, num_examples: int) -> np.ndarray:
  """The whole split's rows, from each process's rows of its `process_range` (in split order)."""
  if jax.process_count() == 1:
    return local
  sizes = [end - start for start, end in (process_range(num_examples, i)
                                          for i in range(jax.process_count()))]
  padded = np.zeros((max(sizes), *local.shape[1:]), local.dtype)
  padded[:len(local)] = local
  everyone = multihost_utils.process_allgather(padded)
  return np.concatenate([rows[:size] for rows, size in zip(everyone, sizes)])


@dataclasses.dataclass(frozen=True)
class Source:
  """One split: `records_between(start, end)` gives the records at those split positions (reading
  no others, except between the first and last of a carved TFDS split's); `read` turns a record
  into {'image': encoded bytes, 'label': int32}. Also its size, the dataset's class names, the
  split's number of examples of each class, and `locate`, which names the example at a split
  position so that a person can open it (a file path, or the TFDS slice that reads it).

  An image folder's records are file names (opened only by `read`); a TFDS split's are its
  examples, read through a TFDS slice of just those positions. So a process that takes its shard
  (`process_shard`) reads its own records only."""
  records_between: Callable[[int, int], tf.data.Dataset]
  num_examples: int
  class_names: tuple[str, ...]
  class_counts: tuple[int, ...]
  read: Callable[[dict], dict] = _read_nothing
  small_records: bool = False  # file names: a whole shard of them fits in memory
  locate: Callable[[int], str] = _position
  paths: tuple = ()  # an image folder's files, in split order (decoded without TensorFlow too)
  labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))

  @property
  def records(self) -> tf.data.Dataset:
    """Every record of the split, in order."""
    return self.records_between(0, self.num_examples)

  @property
  def dataset(self) -> tf.data.Dataset:
    """Every example of the split, read."""
    import tensorflow as tf
    return self.records.map(self.read, num_parallel_calls=tf.data.AUTOTUNE)

  @property
  def process_size(self) -> int:
    """Examples in this process's shard."""
    start, end = process_range(self.num_examples)
    return end - start

  def process_records(self) -> tf.data.Dataset:
    """This process's records (its `process_range`), the only ones it reads."""
    return self.records_between(*process_range(self.num_examples))

  def process_shard(self) -> tf.data.Dataset:
    """This process's examples, read."""
    import tensorflow as tf
    return self.process_records().map(self.read, num_parallel_calls=tf.data.AUTOTUNE)


def examples_at(source, indices, image_size: int, max_pixels: int,
                rounded: bool = True) -> dict[int, tuple[np.ndarray, int]]:
  """{index: (image, label)} for the examples of `source` at `indices`: decoded and resized to
  (size, size, 3), by default rounded to the uint8 that exported models take, else float32
  (`decoders.decoded_batches`). Only those examples are read."""
  if not len(indices):
    return {}
  if source.paths:
    wanted = sorted(set(int(i) for i in indices))
    found = {}
    for kept, images in decoders.decoded_batches([source.paths[i] for i in wanted], 64,
                                                 image_size, max_pixels, rounded):
      found.update({wanted[k]: (image, int(source.labels[wanted[k]]))
                    for k, image in zip(kept, images)})
    return found
  import tensorflow as tf

  from tlflax.data import transforms
  prepare = transforms.exported_model_input if rounded else transforms.decode_and_resize
  wanted = tf.constant(sorted(indices), tf.int64)

  def prepared(i, record):
    example = source.read(record)
    return i, prepare(example['image'], image_size, max_pixels), example['label']
  found = (source.records.enumerate()  # only the wanted examples are read
           .filter(lambda i, _: tf.reduce_any(tf.equal(i, wanted)))
           .map(prepared, num_parallel_calls=tf.data.AUTOTUNE))
  return {int(i): (image, int(label)) for i, image, label in found.as_numpy_iterator()}


def images_at(source, indices, image_size: int, max_pixels: int,
              rounded: bool = True) -> dict[int, np.ndarray]:
  """The images of `examples_at`, without their labels."""
  return {i: image for i, (image, _) in examples_at(source, indices, image_size, max_pixels,
                                                    rounded).items()}


def _source(records_between, labels, class_names, what: str = '', read=_read_nothing,
            small_records: bool = False, locate=_position, paths: tuple = ()) -> Source:
  labels = np.asarray(labels, np.int64)
  outside = labels[(labels < 0) | (labels >= len(class_names))]
  if outside.size:
    raise DataError(f'{what} has {outside.size} labels outside 0..{len(class_names) - 1} (e.g. '
                    f'{outside[0]}; -1 marks unlabelled examples in TFDS)')
  counts = np.bincount(labels, minlength=len(class_names))
  return Source(records_between, len(labels), tuple(class_names), tuple(int(c) for c in counts),
                read, small_records, locate, tuple(paths), labels.astype(np.int32))


def check_split_scheme(name: str):
  """Raises `DataError` unless `name` is one of `SPLIT_SCHEMES`."""
  if name not in SPLIT_SCHEMES:
    raise DataError(f'split_scheme must be one of {sorted(SPLIT_SCHEMES)}, got {name!r}')


def feature_names(name: str, features, supervised_keys, image_feature: str = '',
                  label_feature: str = '') -> tuple[str, str]:
  """(image feature, label feature) of a TFDS dataset: the given names, else its supervised keys,
  else its only `Image` and `ClassLabel` features. Raises `DataError` saying what to set."""
  import tensorflow_datasets as tfds
  supervised = tuple(supervised_keys or ('', ''))[:2]
  chosen = []
  for given, kind, default, key in ((image_feature, tfds.features.Image, supervised[0],
                                     'data.image_feature'),
                                    (label_feature, tfds.features.ClassLabel, supervised[1],
                                     'data.label_feature')):
    candidates = [k for k, f in features.items() if isinstance(f, kind)]
    if given and given not in candidates:
      raise DataError(f'TFDS {name} has no {kind.__name__} feature {given!r} ({key}); its '
                      f'{kind.__name__} features: {candidates}')
    if not given and isinstance(default, str) and default in candidates:
      given = default
    if not given and len(candidates) == 1:
      given = candidates[0]
    if not given:
      raise DataError(f'TFDS {name}: set {key} to one of its {kind.__name__} features '
                      f'{candidates}' if candidates else
                      f'TFDS {name} has no {kind.__name__} feature: it is not an image '
                      'classification dataset')
    chosen.append(given)
  return tuple(chosen)


def tfds_splits(name: str = 'cats_vs_dogs', split_scheme: str = 'original',
                data_dir: Optional[str] = None, seed: int = 0, image_feature: str = '',
                label_feature: str = '') -> dict[str, Source]:
  """The train/validation/test splits of a TFDS image classification dataset (`SPLIT_SCHEMES`).

  Each split's labels are read once for its class counts (images are not decoded): each process
  reads those of its own shard and the processes exchange them. Every later read is a TFDS slice
  of the wanted positions (`Source.records_between`)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  check_split_scheme(split_scheme)
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    builder.download_and_prepare()
  except OSError as e:  # no network (requests' errors are OSErrors), a full disk, ...
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise DataError(f'TFDS {name}: could not download and prepare it ({type(e).__name__}: '
                    f'{reason}); without internet, train on a folder of images instead '
                    '(--config.data.folder=PATH)') from e
  image_key, label_key = feature_names(name, builder.info.features, builder.info.supervised_keys,
                                       image_feature, label_feature)
  class_names = tuple(builder.info.features[label_key].names)

  def read(split: str) -> tf.data.Dataset:
    # files one after another, so that the n-th example read is the one at position n, which
    # slices ('train[a:b]') count in (TFDS interleaves 16 files by default)
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 decoders={image_key: tfds.decode.SkipDecoding()},
                                 read_config=tfds.ReadConfig(interleave_cycle_length=1))
    return dataset.map(lambda x: {'image': x[image_key],
                                  'label': tf.cast(x[label_key], tf.int32)})

  def slice_of(spec: str) -> tuple[Callable[[int, int], tf.data.Dataset], int, Callable]:
    """(records_between, size, locate) of a TFDS split spec such as 'train[80%:90%]'."""
    try:
      (where,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(builder.info.splits)
    except (KeyError, ValueError) as e:  # TFDS's "Unknown split"
      raise DataError(f'TFDS {name} cannot read split {spec!r} (split_scheme={split_scheme!r}; '
                      f"it has {sorted(builder.info.splits)}; 'auto' uses those): {e}") from e
    offset = where.from_ or 0
    size = (builder.info.splits[where.splitname].num_examples if where.to is None
            else where.to) - offset

    def records_between(start: int, end: int) -> tf.data.Dataset:
      if end <= start:  # TFDS refuses empty slices
        return read(where.splitname).take(0)
      return read(f'{where.splitname}[{offset + start}:{offset + end}]')

    def locate(index: int) -> str:  # the slice that reads the example alone
      return f'TFDS {name} {where.splitname}[{offset + index}:{offset + index + 1}]'
    return records_between, size, locate

  def labels_of(records_between, size: int) -> np.ndarray:
    local = records_between(*process_range(size)).map(lambda x: x['label'])
    return gather_shards(np.fromiter(local.as_numpy_iterator(), np.int64), size)

  if split_scheme != 'auto':
    own = sorted(set(builder.info.splits) & {'validation', 'test'})
    if own:
      raise DataError(f'TFDS {name} has its own {own} split(s), which split_scheme='
                      f"{split_scheme!r} (slices of 'train', the tutorials' scheme for "
                      "cats_vs_dogs) would ignore: use --config.data.split_scheme=auto")
    slices = {split: slice_of(spec) for split, spec in SPLIT_SCHEMES[split_scheme].items()}
    splits = {split: _source(records_between, labels_of(records_between, size), class_names,
                             f'TFDS {name} {split} split', locate=locate)
              for split, (records_between, size, locate) in slices.items()}
  else:
    present = [s for s in carving.SPLITS if s in builder.info.splits]
    if 'train' not in present:
      raise DataError(f"TFDS {name} has no 'train' split; it has {sorted(builder.info.splits)}")
    slices = {split: slice_of(split) for split in present}
    labels = {split: labels_of(*slices[split][:2]) for split in present}
    for split in present[1:]:
      if labels[split].size and np.all(labels[split] == -1):
        logging.info('TFDS %s: its %s split is unlabelled; carving one out instead', name, split)
        del labels[split]
    splits = {}
    for split, (parent, indices) in carving.carve(labels, seed).items():
      records_between, _, locate = slices[parent]
      if len(indices) < len(labels[parent]):
        records_between = _subset(records_between, indices)
      splits[split] = _source(records_between, labels[parent][indices], class_names,
                              f'TFDS {name} {parent} split',
                              locate=lambda i, at=locate, kept=indices: at(int(kept[i])))
  for split, source in splits.items():
    if not source.num_examples:
      raise DataError(f'TFDS {name}: the {split} split is empty')
  return splits


def _subset(records_between, indices: np.ndarray) -> Callable[[int, int], tf.data.Dataset]:
  """`records_between` of the records at (sorted) `indices` of a split: a range of them reads the
  split from its first index to its last and keeps those."""
  def subset_between(start: int, end: int) -> tf.data.Dataset:
    import tensorflow as tf
    if end <= start:
      return records_between(0, 0)
    first, last = int(indices[start]), int(indices[end - 1])
    keep = np.zeros(last + 1 - first, bool)
    keep[indices[start:end] - first] = True
    keep = tf.constant(keep)
    return (records_between(first, last + 1).enumerate()
            .filter(lambda i, _: keep[i]).map(lambda _, x: x)
            .apply(tf.data.experimental.assert_cardinality(end - start)))
  return subset_between


def _read_file(record: dict) -> dict:
  import tensorflow as tf
  return {'image': tf.io.read_file(record['image']), 'label': record['label']}


def folder_splits(root, seed: int = 0, max_pixels: int = 50_000_000) -> dict[str, Source]:
  """The train/validation/test splits of an image folder, checked image by image."""
  files, class_names = folders.scan_image_folder(root, seed, max_pixels=max_pixels)

  def source(split: folders.LabelledFiles) -> Source:
    def records_between(start: int, end: int) -> tf.data.Dataset:
      import tensorflow as tf
      return tf.data.Dataset.from_tensor_slices(  # bytes: file names need not be UTF-8
          {'image': [os.fsencode(p) for p in split.paths[start:end]],
           'label': tf.constant(split.labels[start:end], tf.int32)})
    return _source(records_between, split.labels, class_names, read=_read_file,
                   small_records=True,
                   locate=lambda i: folders.printable(os.path.abspath(split.paths[i])),
                   paths=split.paths)

  return {split: source(split_files) for split, split_files in files.items()}


def check_class_counts(splits: dict[str, Source]):
  """Logs each split's examples per class; warns when one training class has more than
  `IMBALANCE_WARNING` times the examples of another; a class with no training example is a
  `DataError` (the model could never learn it)."""
  class_names = splits['train'].class_names
  if len(class_names) < 2:
    raise DataError(f'the data has {len(class_names)} class {list(class_names)}: a classifier '
                    'needs at least two (is data.label_feature the class label?)')
  for split, source in splits.items():
    logging.info('%s split: %d examples; per class: %s', split, source.num_examples,
                 ', '.join(f'{n} {c}' for n, c in zip(class_names, source.class_counts)))
  counts = splits['train'].class_counts
  empty = [n for n, c in zip(class_names, counts) if not c]
  if empty:
    raise DataError(f'classes {empty} have no training examples (of {len(class_names)} '
                    f'classes: {class_names})')
  if max(counts) > IMBALANCE_WARNING * min(counts):
    largest, smallest = int(np.argmax(counts)), int(np.argmin(counts))
    logging.warning('Imbalanced training data: class %r has %d examples, %r only %d (%.1fx). '
                    "Consider --config.loss.class_weights=balanced.", class_names[largest],
                    counts[largest], class_names[smallest], counts[smallest],
                    counts[largest] / counts[smallest])
  for split in ('validation', 'test'):
    missing = [n for n, c in zip(class_names, splits[split].class_counts) if not c]
    if missing:
      logging.warning('The %s split has no examples of %s: their recall there is undefined',
                      split, missing)
