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
from typing import Iterable, Iterator, Optional

import jax
import numpy as np
import tensorflow as tf

from tlflax.backbones.preprocessing import UNIT_RANGE, Preprocessing
from tlflax.data import augment as augmentation
from tlflax.data import transforms
from tlflax.data.folders import DataError
from tlflax.data.image_cache import DecodedImages
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
  preprocessing: Preprocessing = UNIT_RANGE  # the backbone's, after augmentation


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` with tf.data's autotuning off (parallel maps use one thread per core). On 2 CPU
  cores its end of input stalled for 0.4 to 4.6 s in about half of the training epochs (measured
  by timing the iterator), which halved those epochs' images/s."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


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


def _shuffle_block(source: Source, config: PipelineConfig) -> int:
  """An image folder's epoch permutes all of this process's files (they are sorted by class); a
  TFDS split's, each run of `shuffle_buffer` records (TFDS stores examples shuffled)."""
  return max(1, source.process_size if source.small_records else config.shuffle_buffer)


def _shuffled(dataset: tf.data.Dataset, block: int, epoch_seed: int) -> tf.data.Dataset:
  """The epoch's order: each run of `block` consecutive elements permuted by stateless random
  ops seeded with (`epoch_seed`, the run's position). It depends on nothing else (not on
  TensorFlow's global seed, unlike `Dataset.shuffle`), so `epoch_indices` gives the order of
  `train_dataset`."""
  def permute(run: tf.Tensor, elements) -> tf.data.Dataset:
    size = tf.shape(tf.nest.flatten(elements)[0])[0]
    order = tf.random.experimental.stateless_shuffle(
        tf.range(size), seed=tf.stack([tf.constant(epoch_seed, tf.int64), run]))
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda x: tf.gather(x, order), elements))
  return dataset.batch(block).enumerate().flat_map(permute)


def train_dataset(source: Source, config: PipelineConfig, epoch: int,
                  images: Optional[DecodedImages] = None) -> tf.data.Dataset:
  """One training epoch of this process's shard: shuffled, augmented, full batches only. With
  `images` (the shard decoded once, `image_cache`) it looks images up instead of decoding them,
  and gives the same batches."""
  local_batch = _local_batch_size(config.batch_size)
  steps = train_steps(source, config)
  epoch_seed = _epoch_seed(config.seed, epoch)
  block = _shuffle_block(source, config)
  augment = augmentation.chain(config.flip, config.rotation_factor, config.augment_ops)

  if images is None:
    def decoded(index, record):
      example = source.read(record)
      return index, {'image': transforms.decode_and_resize(example['image'], config.image_size,
                                                           config.max_pixels),
                     'label': example['label']}
    examples = _shuffled(source.process_records().enumerate(), block, epoch_seed).map(
        decoded, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    examples = _shuffled(tf.data.Dataset.range(len(images.labels)), block, epoch_seed).map(
        lambda index: (index, images.lookup(index)), num_parallel_calls=tf.data.AUTOTUNE)

  def augmented(index, example):
    seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
    return {'image': config.preprocessing(augment(example['image'], seed)),
            'label': example['label'], 'mask': tf.constant(True)}

  return without_autotuning(examples.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
                            .batch(local_batch, drop_remainder=True)
                            .take(steps)
                            .prefetch(tf.data.AUTOTUNE))


def epoch_indices(source: Source, config: PipelineConfig, epoch: int) -> np.ndarray:
  """(steps, local batch) positions in this process's shard: the batches of `train_dataset`'s
  epoch, for training on cached per-example activations instead of images."""
  local_batch = _local_batch_size(config.batch_size)
  steps = train_steps(source, config)
  order = _shuffled(tf.data.Dataset.range(source.process_size), _shuffle_block(source, config),
                    _epoch_seed(config.seed, epoch))
  return np.fromiter(order.take(steps * local_batch).as_numpy_iterator(), np.int64).reshape(
      steps, local_batch)


def eval_indices(source: Source, config: PipelineConfig) -> np.ndarray:
  """(steps, local batch) positions in this process's shard: `eval_dataset`'s batches, whose
  positions past the shard's end are its padding."""
  local_batch = _local_batch_size(config.batch_size)
  return np.arange(eval_steps(source, config) * local_batch).reshape(-1, local_batch)


def eval_dataset(source: Source, config: PipelineConfig,
                 images: Optional[DecodedImages] = None) -> tf.data.Dataset:
  """This process's shard once, in order, padded to whole batches (`mask` False on padding).
  `index` is each example's position in the whole split (-1 on padding). With `images` (the
  shard decoded once, `image_cache`) it looks images up instead of decoding them."""
  local_batch = _local_batch_size(config.batch_size)
  size = config.image_size
  first, _ = process_range(source.num_examples)

  if images is None:
    examples = source.process_shard().map(
        lambda x: {'image': transforms.preprocess(x['image'], size, config.preprocessing,
                                                  config.max_pixels),
                   'label': x['label']}, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    examples = tf.data.Dataset.range(len(images.labels)).map(
        lambda index: images.lookup(index), num_parallel_calls=tf.data.AUTOTUNE).map(
            lambda x: {'image': config.preprocessing(x['image']), 'label': x['label']})

  def numbered(position, example):
    return {**example, 'mask': tf.constant(True),
            'index': tf.cast(first + position, tf.int32)}

  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros((size, size, 3)), 'label': tf.constant(0, tf.int32),
      'mask': tf.constant(False), 'index': tf.constant(-1, tf.int32)}).repeat(
          eval_steps(source, config) * local_batch - source.process_size)
  return without_autotuning(examples.enumerate().map(numbered)
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
