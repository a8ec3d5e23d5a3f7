"""TFDS datasets made up for tests: any builder's `as_dataset` under `tfds.testing.mock_data`,
with given splits and labels. It honours TFDS split slicing ('train[80%:90%]', 'train[10:20]'),
stores each split in two files and, like TFDS, interleaves them in blocks of 16 examples unless
`read_config.interleave_cycle_length` is 1, and records which examples were read, so tests can
count a process's reads."""
import contextlib
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

read_positions: list[tuple[str, int]] = []  # (split, position) of every example read, in order


def _note(split, position):
  read_positions.append((split.numpy().decode(), int(position)))
  return position


@contextlib.contextmanager
def mock(labels: dict[str, Sequence[int]]):
  """The dataset any `tfds.builder` builds has these splits (name -> each example's label); an
  example's image is an 8x8 PNG whose colour encodes (split, position), so all are distinct."""
  splits = tfds.core.SplitDict([tfds.core.SplitInfo(name=name, shard_lengths=[len(values)],
                                                    num_bytes=0)
                                for name, values in labels.items()])
  tables = {name: tf.constant(np.asarray(values, np.int64)) for name, values in labels.items()}

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    (where,) = tfds.core.ReadInstruction.from_spec(str(split)).to_absolute(splits)
    name, start = where.splitname, where.from_ or 0
    stop = len(labels[name]) if where.to is None else where.to
    split_index = list(labels).index(name)
    order = np.arange(start, stop)
    if read_config is None or read_config.interleave_cycle_length != 1:
      order = _interleaved(order, len(labels[name]) // 2)

    def example(position):
      position = tf.py_function(_note, [name, position], tf.int64)
      position.set_shape(())
      colour = tf.cast(tf.stack([position % 256, position // 256, split_index]), tf.uint8)
      return {'image': tf.io.encode_png(tf.broadcast_to(colour, (8, 8, 3))),
              'label': tables[name][position]}
    return tf.data.Dataset.from_tensor_slices(order).map(example).apply(
        tf.data.experimental.assert_cardinality(stop - start))

  saved = tfds.core.DatasetInfo.__dict__['splits']
  tfds.core.DatasetInfo.splits = property(lambda self: splits)
  try:
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
      read_positions.clear()
      yield
  finally:
    tfds.core.DatasetInfo.splits = saved


SIZE = 1000


def _interleaved(positions: np.ndarray, second_file: int, block: int = 16) -> np.ndarray:
  """`positions` as TFDS reads them from two files (the second from `second_file` on): blocks of
  `block` from each file in turn."""
  files = [positions[positions < second_file], positions[positions >= second_file]]
  order, taken = [], [0, 0]
  while any(taken[i] < len(f) for i, f in enumerate(files)):
    for i, f in enumerate(files):
      order.extend(f[taken[i]:taken[i] + block])
      taken[i] += block
  return np.asarray(order, np.int64)


def cats_vs_dogs(size: int = SIZE):
  """`mock` of `cats_vs_dogs`: one `train` split, alternating cat and dog."""
  return mock({'train': np.arange(size) % 2})


def reads_of_a_run(scheme: str, batch_size: int = 8) -> dict:
  """Under `cats_vs_dogs()`, on this process: the examples read for the class counts
  ('labels_read') and for a training epoch and the validation and test passes ('read'); each
  split's class counts; the split positions its evaluation passes gave."""
  from tlflax.data.batching import PipelineConfig
  from tlflax.data.pipeline import eval_dataset, train_dataset
  from tlflax.data.sources import tfds_splits
  config = PipelineConfig(batch_size=batch_size, image_size=8)
  with cats_vs_dogs():
    splits = tfds_splits('cats_vs_dogs', scheme)
    labels_read = list(read_positions)
    read_positions.clear()
    list(train_dataset(splits['train'], config, 0).as_numpy_iterator())
    indices = {split: [int(i) for batch in eval_dataset(splits[split], config).as_numpy_iterator()
                       for i in batch['index'][batch['mask']]] for split in ('validation', 'test')}
    return {'labels_read': [list(r) for r in labels_read],
            'read': [list(r) for r in read_positions], 'indices': indices,
            'counts': {s: list(source.class_counts) for s, source in splits.items()}}
