"""Batch arithmetic shared by every feed, with no TensorFlow: the pipeline settings, steps per
epoch, evaluation padding, the epoch's order, and putting process-local batches on the mesh.

Each process takes a contiguous shard of a split (`tlflax.data.sources.process_range`) and
batches of `batch_size // process_count` examples. A training epoch drops the remainder; an
evaluation pass sees every example once, its last batch padded.

An epoch's order is a permutation of the whole split drawn from (seed, epoch) with JAX's random
numbers (`epoch_permutation`), the same on any backend. Data kept on the devices
(`tlflax.resident_feed`) takes its global batches from it directly, so any number of processes
sees the same batches; a process that reads its own shard (streamed folders, data kept on the
host) takes the permutation's order of its shard's examples (`shard_order`).
"""
import collections
import dataclasses
from typing import Iterable, Iterator

import jax
import numpy as np

from tlflax.backbones.preprocessing import UNIT_RANGE, Preprocessing
from tlflax.data.sources import Source, process_range
from tlflax.errors import DataError


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


def local_batch_size(batch_size: int) -> int:
  processes = jax.process_count()
  if batch_size % processes:
    raise DataError(f'batch_size {batch_size} is not divisible by the {processes} processes')
  return batch_size // processes


@jax.jit
def _epoch_keys(seed_and_epoch: jax.Array) -> jax.Array:
  return jax.random.split(jax.random.fold_in(jax.random.key(seed_and_epoch[0]),
                                             seed_and_epoch[1]))


def epoch_keys(seed: int, epoch: int) -> tuple[jax.Array, jax.Array]:
  """(order key, augmentation key) of an epoch: everything random in it comes from these. Made
  on the device from one explicit transfer of (seed, epoch)."""
  order, augmentation = _epoch_keys(jax.device_put(np.array([seed, epoch], np.uint32)))
  return order, augmentation


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> jax.Array:
  """The epoch's order of a whole split."""
  return jax.random.permutation(epoch_keys(seed, epoch)[0], num_examples)


def shard_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """This process's shard positions in the order the epoch's permutation visits them."""
  start, end = process_range(num_examples)
  order = np.asarray(epoch_permutation(seed, epoch, num_examples))
  return order[(order >= start) & (order < end)] - start


def train_steps(source: Source, config: PipelineConfig) -> int:
  """Steps in a training epoch (full global batches only)."""
  local_batch = local_batch_size(config.batch_size)
  steps = source.num_examples // jax.process_count() // local_batch
  if steps == 0:
    raise DataError(f'{source.num_examples} training examples make no batch of '
                    f'{local_batch * jax.process_count()}')
  return steps


def eval_steps(source: Source, config: PipelineConfig) -> int:
  """Batches in an evaluation pass (the last one padded), the same number on every process."""
  per_process = -(-source.num_examples // jax.process_count())
  return -(-per_process // local_batch_size(config.batch_size))


def eval_indices(source: Source, config: PipelineConfig) -> np.ndarray:
  """(steps, local batch) positions in this process's shard: `eval_dataset`'s batches, whose
  positions past the shard's end are its padding."""
  local_batch = local_batch_size(config.batch_size)
  return np.arange(eval_steps(source, config) * local_batch).reshape(-1, local_batch)


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
