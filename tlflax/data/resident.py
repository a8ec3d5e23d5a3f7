"""Splits decoded once and kept in memory as uint8 arrays (`data.residency`), and where they go.

- 'device': one array per split in device memory, its rows split over the mesh's data axis in
  blocks (each process holds its own shard). Batches are gathered on the devices (`gather_rows`),
  so a training step needs nothing from the host.
- 'host': this process's shard as a NumPy array; each step's rows are taken on the host and put
  on the devices.
- 'stream': the tf.data pipeline decodes every epoch (`tlflax.data.pipeline`).
- 'auto': 'device' while the splits fit in `data.memory_share` of the devices' free memory (and
  each process's shard in that share of the host's, where it is decoded), else 'host' while they
  fit in that share of the host's available memory, else 'stream'; the smallest budgets over all
  processes decide, so every process chooses alike. TFDS sets are kept in memory like folders;
  augmentation ops without a JAX form make 'auto' stream.

Images are decoded and resized as the streamed pipeline does, then rounded to uint8 (what exported
models take), with TensorFlow where it is installed and Pillow where it is not
(`tlflax.data.pillow_decoding`).
"""
import dataclasses
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from tlflax import parallel
from tlflax.data import decoders, pillow_decoding
from tlflax.data.sources import Source, process_range
from tlflax.errors import ConfigError, DataError

RESIDENCIES = ('auto', 'device', 'host', 'stream')
FILL_BATCH = 64


def image_bytes(image_size: int) -> int:
  """Memory one resident uint8 image takes (its int32 label included)."""
  return image_size * image_size * 3 + 4


def available_host_bytes() -> int:
  """Memory the host can still give (Linux: MemAvailable; else free pages)."""
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def free_device_bytes() -> Optional[int]:
  """Free memory of the fullest local device, or None where JAX does not say (CPUs, whose
  'device memory' is the host's)."""
  free = []
  for device in jax.local_devices():
    stats = device.memory_stats() or {}
    if 'bytes_limit' not in stats:
      return None
    free.append(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  return min(free)


def memory_budgets(share: float) -> tuple[float, float, bool]:
  """(bytes per device, bytes per process, on_cpu): `share` of the free device memory and of the
  available host memory, the smallest over all processes (so that every process makes the same
  choice). On CPUs the devices share the host's memory: each gets its part of it."""
  device_free, host_free = free_device_bytes(), available_host_bytes()
  on_cpu = device_free is None
  if on_cpu:
    device_free = host_free // max(1, jax.local_device_count())
  budgets = np.array([device_free, host_free], np.float64) * share
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    budgets = np.asarray(multihost_utils.process_allgather(budgets)).reshape(-1, 2).min(0)
  return float(budgets[0]), float(budgets[1]), on_cpu


def _size(nbytes: float) -> str:
  return f'{nbytes / 1e9:.2f} GB' if nbytes >= 1e8 else f'{nbytes / 1e6:.1f} MB'


@dataclasses.dataclass(frozen=True)
class Choice:
  where: str  # 'device', 'host' or 'stream'
  reason: str


def choose(residency: str, examples: int, image_size: int, devices: int, memory_share: float,
           streamable: bool = True, device_form: bool = True, stream_form: bool = True) -> Choice:
  """Where splits of `examples` examples in all (over every process) go under `residency`.
  'device' needs its part on each device within the device budget, and the process's shard
  within the host budget (it is decoded there first); 'host' the shard within the host budget.
  One asked for that does not fit is a `ConfigError` with the sizes. `streamable` is False
  without TensorFlow; `device_form` / `stream_form` False when an augmentation op has no JAX /
  TensorFlow form."""
  if residency not in RESIDENCIES:
    raise ConfigError(f'data.residency must be one of {RESIDENCIES}, got {residency!r}')
  if residency == 'stream':
    if not streamable:
      raise ConfigError('data.residency=stream needs TensorFlow (tf.data), which is not '
                        'installed; use auto, device or host')
    if not stream_form:
      raise ConfigError('data.residency=stream runs augmentation in tf.data, and '
                        'data.augment_ops names ops without a TensorFlow form; use auto, '
                        'device or host')
    return Choice('stream', 'data.residency=stream')
  if not device_form:
    if residency != 'auto':
      raise ConfigError(f'data.residency={residency} runs augmentation with JAX, and '
                        'data.augment_ops names ops without a JAX form; use stream')
    return Choice('stream', 'an augmentation op has no JAX form')
  per_device = -(-examples // devices) * image_bytes(image_size)
  per_process = -(-examples // jax.process_count()) * image_bytes(image_size)
  device_budget, host_budget, on_cpu = memory_budgets(memory_share)
  sizes = (f'{_size(per_device)} per device, budget {_size(device_budget)} '
           f'(data.memory_share={memory_share:g} of '
           f'{"the available host memory, over the devices" if on_cpu else "free device memory"})')
  host_sizes = (f'{_size(per_process)} per process, budget {_size(host_budget)} '
                f'(data.memory_share={memory_share:g} of available host memory)')
  on_devices = per_device <= device_budget and per_process <= host_budget
  if residency == 'device':
    if not on_devices:
      raise ConfigError(f'data.residency=device: the decoded splits take {sizes}, and '
                        f'{host_sizes} while decoding; lower image_size, raise '
                        'data.memory_share, or use host or stream')
    return Choice('device', f'data.residency=device ({sizes})')
  if residency == 'host':
    if per_process > host_budget:
      raise ConfigError(f'data.residency=host: the decoded splits take {host_sizes}; use stream')
    return Choice('host', f'data.residency=host ({host_sizes})')
  if on_devices:
    return Choice('device', f'auto: they fit in device memory ({sizes})')
  if per_process <= host_budget:
    return Choice('host', f'auto: not in device memory ({sizes}), in host memory ({host_sizes})')
  if not streamable:
    raise ConfigError(f'data.residency=auto: the decoded splits fit neither in device memory '
                      f'({sizes}) nor in host memory ({host_sizes}), and streaming needs '
                      'TensorFlow, which is not installed')
  logging.warning('The decoded splits fit neither in device memory (%s) nor in host memory (%s): '
                  'streaming them with tf.data (compute.image_cache then decides whether '
                  'decoded images are kept between epochs: set it to disk or none to keep them '
                  'out of memory)', sizes, host_sizes)
  return Choice('stream', f'auto: too large for device ({sizes}) and host ({host_sizes})')


def decode_shard(source: Source, image_size: int, max_pixels: int, name: str,
                 rows: Optional[int] = None) -> np.ndarray:
  """This process's shard of `source` decoded and resized to uint8 (n, size, size, 3), with
  TensorFlow where it is installed, else Pillow (folders only); in the first n of `rows` rows
  (zeros after) if given, so that padding it for the devices copies nothing."""
  start, end = process_range(source.num_examples)
  padded = np.zeros((max(rows or 0, end - start), image_size, image_size, 3), np.uint8)
  images = padded[:end - start]
  started = time.perf_counter()
  with tqdm(total=len(images), desc=f'decoding {name}', unit='image', leave=False,
            disable=None) as bar:
    if decoders.tensorflow_installed():
      decoder = 'TensorFlow'
      _decode_with_tensorflow(source, image_size, max_pixels, images, bar.update)
    elif source.paths:
      decoder = 'Pillow'
      pillow_decoding.decode_files(source.paths[start:end], image_size, max_pixels, images,
                                   bar.update)
    else:
      raise DataError(f'the {name} split is not a folder of images, and decoding it needs '
                      'TensorFlow, which is not installed')
  logging.info('Decoded the %s split (%d images, %.0f MB) with %s in %.1f s', name, len(images),
               images.nbytes / 2**20, decoder, time.perf_counter() - started)
  return padded


def _decode_with_tensorflow(source: Source, image_size: int, max_pixels: int, out: np.ndarray,
                            progress):
  import tensorflow as tf

  from tlflax.data import transforms
  shard = source.process_shard().map(
      lambda x: transforms.exported_model_input(x['image'], image_size, max_pixels),
      num_parallel_calls=tf.data.AUTOTUNE)
  filled = 0
  for batch in shard.batch(FILL_BATCH).as_numpy_iterator():
    out[filled:filled + len(batch)] = batch
    filled += len(batch)
    progress(len(batch))
  if filled != len(out):
    raise DataError(f'a split gave {filled} images where {len(out)} were expected')


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a split's examples lie in a device-resident array: its rows are split over the
  mesh's devices in blocks of `rows_per_device`; each process's shard (`process_range`) fills
  the start of its devices' blocks, padding the rest. `positions[i]` is the row of example i."""
  rows_per_device: int
  rows: int
  positions: np.ndarray  # (num_examples,) int32

  @property
  def num_examples(self) -> int:
    return len(self.positions)


def layout(num_examples: int, mesh, multiple: int = 1) -> Layout:
  """The `Layout` of a split on `mesh`, with blocks a multiple of `multiple` rows."""
  processes = jax.process_count()
  local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  largest = -(-num_examples // processes)
  per_device = -(-largest // local)
  per_device = max(multiple, -(-per_device // multiple) * multiple)
  rows = per_device * mesh.size
  sharding = NamedSharding(mesh, PartitionSpec(parallel.DATA_AXIS))
  starts = {}
  for device, index in sharding.devices_indices_map((rows,)).items():
    starts.setdefault(device.process_index, []).append(index[0].start or 0)
  first_row = {}
  for process, blocks in starts.items():
    blocks.sort()
    if blocks != list(range(blocks[0], blocks[0] + len(blocks) * per_device, per_device)):
      raise ValueError(f"process {process}'s devices are not one run of the mesh's data axis "
                       f'(their blocks start at rows {blocks}): data kept on the devices needs '
                       'them to be; use data.residency=host or stream')
    first_row[process] = blocks[0]
  shard_sizes = [end - start for start, end in (process_range(num_examples, p)
                                                 for p in range(processes))]
  positions = np.concatenate([first_row[p] + np.arange(size)
                              for p, size in enumerate(shard_sizes)]).astype(np.int32)
  return Layout(per_device, rows, positions)


def to_devices(local: dict, at: Layout, mesh) -> dict:
  """This process's rows (`local`: arrays of its shard) padded into its blocks of `at`'s global
  arrays, split over the mesh."""
  sharding = NamedSharding(mesh, PartitionSpec(parallel.DATA_AXIS))
  rows_here = at.rows // jax.process_count()

  def place(array):
    if len(array) != rows_here:
      padded = np.zeros((rows_here, *array.shape[1:]), array.dtype)
      padded[:len(array)] = array
      array = padded
    return jax.make_array_from_process_local_data(sharding, array, (at.rows, *array.shape[1:]))
  return {key: place(np.asarray(value)) for key, value in local.items()}


def gather_rows(arrays: dict, rows: jax.Array, mesh) -> dict:
  """`arrays`' rows at `rows` (replicated (B,)), as arrays whose leading axis is split over the
  mesh like a batch: each device picks the rows in its own block, and a reduce-scatter (a sum
  where one device contributes each row) hands every device its part of the batch, so no device
  holds more than its block and a batch."""
  def local(block, rows):
    size = next(iter(jax.tree.leaves(block))).shape[0]
    first = jax.lax.axis_index(parallel.DATA_AXIS) * size
    inside = (rows >= first) & (rows < first + size)
    at = jnp.clip(rows - first, 0, size - 1)

    def pick(a):
      picked = jnp.where(inside.reshape(-1, *[1] * (a.ndim - 1)), a[at], jnp.zeros((), a.dtype))
      return jax.lax.psum_scatter(picked, parallel.DATA_AXIS, scatter_dimension=0, tiled=True)
    return jax.tree.map(pick, block)
  data = PartitionSpec(parallel.DATA_AXIS)
  return jax.shard_map(local, mesh=mesh, in_specs=(data, PartitionSpec()), out_specs=data)(
      arrays, rows)
