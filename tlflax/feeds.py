"""Where a phase's batches come from: the image pipeline, or caches of the frozen part's
activations.

A phase trains the head and backbone layers from its first trained one up (`fine_tune_at`, or the
lowest layer its `param_groups` train). The layers below are frozen and their BatchNorm is in
inference mode, so without augmentation their output for an image never changes during the phase.
`CachedFeed` runs them once over the training and validation splits and then serves batches of
those activations (`batch['activations']`) in exactly the order and padding of the image pipeline:
the pooled features in phase 1 (about 5 KB per image) and the activations at that layer in phase 2
(about 270 KB per image at 160x160 and layer 100). Training on them gives the same result as
training on images, minus the frozen part's cost.
"""
import copy
import functools
import time
from typing import Iterator, Optional

import jax
import numpy as np
from absl import logging

from tlflax import chunking, parallel
from tlflax.classifier import Classifier, backbone_layers
from tlflax.data.image_cache import DecodedImages, ImageCache
from tlflax.data.batching import PipelineConfig, eval_indices, prefetch_to_devices, train_steps
from tlflax.data.sources import Source
from tlflax.objectives import Objective
from tlflax.steps import make_eval_step, make_logits_step


CACHED_SPLITS = ('train', 'validation')  # read every epoch; the test split is read once


class ImageFeed:
  """Batches of images from the tf.data pipeline, put on the mesh ahead of the steps; the
  training and validation images decoded once where `image_cache` keeps them.

  Its steps run the frozen layers `frozen_chunk` images per device at a time
  (`tlflax.chunking`): evaluation the whole backbone, training (`training_view`) the layers below
  the phase's first trained one."""
  input_key = 'image'

  def __init__(self, model: Classifier, objective: Objective, splits: dict[str, Source],
               config: PipelineConfig, mesh, prefetch: int = 2,
               image_cache: Optional[ImageCache] = None, frozen_chunk: int = 0):
    self.splits, self.config, self.mesh, self.prefetch = splits, config, mesh, prefetch
    self.image_cache = image_cache or ImageCache()
    self.model, self.objective, self.frozen_chunk = model, objective, frozen_chunk
    self.apply_fn = self.frozen_in_chunks(len(backbone_layers(model)))
    self.eval_step = make_eval_step(self.apply_fn, objective, mesh, self.input_key)
    self.logits_step = make_logits_step(self.apply_fn, mesh, self.input_key)

  def frozen_in_chunks(self, boundary: int):
    """`chunking.frozen_in_chunks` for this feed's model, chunk and devices."""
    return chunking.frozen_in_chunks(self.model, boundary, self.frozen_chunk, self.mesh.size)

  def training_view(self, first_trained: int) -> 'ImageFeed':
    """This feed with the `apply_fn` a phase trains with: backbone layers below `first_trained`
    (a Keras index) in chunks."""
    feed = copy.copy(self)
    feed.apply_fn = self.frozen_in_chunks(first_trained)
    return feed

  @property
  def steps_per_epoch(self) -> int:
    return train_steps(self.splits['train'], self.config)

  def record(self) -> dict:
    return {'cached_from_layer': None, 'cache_seconds': 0.0}

  def release(self):
    """Deletes the decoded images this feed kept in files."""
    self.image_cache.remove_files()

  def cache_fits(self, nbytes: int) -> None:
    """Activations go to host memory, which `compute.cache_limit_gb` bounds: always None."""
    return None

  def cached(self, variables, boundary: int) -> 'CachedFeed':
    """A feed of the activations at backbone layer `boundary` instead of images."""
    return CachedFeed(self.model, variables, self, boundary)

  def to_devices(self, batches) -> Iterator[dict]:
    """NumPy batches as global arrays split over the mesh, `prefetch` batches ahead."""
    return prefetch_to_devices(batches, parallel.batch_sharding(self.mesh), self.prefetch)

  def decoded(self, split: str) -> Optional[DecodedImages]:
    """The split's images from `image_cache`, for the splits read every epoch."""
    if split not in CACHED_SPLITS:
      return None
    return self.image_cache.get(split, self.splits[split], self.config.image_size,
                                self.config.max_pixels)

  def train(self, epoch: int) -> Iterator[dict]:
    from tlflax.data.pipeline import train_dataset  # tf.data: only where data streams
    return self.to_devices(train_dataset(self.splits['train'], self.config, epoch,
                                         self.decoded('train')).as_numpy_iterator())

  def evaluation(self, split: str) -> Iterator[dict]:
    from tlflax.data.pipeline import eval_dataset
    return self.to_devices(eval_dataset(self.splits[split], self.config, self.decoded(split))
                           .as_numpy_iterator())


def cache_bytes(model: Classifier, variables, image_size: int, boundary: int,
                examples: int) -> int:
  """Memory that `examples` examples' activations at `boundary` take."""
  image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
  shapes = jax.eval_shape(
      lambda v, x: model.apply(v, x, boundary, method=Classifier.frozen_activations),
      variables, image)
  return examples * sum(s.size * s.dtype.itemsize for s in jax.tree.leaves(shapes))


def cache_activations(frozen, variables, images: ImageFeed, split: str) -> dict:
  """{'activations': `frozen(variables, images)`, 'label': (n,)} for this process's shard of
  `split`, filled into arrays allocated once for the padded pass (so the cache takes its own size
  in memory, not twice that)."""
  cache, filled = None, 0
  for batch in images.evaluation(split):
    rows = {'activations': frozen(variables, batch['image']),
            'label': batch['label'], 'mask': batch['mask']}
    rows = parallel.to_process_local(rows, images.mesh)
    keep = np.asarray(rows.pop('mask'))
    if cache is None:
      size = eval_indices(images.splits[split], images.config).size
      cache = jax.tree.map(lambda a: np.empty((size, *a.shape[1:]), a.dtype), rows)
    kept = int(keep.sum())
    for whole, part in zip(jax.tree.leaves(cache), jax.tree.leaves(rows)):
      whole[filled:filled + kept] = np.asarray(part)[keep]
    filled += kept
  return jax.tree.map(lambda a: a[:filled], cache)


class CachedFeed:
  """Batches of the frozen part's activations at `boundary`, computed once per split.

  Each process caches its own shard, in record order; `train` serves `train_dataset`'s epoch order
  (`epoch_indices`) and `evaluation` `eval_dataset`'s padded batches. The splits, pipeline config,
  mesh and prefetch are `images`'s, whose evaluation pass computes the cache.
  """

  input_key = 'activations'

  def __init__(self, model: Classifier, variables, images: ImageFeed, boundary: int,
               split_names=('train', 'validation')):
    self.boundary, self.images = boundary, images
    self.apply_fn = functools.partial(model.apply, start=boundary)
    self.objective = images.objective
    self.eval_step = make_eval_step(self.apply_fn, self.objective, images.mesh, self.input_key)
    frozen = jax.jit(chunking.frozen_part(model, boundary, images.frozen_chunk,
                                          images.mesh.size))
    started = time.perf_counter()
    self.cache = {name: cache_activations(frozen, variables, images, name)
                  for name in split_names}
    self.cache_seconds = time.perf_counter() - started
    logging.info('Cached activations at backbone layer %d for %s in %.1f s', boundary,
                 ', '.join(split_names), self.cache_seconds)

  @property
  def steps_per_epoch(self) -> int:
    return self.images.steps_per_epoch

  def record(self) -> dict:
    return {'cached_from_layer': self.boundary, 'cache_seconds': self.cache_seconds}

  def _batches(self, split: str, positions) -> Iterator[dict]:
    cache = self.cache[split]

    def take(index):
      batch = jax.tree.map(lambda a: a[np.minimum(index, len(a) - 1)], cache)
      return {**batch, 'mask': index < len(cache['label'])}
    return self.images.to_devices(map(take, positions))

  def train(self, epoch: int) -> Iterator[dict]:
    from tlflax.data.pipeline import epoch_indices
    return self._batches('train', epoch_indices(self.images.splits['train'], self.images.config,
                                                epoch))

  def evaluation(self, split: str) -> Iterator[dict]:
    """The split's examples once, padded to whole batches like `eval_dataset` (its order too)."""
    return self._batches(split, eval_indices(self.images.splits[split], self.images.config))


def for_phase(compute, model: Classifier, variables, images, first_trained: int):
  """A phase's feed: cached activations below its first trained backbone layer (`first_trained`,
  a Keras index; the layer count when only the head trains) when `compute.cache_frozen` asks for
  them and they fit in `compute.cache_limit_gb`; else `images` (`ImageFeed.training_view`)."""
  if not compute.cache_frozen:
    return images.training_view(first_trained)
  boundary = max(first_trained, 1)
  examples = sum(images.splits[name].num_examples for name in ('train', 'validation'))
  size = cache_bytes(model, variables, images.config.image_size, boundary,
                     examples // jax.process_count())
  if size > compute.cache_limit_gb * 1e9:
    logging.warning('Not caching: activations at backbone layer %d take %.1f GB, over '
                    'compute.cache_limit_gb=%g; training on images', boundary, size / 1e9,
                    compute.cache_limit_gb)
    return images.training_view(first_trained)
  too_large = images.cache_fits(size)
  if too_large:
    logging.warning('Not caching: activations at backbone layer %d take %s; training on images',
                    boundary, too_large)
    return images.training_view(first_trained)
  return images.cached(variables, boundary)
