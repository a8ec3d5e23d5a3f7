"""Training augmentation as a chain of registered ops (big_vision's preprocessing registry, small).

An op is a function `op(image, seed, *args) -> image` on a float (H, W, 3) image in [0, 255], the
image already resized; `seed` is a shape-[2] int tensor for TensorFlow's stateless random ops, so
an epoch's augmentation depends only on the run's seed, the epoch and the example. Ops are
registered by name; a config names them in `data.augment_ops`, e.g. `'brightness(0.1)|hue(0.02)'`,
and they run after the tutorial's two: `flip_lr` (switched by `data.flip`) and
`rotate(data.rotation_factor)`. A new augmentation is one function, registered from any module the
run imports (a config file is one), and one config entry:

    @augment.register('brightness')
    def brightness(image, seed, delta):
      return tf.image.stateless_random_brightness(image, delta * 255, seed)
"""
import ast
import inspect
import math
import re

import tensorflow as tf

from tlflax.data import transforms
from tlflax.errors import ConfigError

OPS = {}


def register(name: str):
  """Decorator: registers `op(image, seed, *args)` as augmentation op `name`."""
  def add(op):
    OPS[name] = op
    return op
  return add


@register('flip_lr')
def flip_lr(image, seed):
  """Random horizontal flip, as Keras `RandomFlip('horizontal')`."""
  return tf.image.stateless_random_flip_left_right(image, seed)


@register('rotate')
def rotate(image, seed, factor: float):
  """Random rotation by up to `factor` of a full turn, as Keras `RandomRotation(factor)`."""
  limit = factor * 2 * math.pi
  return transforms.rotate(image, tf.random.stateless_uniform([], seed, -limit, limit))


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
    if name not in OPS:
      raise ConfigError(f'data.augment_ops: unknown op {name!r}; registered: {sorted(OPS)}')
    try:
      values = ast.literal_eval(f'({arguments},)') if arguments else ()
      inspect.signature(OPS[name]).bind('image', 'seed', *values)
    except (ValueError, SyntaxError, TypeError) as e:
      raise ConfigError(f'data.augment_ops: bad arguments in {part.strip()!r} ({e})') from e
    ops.append((name, values))
  return ops


def check(spec: str):
  """`parse(spec)`, then one run of its ops on a small image, so that arguments of the wrong kind
  fail here, naming `data.augment_ops`, and not at the first training step."""
  if not parse(spec):
    return
  try:
    chain(False, 0.0, spec)(tf.fill((8, 8, 3), 128.0), tf.constant([0, 0], tf.int64))
  except Exception as e:  # any op's own failure
    raise ConfigError(f'data.augment_ops: {spec!r} fails on a test image ({type(e).__name__}: '
                      f'{e})') from e


def chain(flip: bool, rotation_factor: float, spec: str = ''):
  """`augment(image, seed)`: the tutorial's flip and rotation, then the ops of `spec`. Each op
  gets its own seed, split from `seed` by position; flip and rotation keep positions 0 and 1 even
  when switched off, so switching one off leaves the other's random draws as they were."""
  slots = [('flip_lr', ()) if flip else None,
           ('rotate', (rotation_factor,)) if rotation_factor else None, *parse(spec)]

  def augment(image, seed):
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, len(slots)))
    for slot, op_seed in zip(slots, seeds):
      if slot:
        name, arguments = slot
        image = OPS[name](image, op_seed, *arguments)
    return image
  return augment
