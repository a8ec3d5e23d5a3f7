"""Batches made on the devices from splits kept in memory (`tlflax.data.resident`).

A split is decoded once, on first use, into uint8 arrays. Under 'device' residency they stay on
the devices and every batch is built there by one jitted call: the rows of the epoch's
permutation (`batching.epoch_permutation`, drawn on the device once per epoch), their gather
(`resident.gather_rows`), the augmentation (the JAX forms of `tlflax.data.augment`'s ops, keyed
by the epoch's augmentation key and the step) and the backbone's preprocessing. Nothing goes from
the host to the devices during an epoch, and the global batches are the same for any number of
processes. Under 'host' residency each process takes its batch's rows from its shard in host
memory (in `batching.shard_order`) and puts them on the devices; augmentation and preprocessing
still run there.

With `cached(variables, boundary)` a phase trains on the frozen layers' activations instead,
computed once on the devices for every resident row, in the same order and batches.
"""
import copy
import functools
import time
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from tlflax import chunking, parallel
from tlflax.classifier import Classifier, backbone_layers
from tlflax.data import augment, resident
from tlflax.data.batching import (PipelineConfig, epoch_keys, eval_indices,
                                  local_batch_size, prefetch_to_devices, shard_order)
from tlflax.data.sources import Source, process_range
from tlflax.errors import DataError
from tlflax.objectives import Objective
from tlflax.steps import make_eval_step, make_logits_step


def _take(tree, rows: np.ndarray):
  """The rows of each host array of `tree`."""
  return jax.tree.map(lambda a: a[rows], tree)


def _zero_padding(batch: dict, mask) -> dict:
  """`batch` with zeros where `mask` is False, as the streamed pipeline pads."""
  def zeroed(value):
    return jnp.where(mask.reshape(-1, *[1] * (value.ndim - 1)), value, jnp.zeros((), value.dtype))
  return {key: value if key in ('mask', 'index') else jax.tree.map(zeroed, value)
          for key, value in batch.items()}


class _Programs:
  """The jitted functions that build batches, made once per feed and shared by its views (so
  each compiles once). Gathered rows with an 'image' are augmented (in training) and
  preprocessed; cached activations pass as they are."""

  def __init__(self, config: PipelineConfig, mesh, augment_images):
    sharded, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)

    def prepare(picked, key, train: bool):
      if 'image' not in picked:
        return picked
      images = picked['image'].astype(jnp.float32)
      if train:
        images = augment_images(images, key)
      return {**picked, 'image': config.preprocessing(images)}

    def device_train(arrays, rows, step, key):
      picked = prepare(resident.gather_rows(arrays, rows, mesh), jax.random.fold_in(key, step),
                       train=True)
      return {**picked, 'mask': jnp.ones(rows.shape, bool)}

    def device_eval(arrays, rows, mask, index):
      picked = prepare(resident.gather_rows(arrays, rows, mesh), None, train=False)
      return {**_zero_padding(picked, mask), 'mask': mask, 'index': index}

    def epoch_rows(positions, key, steps: int, batch_size: int):
      order = jax.random.permutation(key, positions.shape[0])[:steps * batch_size]
      return positions[order].reshape(steps, batch_size), jnp.arange(steps)

    def host(picked, step, key, train: bool):
      prepared = prepare(picked, jax.random.fold_in(key, step), train)
      return prepared if train else _zero_padding(prepared, picked['mask'])

    self.device_train = jax.jit(device_train, out_shardings=sharded)
    self.device_eval = jax.jit(device_eval, out_shardings=sharded)
    self.epoch_rows = jax.jit(epoch_rows, static_argnums=(2, 3), out_shardings=replicated)
    self.host = jax.jit(host, static_argnums=3, out_shardings=sharded)


class ResidentFeed:
  """The feed (`tlflax.feeds`' interface) of splits kept on the devices ('device') or in host
  memory ('host')."""
  input_key = 'image'

  def __init__(self, model: Classifier, objective: Objective, splits: dict[str, Source],
               config: PipelineConfig, mesh, where: str, frozen_chunk: int = 0,
               prefetch: int = 2, memory_share: float = 0.5):
    if where not in ('device', 'host'):
      raise ValueError(f'where must be device or host, got {where!r}')
    self.model, self.objective, self.splits, self.config = model, objective, splits, config
    self.mesh, self.where, self.frozen_chunk, self.prefetch = mesh, where, frozen_chunk, prefetch
    self.memory_share = memory_share
    self.programs = _Programs(config, mesh, augment.jax_chain(config.flip, config.rotation_factor,
                                                              config.augment_ops))
    self.held: dict[str, dict] = {}
    self.boundary = None  # the backbone layer of cached activations, if any
    self.apply_fn = self.frozen_in_chunks(len(backbone_layers(model)))
    self.eval_step = make_eval_step(self.apply_fn, objective, mesh, self.input_key)
    self.logits_step = make_logits_step(self.apply_fn, mesh, self.input_key)
    self.cache_seconds = 0.0

  def frozen_in_chunks(self, boundary: int):
    """`chunking.frozen_in_chunks` for this feed's model, chunk and devices."""
    return chunking.frozen_in_chunks(self.model, boundary, self.frozen_chunk, self.mesh.size)

  def training_view(self, first_trained: int) -> 'ResidentFeed':
    """This feed with the `apply_fn` a phase trains with (see `feeds.ImageFeed`); the training
    split is decoded now, with the phase's set-up, not within its first step."""
    self.split('train')
    feed = copy.copy(self)
    feed.apply_fn = self.frozen_in_chunks(first_trained)
    return feed

  def record(self) -> dict:
    return {'cached_from_layer': self.boundary, 'cache_seconds': self.cache_seconds}

  def release(self):
    """Lets the resident arrays go."""
    self.held.clear()

  @property
  def steps_per_epoch(self) -> int:
    examples = self.splits['train'].num_examples
    if self.where == 'host':
      steps = examples // jax.process_count() // local_batch_size(self.config.batch_size)
    else:
      steps = examples // self.config.batch_size
    if steps == 0:
      raise DataError(f'{examples} training examples make no batch of {self.config.batch_size}')
    return steps

  def split(self, name: str) -> dict:
    """The split's resident arrays, decoded on first use: 'device': {'arrays': {'image',
    'label'} global arrays, 'layout'}; 'host': {'image', 'label'} of this process's shard."""
    if name not in self.held:
      source = self.splits[name]
      start, end = process_range(source.num_examples)
      labels = np.asarray(source.labels[start:end], np.int32)
      if self.where == 'host':
        self.held[name] = {'image': resident.decode_shard(source, self.config.image_size,
                                                          self.config.max_pixels, name),
                           'label': labels}
      else:
        multiple = max(1, self.config.batch_size // self.mesh.size)
        at = resident.layout(source.num_examples, self.mesh, multiple)
        local = {'image': resident.decode_shard(source, self.config.image_size,
                                                self.config.max_pixels, name,
                                                at.rows // jax.process_count()),
                 'label': labels}
        self.held[name] = {'arrays': resident.to_devices(local, at, self.mesh), 'layout': at,
                           'positions': jax.device_put(at.positions,
                                                       parallel.replicated(self.mesh))}
    return self.held[name]

  def train(self, epoch: int) -> Iterator[dict]:
    """The epoch's batches {'image' (or the cached input), 'label', 'mask'}, on the devices."""
    order_key, augment_key = epoch_keys(self.config.seed, epoch)
    held = self.split('train')
    if self.where == 'device':
      rows, steps = self.programs.epoch_rows(held['positions'], order_key, self.steps_per_epoch,
                                     self.config.batch_size)
      for step_rows, step in zip(rows, steps):
        yield self.programs.device_train(held['arrays'], step_rows, step, augment_key)
      return
    local_batch = local_batch_size(self.config.batch_size)
    order = shard_order(self.config.seed, epoch, self.splits['train'].num_examples)
    order = order[:self.steps_per_epoch * local_batch].reshape(-1, local_batch)
    picked = ({self.input_key: _take(held[self.input_key], rows), 'label': held['label'][rows],
               'mask': np.ones(local_batch, bool)} for rows in order)
    for step, batch in enumerate(prefetch_to_devices(picked, parallel.batch_sharding(self.mesh),
                                                     self.prefetch)):
      yield self.programs.host(batch, step, augment_key, True)

  def _eval_plan(self, name: str) -> dict:
    """(steps, global batch) rows, mask and split index of the split's padded evaluation pass."""
    held = self.split(name)
    if 'eval_plan' not in held:
      size, batch = self.splits[name].num_examples, self.config.batch_size
      steps = -(-size // batch)
      index = np.arange(steps * batch).reshape(steps, batch)
      mask = index < size
      rows = held['layout'].positions[np.minimum(index, size - 1)]
      held['eval_plan'] = jax.device_put(
          {'rows': rows, 'mask': mask, 'index': np.where(mask, index, -1).astype(np.int32)},
          parallel.replicated(self.mesh))
    return held['eval_plan']

  def evaluation(self, split: str) -> Iterator[dict]:
    """The split once, in order, padded to whole batches (`mask` False and `index` -1 there)."""
    held = self.split(split)
    if self.where == 'device':
      plan = self._eval_plan(split)
      for rows, mask, index in zip(plan['rows'], plan['mask'], plan['index']):
        yield self.programs.device_eval(held['arrays'], rows, mask, index)
      return
    source = self.splits[split]
    first, _ = process_range(source.num_examples)
    positions = eval_indices(source, self.config)
    size = len(held['label'])

    def picked(rows):
      real = rows < size
      at = np.minimum(rows, max(size - 1, 0))
      return {self.input_key: _take(held[self.input_key], at),
              'label': np.where(real, held['label'][at], 0),
              'mask': real, 'index': np.where(real, first + rows, -1).astype(np.int32)}
    for batch in prefetch_to_devices(map(picked, positions), parallel.batch_sharding(self.mesh),
                                     self.prefetch):
      yield self.programs.host(batch, 0, jax.random.key(0), False)

  # cached activations

  def cache_fits(self, nbytes: int) -> Optional[str]:
    """None if `nbytes` of activations (this process's) fit beside the resident images, else why
    not: within `memory_share` of what is free now on each device ('device') or on the host."""
    device_budget, host_budget, _ = resident.memory_budgets(self.memory_share)
    if self.where == 'device':
      needed, budget, what = nbytes / jax.local_device_count(), device_budget, 'per device'
    else:
      needed, budget, what = nbytes, host_budget, 'in host memory'
    if needed <= budget:
      return None
    return (f'{needed / 1e9:.2f} GB {what}, over data.memory_share={self.memory_share:g} of the '
            f'free memory ({budget / 1e9:.2f} GB)')

  def cached(self, variables, boundary: int) -> 'ResidentFeed':
    """This feed serving the activations at backbone layer `boundary` of the training and
    validation rows (computed now, on the devices) instead of their images; the test split stays
    images."""
    feed = copy.copy(self)
    feed.input_key, feed.boundary = 'activations', boundary
    feed.apply_fn = functools.partial(self.model.apply, start=boundary)
    feed.eval_step = make_eval_step(feed.apply_fn, self.objective, self.mesh, feed.input_key)
    # run on each device's own rows (`_activations`), so its chunks split no batch over devices
    frozen = chunking.frozen_part(self.model, boundary, self.frozen_chunk, devices=1)
    started = time.perf_counter()
    feed.held = {name: self._activations(frozen, variables, name)
                 for name in ('train', 'validation')}
    feed.cache_seconds = time.perf_counter() - started
    logging.info('Cached activations at backbone layer %d for train, validation in %.1f s '
                 '(%s memory)', boundary, feed.cache_seconds, self.where)
    return feed

  def _activations(self, frozen, variables, name: str) -> dict:
    """The split's activations (a tree of arrays) row for row with its resident images."""
    held = self.split(name)
    preprocessing = self.config.preprocessing

    def compute(variables, images):
      return frozen(variables, preprocessing(images.astype(jnp.float32)))
    if self.where == 'host':
      batch, computed = max(1, self.config.batch_size), jax.jit(compute)
      parts = [jax.tree.map(np.asarray, computed(variables, held['image'][i:i + batch]))
               for i in range(0, len(held['label']), batch)]
      return {'activations': jax.tree.map(lambda *p: np.concatenate(p), *parts),
              'label': held['label']}
    data, replicated = jax.sharding.PartitionSpec(parallel.DATA_AXIS), jax.sharding.PartitionSpec()
    chunk = max(1, self.config.batch_size // self.mesh.size)

    def per_device(variables, images):  # the device's block, `chunk` rows at a time
      out = jax.lax.map(lambda x: compute(variables, x),
                        images.reshape(-1, chunk, *images.shape[1:]))
      return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), out)
    activations = jax.jit(jax.shard_map(per_device, mesh=self.mesh, in_specs=(replicated, data),
                                        out_specs=data))(variables, held['arrays']['image'])
    return {'arrays': {'activations': activations, 'label': held['arrays']['label']},
            'layout': held['layout'], 'positions': held['positions']}
