"""Training augmentation as a chain of registered ops (big_vision's preprocessing registry, small).

An op has two forms, each registered by name:

- the TensorFlow form, `op(image, seed, *args) -> image` on one float (H, W, 3) image in [0, 255]
  inside tf.data (the streamed pipeline, `data.residency='stream'`); `seed` is a shape-[2] int
  tensor for TensorFlow's stateless random ops;
- the JAX form, `op(images, key, *args) -> images` on a float (B, H, W, 3) batch on the device
  (data kept in memory, `tlflax.resident_feed`); `key` is a JAX random key, from which the op
  draws each image's randomness.

Either way an epoch's augmentation depends only on the run's seed, the epoch and the example's
place. A config names ops in `data.augment_ops`, e.g. `'brightness(0.1)|hue(0.02)'`, and they run
after the tutorial's two: `flip_lr` (switched by `data.flip`) and `rotate(data.rotation_factor)`.
A new augmentation is a function or two, registered from any module the run imports (a config
file is one), and one config entry:

    @augment.register('brightness')
    def brightness(image, seed, delta):
      return tf.image.stateless_random_brightness(image, delta * 255, seed)

    @augment.register_jax('brightness')
    def brightness_jax(images, key, delta):
      shift = jax.random.uniform(key, (len(images), 1, 1, 1), minval=-delta, maxval=delta)
      return images + 255 * shift

A run whose data stays in memory needs the JAX form of each op it names; one that streams, the
TensorFlow form (`missing`).
"""
import ast
import inspect
import math
import re

import jax
import jax.numpy as jnp

from tlflax.data import image_ops
from tlflax.errors import ConfigError

OPS = {}  # TensorFlow forms
JAX_OPS = {}  # JAX forms
FORMS = {'tensorflow': OPS, 'jax': JAX_OPS}


def register(name: str):
  """Decorator: registers `op(image, seed, *args)` as the TensorFlow form of op `name`."""
  def add(op):
    OPS[name] = op
    return op
  return add


def register_jax(name: str):
  """Decorator: registers `op(images, key, *args)` as the JAX form of op `name`."""
  def add(op):
    JAX_OPS[name] = op
    return op
  return add


@register('flip_lr')
def flip_lr(image, seed):
  """Random horizontal flip, as Keras `RandomFlip('horizontal')`."""
  import tensorflow as tf
  return tf.image.stateless_random_flip_left_right(image, seed)


@register('rotate')
def rotate(image, seed, factor: float):
  """Random rotation by up to `factor` of a full turn, as Keras `RandomRotation(factor)`."""
  import tensorflow as tf

  from tlflax.data import transforms
  limit = factor * 2 * math.pi
  return transforms.rotate(image, tf.random.stateless_uniform([], seed, -limit, limit))


@register_jax('flip_lr')
def flip_lr_jax(images, key):
  """Each image flipped left to right with probability 1/2."""
  return image_ops.flip_lr(images, jax.random.bernoulli(key, 0.5, (len(images),)))


@register_jax('rotate')
def rotate_jax(images, key, factor: float):
  """Each image rotated by a uniform angle of up to `factor` of a full turn either way."""
  limit = factor * 2 * math.pi
  return image_ops.rotate(images, jax.random.uniform(key, (len(images),), jnp.float32,
                                                     -limit, limit))


_OP = re.compile(r'^\s*(\w+)\s*(?:\((.*)\))?\s*$')


def parse(spec: str) -> list[tuple[str, tuple]]:
  """`'a|b(0.5, 2)'` -> `[('a', ()), ('b', (0.5, 2))]`, each op registered and its arguments
  fitting its signature; else `ConfigError` naming `data.augment_ops`."""
  ops = []
  for part in filter(str.strip, spec.split('|')):
    match = _OP.match(part)
    if not match:
      raise ConfigError(f'data.augment_ops: cannot read {part!r}; write name or name(arg, ...)')
    name, arguments = match.groups()
    arguments = (arguments or '').strip().rstrip(',')
    if name not in OPS and name not in JAX_OPS:
      raise ConfigError(f'data.augment_ops: unknown op {name!r}; registered: '
                        f'{sorted({*OPS, *JAX_OPS})}')
    try:
      values = ast.literal_eval(f'({arguments},)') if arguments else ()
      inspect.signature(OPS.get(name) or JAX_OPS[name]).bind('image', 'seed', *values)
    except (ValueError, SyntaxError, TypeError) as e:
      raise ConfigError(f'data.augment_ops: bad arguments in {part.strip()!r} ({e})') from e
    ops.append((name, values))
  return ops


def missing(spec: str, form: str) -> list[str]:
  """The ops of `spec` without a `form` ('tensorflow' or 'jax') registered."""
  return [name for name, _ in parse(spec) if name not in FORMS[form]]


def check(spec: str):
  """`parse(spec)`, then one run of each registered form of its ops on a small image, so that
  arguments of the wrong kind fail here, naming `data.augment_ops`, and not at the first
  training step."""
  if not parse(spec):
    return
  from tlflax.data import decoders
  for form, run in (('jax', _jax_test_run), ('tensorflow', _tensorflow_test_run)):
    if missing(spec, form) or (form == 'tensorflow' and not decoders.tensorflow_installed()):
      continue
    try:
      run(spec)
    except Exception as e:  # any op's own failure
      raise ConfigError(f'data.augment_ops: {spec!r} fails on a test image in its {form} form '
                        f'({type(e).__name__}: {e})') from e


def _jax_test_run(spec: str):
  jax_chain(False, 0.0, spec)(jnp.full((1, 8, 8, 3), 128.0), jax.random.key(0))


def _tensorflow_test_run(spec: str):
  import tensorflow as tf
  chain(False, 0.0, spec)(tf.fill((8, 8, 3), 128.0), tf.constant([0, 0], tf.int64))


def _slots(flip: bool, rotation_factor: float, spec: str) -> list:
  return [('flip_lr', ()) if flip else None,
          ('rotate', (rotation_factor,)) if rotation_factor else None, *parse(spec)]


def chain(flip: bool, rotation_factor: float, spec: str = ''):
  """`augment(image, seed)`: the TensorFlow forms of the tutorial's flip and rotation, then of the
  ops of `spec`. Each op gets its own seed, split from `seed` by position; flip and rotation keep
  positions 0 and 1 even when switched off, so switching one off leaves the other's random draws
  as they were."""
  import tensorflow as tf
  slots = _slots(flip, rotation_factor, spec)
  absent = missing(spec, 'tensorflow')
  if absent:
    raise ConfigError(f'data.augment_ops: {absent} have no TensorFlow form (`augment.register`), '
                      'which streamed data needs; keep the data in memory '
                      '(--config.data.residency=auto, device or host)')

  def augment(image, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, len(slots)))
    for slot, op_seed in zip(slots, seeds):
      if slot:
        name, arguments = slot
        image = OPS[name](image, op_seed, *arguments)
    return image
  return augment


def jax_chain(flip: bool, rotation_factor: float, spec: str = ''):
  """`augment(images, key)`: the JAX forms of the ops `chain` runs, in its order, each with its
  own key split from `key` by position (as `chain` splits seeds)."""
  slots = _slots(flip, rotation_factor, spec)
  absent = missing(spec, 'jax')
  if absent:
    raise ConfigError(f'data.augment_ops: {absent} have no JAX form (`augment.register_jax`), '
                      "which data kept in memory needs; use --config.data.residency=stream")

  def augment(images, key):
    for slot, op_key in zip(slots, jax.random.split(key, len(slots))):
      if slot:
        name, arguments = slot
        images = JAX_OPS[name](images, op_key, *arguments)
    return images
  return augment
