"""Decoded images kept between epochs: each process decodes and resizes its shard of a split once,
into an array in memory or, above `compute.image_cache_limit_gb`, a file in the workdir (read
through the page cache). Epochs then only look images up, augment and batch them, in the order
and with the augmentation of the uncached pipeline (`pipeline.train_dataset`), which they equal.
"""
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Optional

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from tlflax.data.sources import Source
from tlflax.errors import DataError

MODES = ('auto', 'memory', 'disk', 'none')
DISK_MARGIN = 2**30  # free space left on the disk after a cache file
FILL_BATCH = 64


def image_bytes(image_size: int) -> int:
  """Memory one decoded float32 image takes."""
  return image_size * image_size * 3 * 4


@dataclasses.dataclass(frozen=True)
class DecodedImages:
  """This process's shard of a split, decoded and resized (float32 (n, size, size, 3), not yet
  scaled to [-1, 1]), with its labels, in record order."""
  images: np.ndarray
  labels: np.ndarray

  def lookup(self, position) -> dict:
    """{'image', 'label'} of the example at `position` (a tf.Tensor) of the shard, inside
    tf.data."""
    import tensorflow as tf
    image, label = tf.numpy_function(lambda i: (self.images[i], self.labels[i]), [position],
                                     (tf.float32, tf.int32), stateful=False)
    image.set_shape(self.images.shape[1:])
    label.set_shape(())
    return {'image': image, 'label': label}


def decode(source: Source, image_size: int, max_pixels: int, name: str,
           file: Optional[Path] = None) -> DecodedImages:
  """Decodes and resizes this process's shard of `source` (in parallel, by tf.data) into memory,
  or into `file` (a NumPy .npy file opened as a memory map)."""
  import tensorflow as tf

  from tlflax.data import transforms
  shard = source.process_shard().map(
      lambda x: (transforms.decode_and_resize(x['image'], image_size, max_pixels), x['label']),
      num_parallel_calls=tf.data.AUTOTUNE)
  size = source.process_size
  shape = (size, image_size, image_size, 3)
  images = (np.lib.format.open_memmap(file, mode='w+', dtype=np.float32, shape=shape) if file
            else np.empty(shape, np.float32))
  labels = np.empty(size, np.int32)
  started, filled = time.perf_counter(), 0
  with tqdm(total=size, desc=f'decoding {name}', unit='image', leave=False, disable=None) as bar:
    for batch_images, batch_labels in shard.batch(FILL_BATCH).as_numpy_iterator():
      images[filled:filled + len(batch_labels)] = batch_images
      labels[filled:filled + len(batch_labels)] = batch_labels
      filled += len(batch_labels)
      bar.update(len(batch_labels))
  if filled != size:
    raise DataError(f'the {name} split gave {filled} images where {size} were expected')
  logging.info('Decoded the %s split (%d images, %.0f MB, %s) in %.1f s', name, size,
               images.nbytes / 2**20, f'in {file}' if file else 'in memory',
               time.perf_counter() - started)
  return DecodedImages(images, labels)


class ImageCache:
  """Which splits' decoded images a feed keeps, and where: `mode` 'memory', 'disk' (files in
  `folder`), 'none', or 'auto': in memory while the splits kept so far fit under `limit_gb`,
  else on disk. A split is decoded on its first use. Each process keeps its own shard, in files
  named by process, which `remove_files` deletes (also those a crashed run left)."""

  def __init__(self, mode: str = 'none', limit_gb: float = 4.0, folder: Optional[Path] = None):
    self.mode, self.limit_bytes, self.folder = mode, limit_gb * 2**30, folder
    self.held: dict[str, DecodedImages] = {}

  def _files(self) -> list[Path]:
    if self.folder is None or not self.folder.is_dir():
      return []
    return sorted(self.folder.glob(f'*.process{jax.process_index()}.npy'))

  def remove_files(self):
    """Deletes this process's files (the arrays read from them go with them)."""
    for name in [n for n, d in self.held.items() if isinstance(d.images, np.memmap)]:
      del self.held[name]
    for file in self._files():
      file.unlink()

  def get(self, name: str, source: Source, image_size: int,
          max_pixels: int) -> Optional[DecodedImages]:
    """The split's `DecodedImages` (decoded now on first use), or None with mode 'none'."""
    if self.mode == 'none':
      return None
    if name not in self.held:
      in_memory = sum(d.images.nbytes for d in self.held.values()
                      if not isinstance(d.images, np.memmap))
      needed = source.process_size * image_bytes(image_size)
      file = None
      if self.mode == 'disk' or (self.mode == 'auto' and in_memory + needed > self.limit_bytes):
        if self.folder is None:
          raise ValueError('an ImageCache on disk needs a folder')
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        if free < needed + DISK_MARGIN:  # a full disk would kill the filling process (SIGBUS)
          logging.warning('Not keeping the decoded %s images: they take %.1f GB and %s has %.1f '
                          'GB free; they are decoded every epoch instead', name, needed / 1e9,
                          self.folder, free / 1e9)
          return None
        file = self.folder / f'{name}.process{jax.process_index()}.npy'
      self.held[name] = decode(source, image_size, max_pixels, name, file)
    return self.held[name]
