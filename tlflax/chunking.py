"""The frozen layers' forward pass, run a few images at a time (`compute.frozen_chunk`).

The layers below a phase's first trained one take no gradient, and in every phase BatchNorm uses
its moving statistics, so each image's activations are independent of the rest of its batch. On
CPUs, running those layers over chunks of 4 images (a `lax.map`) instead of the whole batch keeps
the activations in cache and XLA's buffers small: on a 2-core CPU, MobileNetV2's forward pass at
160x160 and batch 32 took 122 ms instead of 172 ms (`bench/frozen_chunks.py`, committed in
`bench/results/frozen_chunks.md`), and the page faults of its 150 MB of fresh buffers (about
39,000 a pass) were gone. Layers that train still see the whole batch: chunking their forward and
backward pass too made the phase-2 step slower (same benchmark). GPUs and TPUs want the whole
batch: the default (None) chunks only on CPUs.
"""
import jax
import jax.numpy as jnp

CPU_CHUNK = 4  # images per device; the fastest of 1, 2, 4, 8 and 16 on a 2-core CPU


def check_setting(setting) -> None:
  """Raises `ValueError` unless `setting` is None (automatic) or a whole number >= 0."""
  if setting is not None and (isinstance(setting, bool) or not isinstance(setting, int)
                              or setting < 0):
    raise ValueError(f'must be None (4 on CPUs, else the whole batch) or a whole number >= 0, '
                     f'got {setting!r}')


def resolve(setting) -> int:
  """Images per device in a chunk: `setting`, or for None `CPU_CHUNK` on the CPU backend and 0
  (the whole batch at once) elsewhere."""
  check_setting(setting)
  if setting is None:
    return CPU_CHUNK if jax.default_backend() == 'cpu' else 0
  return setting


def over_chunks(fn, inputs, chunk: int, devices: int = 1):
  """`fn(inputs)` for a function that computes each example on its own, run `chunk` examples per
  device at a time; `inputs` is an array of examples split over `devices` in contiguous blocks
  (data parallelism), `fn`'s result a tree of arrays of examples.

  Each device's block is padded to whole chunks, and chunk k holds, from each block, its examples
  k, k + n, k + 2n, ... (n chunks), so every chunk stays split over the devices as the batch is.
  0, or a chunk at least a device's block, runs `fn` on the whole batch."""
  block = inputs.shape[0] // devices
  if not chunk or chunk >= block:
    return fn(inputs)
  count = -(-block // chunk)
  shape = inputs.shape[1:]
  blocks = jnp.pad(inputs.reshape(devices, block, *shape),
                   [(0, 0), (0, count * chunk - block)] + [(0, 0)] * len(shape))
  chunks = jnp.moveaxis(blocks.reshape(devices, chunk, count, *shape), 2, 0)
  outputs = jax.lax.map(fn, chunks.reshape(count, devices * chunk, *shape))

  def unchunked(a):  # (count, devices * chunk, ...) back to the batch's order
    a = jnp.moveaxis(a.reshape(count, devices, chunk, *a.shape[2:]), 0, 2)
    return a.reshape(devices, chunk * count, *a.shape[3:])[:, :block].reshape(
        devices * block, *a.shape[3:])
  return jax.tree.map(unchunked, outputs)


def frozen_part(model, boundary: int, chunk: int, devices: int = 1):
  """`(variables, images) -> model.frozen_activations(images, boundary)` of a
  `tlflax.classifier.Classifier`, computed `chunk` images per device at a time."""
  def activations(variables, images):
    return over_chunks(
        lambda x: model.apply(variables, x, boundary, method=type(model).frozen_activations),
        images, chunk, devices)
  return activations


def frozen_in_chunks(model, boundary: int, chunk: int, devices: int = 1):
  """`model.apply` for images that runs backbone layers below `boundary` (a Keras index; the
  layer count for the whole backbone) `chunk` images per device at a time (`frozen_part`), then
  the rest on the whole batch. With `chunk` or `boundary` 0 it is `model.apply` itself."""
  if not chunk or not boundary:
    return model.apply
  frozen = frozen_part(model, boundary, chunk, devices)

  def apply(variables, images, train: bool = False, **kwargs):
    return model.apply(variables, frozen(variables, images), train, start=boundary, **kwargs)
  return apply
