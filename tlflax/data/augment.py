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
TensorFlow form (`missing`). Built in besides the tutorial's two, in JAX form only (the
small-data recipe's, docs/small_data.md): `random_resized_crop`, `color_jitter`, `randaugment`
and `random_erasing`. Arguments go by position or by name: `'color_jitter(hue=0.05)'`.
"""
import ast
import inspect
import math
import re

import jax
import jax.numpy as jnp

from tlflax.data import color_ops, image_ops, randaugment
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


def _check_range(op: str, name: str, bounds, low: float, high: float):
  """`ValueError` unless `bounds` is a pair (a, b) with low <= a <= b <= high."""
  ok = (isinstance(bounds, (tuple, list)) and len(bounds) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        and low <= bounds[0] <= bounds[1] <= high)
  if not ok:
    raise ValueError(f'{op}: {name} must be a pair (a, b) with {low:g} <= a <= b <= {high:g}, '
                     f'got {bounds!r}')


def _check_boxes(op: str, scale, ratio, height: int, width: int):
  """Checks crop or erasing bounds: some box of an area fraction in `scale` and an aspect ratio
  (width / height) in `ratio` must fit a `height` x `width` image."""
  _check_range(op, 'scale (area fraction)', scale, 0.0, 1.0)
  _check_range(op, 'ratio (width / height)', ratio, 0.0, math.inf)
  if scale[1] <= 0 or ratio[0] <= 0:
    raise ValueError(f'{op}: scale and ratio must be above 0, got {scale!r}, {ratio!r}')
  # the smallest area fits at some ratio r when r <= width / (area height) and 1 / r <= ...
  smallest = scale[0] * height * width
  fits_low, fits_high = smallest / height ** 2, width ** 2 / smallest
  if ratio[1] < fits_low or ratio[0] > fits_high:
    shape = 'a square image' if height == width else f'a {height}x{width} image'
    raise ValueError(f'{op}: no box of area fraction {scale[0]:g}..{scale[1]:g} with aspect ratio '
                     f'{ratio[0]:g}..{ratio[1]:g} fits {shape}')


@register_jax('random_resized_crop')
def random_resized_crop(images, key, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Inception-style crop (timm, big_vision): a box of a random area fraction in `scale` and
  aspect ratio in `ratio` (log-uniform), resized to the image's size; the whole image where 10
  draws find no box that fits."""
  _check_boxes('random_resized_crop', scale, ratio, *images.shape[1:3])
  boxes = image_ops.crop_boxes(key, len(images), *images.shape[1:3], scale, ratio)
  return image_ops.resized_crops(images, *boxes)


@register_jax('color_jitter')
def color_jitter(images, key, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
  """`tf.image`'s random brightness (a shift uniform in +-`brightness` of the range), contrast
  and saturation (factors uniform in [1 - x, 1 + x]) and hue (a turn uniform in +-`hue`), in
  that order, then clipped to [0, 255]."""
  for name, value, top in (('brightness', brightness, 1.0), ('contrast', contrast, 1.0),
                           ('saturation', saturation, 1.0), ('hue', hue, 0.5)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
      raise ValueError(f'color_jitter: {name} must be in [0, {top:g}], got {value!r}')
  keys = jax.random.split(key, 4)
  uniform = lambda k, spread: jax.random.uniform(  # noqa: E731
      k, (len(images),), minval=-spread, maxval=spread)
  images = color_ops.adjust_brightness(images, uniform(keys[0], brightness))
  images = color_ops.adjust_contrast(images, 1.0 + uniform(keys[1], contrast))
  images = color_ops.adjust_saturation(images, 1.0 + uniform(keys[2], saturation))
  images = color_ops.adjust_hue(images, uniform(keys[3], hue))
  return jnp.clip(images, 0.0, 255.0)


@register_jax('randaugment')
def randaugment_jax(images, key, n=2, m=9):
  """RandAugment: `n` ops per image from the paper's 14, at magnitude `m` (0 to 10;
  `tlflax.data.randaugment`)."""
  return randaugment.randaugment(images, key, n, m)


@register_jax('random_erasing')
def random_erasing(images, key, p=0.25, scale=(0.02, 1 / 3), ratio=(0.3, 3.3)):
  """Random erasing (Zhong et al.): with probability `p`, a box of an area fraction in `scale`
  and aspect ratio in `ratio` filled with uniform random levels; none where 10 draws find no
  box that fits."""
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
    raise ValueError(f'random_erasing: p must be in [0, 1], got {p!r}')
  _check_boxes('random_erasing', scale, ratio, *images.shape[1:3])
  box_key, apply_key, noise_key = jax.random.split(key, 3)
  height, width = images.shape[1:3]
  top, left, box_height, box_width = image_ops.crop_boxes(box_key, len(images), height, width,
                                                          scale, ratio)
  erased = image_ops.in_boxes(height, width, top, left, box_height, box_width)
  whole = (box_height == height) & (box_width == width) & (scale[1] < 1)  # no box fitted
  erased &= (jax.random.bernoulli(apply_key, p, (len(images),)) & ~whole)[:, None, None, None]
  noise = jax.random.uniform(noise_key, images.shape, jnp.float32, 0.0, 255.0)
  return jnp.where(erased, noise, images)


_OP = re.compile(r'^\s*(\w+)\s*(?:\((.*)\))?\s*$')


def parse(spec: str) -> list[tuple[str, tuple]]:
  """`'a|b(0.5, c=2)'` -> `[('a', ()), ('b', (0.5, 2))]`, each op registered and its arguments
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
      call = ast.parse(f'op({arguments})', mode='eval').body
      bound = inspect.signature(OPS.get(name) or JAX_OPS[name]).bind(
          'image', 'seed', *map(ast.literal_eval, call.args),
          **{keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords})
      bound.apply_defaults()
      values = bound.args[2:]
    except (ValueError, SyntaxError, TypeError) as e:
      why = ('arguments must be plain values: numbers, strings, tuples (write 0.75, not 3/4)'
             if 'malformed node' in str(e) else str(e))
      raise ConfigError(f'data.augment_ops: bad arguments in {part.strip()!r} ({why})') from e
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
