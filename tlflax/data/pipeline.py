"""The streamed pipeline (`data.residency='stream'`): tf.data decodes, augments and batches every
epoch on the host.

Each process reads only its own shard of a split (`Source.process_shard`: a contiguous
`jax.process_count()`-th of it, TFDS's `split_for_jax_process` layout) and yields NumPy batches of
`batch_size // process_count` examples:

    {'image': float32 (b, size, size, 3) in [-1, 1], 'label': int32 (b,), 'mask': bool (b,)}

and evaluation batches also `'index'`: int32 (b,), the example's position in the split.

Training epochs drop the remainder; their order and augmentation depend only on (seed, epoch), so a
resumed run sees the same data as an uninterrupted one. A folder's epoch visits the process's
shard in the order of the epoch's permutation (`batching.shard_order`); a TFDS split's permutes
runs of `shuffle_buffer` records. Which examples share a global batch depends on the process count
(each process orders its own shard), as in any per-host input pipeline. Evaluation sees every
example exactly once: the last batch is padded and `mask` is False on the padding.
"""
from typing import Optional

import jax
import numpy as np
import tensorflow as tf

from tlflax.data import augment as augmentation
from tlflax.data import transforms
from tlflax.data.batching import (PipelineConfig, eval_steps, local_batch_size, shard_order,
                                  train_steps)
from tlflax.data.image_cache import DecodedImages
from tlflax.data.sources import Source, process_range


def without_autotuning(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` with tf.data's autotuning off (parallel maps use one thread per core). On 2 CPU
  cores its end of input stalled for 0.4 to 4.6 s in about half of the training epochs (measured
  by timing the iterator), which halved those epochs' images/s."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def _epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.default_rng([seed, epoch, jax.process_index()]).integers(2**31 - 1))


def _shuffled(dataset: tf.data.Dataset, source: Source, config: PipelineConfig,
              epoch: int) -> tf.data.Dataset:
  """The epoch's order of this process's shard (`dataset`, in record order): a folder's in
  `shard_order`; a TFDS split's with each run of `shuffle_buffer` records permuted by stateless
  random ops seeded with (the epoch's seed, the run's position), as TFDS stores examples
  shuffled and reads them in sequence. It depends on nothing else (not on TensorFlow's global
  seed, unlike `Dataset.shuffle`), so `epoch_indices` gives the order of `train_dataset`."""
  if source.small_records:
    order = tf.constant(shard_order(config.seed, epoch, source.num_examples))

    def reordered(*elements) -> tf.data.Dataset:
      gathered = tf.nest.map_structure(lambda x: tf.gather(x, order), elements)
      return tf.data.Dataset.from_tensor_slices(gathered if len(gathered) > 1 else gathered[0])
    return dataset.batch(max(1, source.process_size)).flat_map(reordered)
  block, epoch_seed = max(1, config.shuffle_buffer), _epoch_seed(config.seed, epoch)

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
  local_batch = local_batch_size(config.batch_size)
  steps = train_steps(source, config)
  epoch_seed = _epoch_seed(config.seed, epoch)
  augment = augmentation.chain(config.flip, config.rotation_factor, config.augment_ops)

  if images is None:
    def decoded(index, record):
      example = source.read(record)
      return index, {'image': transforms.decode_and_resize(example['image'], config.image_size,
                                                           config.max_pixels),
                     'label': example['label']}
    examples = _shuffled(source.process_records().enumerate(), source, config, epoch).map(
        decoded, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    examples = _shuffled(tf.data.Dataset.range(len(images.labels)), source, config, epoch).map(
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
  local_batch = local_batch_size(config.batch_size)
  steps = train_steps(source, config)
  order = _shuffled(tf.data.Dataset.range(source.process_size), source, config, epoch)
  return np.fromiter(order.take(steps * local_batch).as_numpy_iterator(), np.int64).reshape(
      steps, local_batch)


def eval_dataset(source: Source, config: PipelineConfig,
                 images: Optional[DecodedImages] = None) -> tf.data.Dataset:
  """This process's shard once, in order, padded to whole batches (`mask` False on padding).
  `index` is each example's position in the whole split (-1 on padding). With `images` (the
  shard decoded once, `image_cache`) it looks images up instead of decoding them."""
  local_batch = local_batch_size(config.batch_size)
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
