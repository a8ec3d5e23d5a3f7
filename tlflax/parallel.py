"""Data parallelism with `jax.sharding`: one mesh axis, 'data', over every device of every process.

Batches are split along that axis; parameters, batch statistics and optimizer state are replicated.
The same code runs on one device, several local devices and several hosts (after
`jax.distributed.initialize()`); XLA inserts the gradient all-reduce.
"""
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tlflax.errors import ConfigError

DATA_AXIS = 'data'


def data_mesh() -> Mesh:
  """A 1-D mesh over all devices (`jax.devices()`, every process's). Its axis is `Auto`: the
  compiler propagates shardings from the inputs (GSPMD), so model code needs no annotations."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh: Mesh):
  """Host values (the same on every process) as arrays replicated over the mesh."""
  return jax.device_put(tree, replicated(mesh))


def to_host(tree):
  """Replicated arrays as host NumPy arrays (each process reads its own copy)."""
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


def to_process_local(tree, mesh: Mesh):
  """This process's rows of batch-sharded arrays, as host NumPy arrays."""
  return multihost_utils.global_array_to_host_local_array(tree, mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh):
  """A global batch must split evenly over the devices."""
  if batch_size % mesh.size:
    raise ConfigError(f'batch_size {batch_size} does not split over {mesh.size} devices; '
                      f'use a multiple of {mesh.size}')
