"""Batches for jit-compiled steps: shuffled, augmented training epochs and padded evaluation passes.

Each process reads its own shard of a split (`jax.process_index()` of `jax.process_count()`) and
yields NumPy batches of `batch_size // process_count` examples:

    {'image': float32 (b, size, size, 3) in [-1, 1], 'label': int32 (b,), 'mask': bool (b,)}

Training epochs drop the remainder; their order and augmentation depend only on (seed, epoch), so a
resumed run sees the same data as an uninterrupted one. Evaluation sees every example exactly once:
the last batch is padded and `mask` is False on the padding. `global_batch` turns a process-local
batch into `jax.Array`s split over the devices of a mesh.
"""
import dataclasses

import jax
import numpy as np
import tensorflow as tf

from tlflax.data import transforms
from tlflax.data.folders import DataError
from tlflax.data.sources import Source


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How examples become batches (the `data` part of a run's config)."""
  image_size: int = 160
  batch_size: int = 32
  shuffle_buffer: int = 1000
  flip: bool = True
  rotation_factor: float = 0.2
  seed: int = 0


def _local_batch_size(batch_size: int) -> int:
  processes = jax.process_count()
  if batch_size % processes:
    raise DataError(f'batch_size {batch_size} is not divisible by the {processes} processes')
  return batch_size // processes


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.default_rng([seed, epoch, jax.process_index()]).integers(2**31 - 1))


def train_dataset(source: Source, config: PipelineConfig, epoch: int) -> tf.data.Dataset:
  """One training epoch of this process's shard: shuffled, augmented, full batches only."""
  local_batch = _local_batch_size(config.batch_size)
  steps = source.num_examples // jax.process_count() // local_batch
  if steps == 0:
    raise DataError(f'{source.num_examples} training examples make no batch of {config.batch_size}')
  epoch_seed = _epoch_seed(config.seed, epoch)

  def transform(index, example):
    image = transforms.resize(transforms.decode_rgb(example['image']), config.image_size)
    seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
    image = transforms.augment(image, seed, config.flip, config.rotation_factor)
    return {'image': transforms.scale_to_unit_range(image), 'label': example['label'],
            'mask': tf.constant(True)}

  return (source.dataset.shard(jax.process_count(), jax.process_index())
          .shuffle(config.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
          .enumerate()
          .map(transform, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(local_batch, drop_remainder=True)
          .take(steps)
          .prefetch(tf.data.AUTOTUNE))


def eval_dataset(source: Source, config: PipelineConfig) -> tf.data.Dataset:
  """This process's shard once, in order, padded to whole batches (`mask` False on padding)."""
  local_batch = _local_batch_size(config.batch_size)
  processes = jax.process_count()
  per_process = -(-source.num_examples // processes)
  batches = -(-per_process // local_batch)
  shard_size = len(range(jax.process_index(), source.num_examples, processes))
  size = config.image_size

  def transform(example):
    return {'image': transforms.preprocess(example['image'], size), 'label': example['label'],
            'mask': tf.constant(True)}

  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros((size, size, 3)), 'label': tf.constant(0, tf.int32),
      'mask': tf.constant(False)}).repeat(batches * local_batch - shard_size)
  return (source.dataset.shard(processes, jax.process_index())
          .map(transform, num_parallel_calls=tf.data.AUTOTUNE)
          .concatenate(padding)
          .batch(local_batch, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))


def global_batch(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Assembles process-local batches into global `jax.Array`s laid out by `sharding`."""
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in batch.items()}
