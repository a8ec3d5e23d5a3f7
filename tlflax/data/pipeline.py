"""Batches for jit-compiled steps: shuffled, augmented training epochs and padded evaluation passes.

Each process reads only its own shard of a split (`Source.process_shard`: a contiguous
`jax.process_count()`-th of it, TFDS's `split_for_jax_process` layout) and yields NumPy batches of
`batch_size // process_count` examples:

    {'image': float32 (b, size, size, 3) in [-1, 1], 'label': int32 (b,), 'mask': bool (b,)}

and evaluation batches also `'index'`: int32 (b,), the example's position in the split.

Training epochs drop the remainder; their order and augmentation depend only on (seed, epoch), so a
resumed run sees the same data as an uninterrupted one. Which examples share a global batch
depends on the process count (each process shuffles its own shard), as in any per-host input
pipeline. Evaluation sees every example exactly once: the last batch is padded and `mask` is
False on the padding. `global_batch` turns a process-local batch into `jax.Array`s split over the
devices of a mesh; `prefetch_to_devices` does so ahead of the steps.
"""
import collections
import dataclasses
from typing import Iterable, Iterator

import jax
import numpy as np
import tensorflow as tf

from tlflax.data import augment as augmentation
from tlflax.data import transforms
from tlflax.data.folders import DataError
from tlflax.data.sources import Source, process_range


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How examples become batches (the `data` part of a run's config)."""
  image_size: int = 160
  batch_size: int = 32
  shuffle_buffer: int = 1000
  flip: bool = True
  rotation_factor: float = 0.2
  seed: int = 0
  max_pixels: int = 50_000_000  # larger JPEGs are decoded at reduced scale (`decode_rgb`)
  augment_ops: str = ''  # registered ops after flip and rotation (`tlflax.data.augment`)


def _local_batch_size(batch_size: int) -> int:
  processes = jax.process_count()
  if batch_size % processes:
    raise DataError(f'batch_size {batch_size} is not divisible by the {processes} processes')
  return batch_size // processes


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.default_rng([seed, epoch, jax.process_index()]).integers(2**31 - 1))


def train_steps(source: Source, config: PipelineConfig) -> int:
  """Steps in a training epoch (full global batches only)."""
  local_batch = _local_batch_size(config.batch_size)
  steps = source.num_examples // jax.process_count() // local_batch
  if steps == 0:
    raise DataError(f'{source.num_examples} training examples make no batch of '
                    f'{local_batch * jax.process_count()}')
  return steps


def eval_steps(source: Source, config: PipelineConfig) -> int:
  """Batches in an evaluation pass (the last one padded), the same number on every process."""
  per_process = -(-source.num_examples // jax.process_count())
  return -(-per_process // _local_batch_size(config.batch_size))


def _shard_size(source: Source) -> int:
  """Examples in this process's shard."""
  start, end = process_range(source.num_examples)
  return end - start


def _shuffled(dataset: tf.data.Dataset, config: PipelineConfig, epoch: int) -> tf.data.Dataset:
  """The epoch's order. It depends only on (seed, epoch, process) and the dataset's length, not on
  its elements, so `epoch_indices` gives the same order as `train_dataset`."""
  return dataset.shuffle(config.shuffle_buffer, seed=_epoch_seed(config.seed, epoch),
                         reshuffle_each_iteration=False)


def train_dataset(source: Source, config: PipelineConfig, epoch: int) -> tf.data.Dataset:
  """One training epoch of this process's shard: shuffled, augmented, full batches only."""
  local_batch = _local_batch_size(config.batch_size)
  steps = train_steps(source, config)
  epoch_seed = _epoch_seed(config.seed, epoch)
  augment = augmentation.chain(config.flip, config.rotation_factor, config.augment_ops)

  def transform(index, example):
    image = transforms.resize(transforms.decode_rgb(example['image'], config.max_pixels),
                              config.image_size)
    seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
    image = augment(image, seed)
    return {'image': transforms.scale_to_unit_range(image), 'label': example['label'],
            'mask': tf.constant(True)}

  return (_shuffled(source.process_shard().enumerate(),
                    config, epoch)
          .map(transform, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(local_batch, drop_remainder=True)
          .take(steps)
          .prefetch(tf.data.AUTOTUNE))


def epoch_indices(source: Source, config: PipelineConfig, epoch: int) -> np.ndarray:
  """(steps, local batch) positions in this process's shard: the batches of `train_dataset`'s
  epoch, for training on cached per-example activations instead of images."""
  local_batch = _local_batch_size(config.batch_size)
  steps = train_steps(source, config)
  order = _shuffled(tf.data.Dataset.range(_shard_size(source)), config, epoch)
  return np.fromiter(order.take(steps * local_batch).as_numpy_iterator(), np.int64).reshape(
      steps, local_batch)


def eval_indices(source: Source, config: PipelineConfig) -> np.ndarray:
  """(steps, local batch) positions in this process's shard: `eval_dataset`'s batches, whose
  positions past the shard's end are its padding."""
  local_batch = _local_batch_size(config.batch_size)
  return np.arange(eval_steps(source, config) * local_batch).reshape(-1, local_batch)


def eval_dataset(source: Source, config: PipelineConfig) -> tf.data.Dataset:
  """This process's shard once, in order, padded to whole batches (`mask` False on padding).
  `index` is each example's position in the whole split (-1 on padding)."""
  local_batch = _local_batch_size(config.batch_size)
  size = config.image_size
  first, _ = process_range(source.num_examples)

  def transform(position, example):
    return {'image': transforms.preprocess(example['image'], size, config.max_pixels),
            'label': example['label'],
            'mask': tf.constant(True),
            'index': tf.cast(first + position, tf.int32)}

  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros((size, size, 3)), 'label': tf.constant(0, tf.int32),
      'mask': tf.constant(False), 'index': tf.constant(-1, tf.int32)}).repeat(
          eval_steps(source, config) * local_batch - _shard_size(source))
  return (source.process_shard().enumerate()
          .map(transform, num_parallel_calls=tf.data.AUTOTUNE)
          .concatenate(padding)
          .batch(local_batch, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))


def global_batch(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Assembles process-local batches into global `jax.Array`s laid out by `sharding`."""
  return jax.tree.map(lambda value: jax.make_array_from_process_local_data(sharding, value), batch)


def prefetch_to_devices(batches: Iterable[dict], sharding: jax.sharding.Sharding,
                        size: int = 2) -> Iterator[dict]:
  """`global_batch` of each batch, `size` batches ahead: the copies to the devices are
  asynchronous, so they overlap with the steps running on the previous batches."""
  queue = collections.deque()
  for batch in batches:
    queue.append(global_batch(batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
