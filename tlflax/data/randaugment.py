"""RandAugment (Cubuk et al., 2019) on the device: each image gets `n` ops, each drawn uniformly
from the paper's 14, all at one magnitude `m`.

The magnitude is on AutoAugment's scale, 0 to `MAX_MAGNITUDE` (10), which the paper's M uses
(M=9 for ResNet-50 on ImageNet). Every op grows stronger with it (timm's "increasing" forms):
rotation up to 30 degrees, shear up to 0.3, translation up to 0.45 of the image, solarization
from a threshold of 256 down to 0, posterization from 8 bits down to 4, and PIL's colour,
contrast, brightness and sharpness enhancement by factors 1 +- 0.9 m/10. Rotation, shear and
translation go either way at random, and fill with grey (128) where the image moved away.
"""
import math

import jax
import jax.numpy as jnp

from tlflax.data import color_ops, image_ops

MAX_MAGNITUDE = 10.0
FILL = 128.0


def _about_centre(linear, translation, height: int, width: int):
  """(B, 2, 3) matrices for `image_ops.affine`: an output offset d from the image centre reads
  the input at centre + `linear` d + `translation` ((B, 2, 2) and (B, 2), in (row, column))."""
  centre = jnp.asarray([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  offset = centre - jnp.einsum('bij,j->bi', linear, centre) + translation
  return jnp.concatenate([linear, offset[:, :, None]], axis=2)


def _linear(a, b, c, d):
  """(B, 2, 2) matrices [[a, b], [c, d]] from (B,) arrays."""
  return jnp.stack([a, b, c, d], axis=1).reshape(-1, 2, 2)


# Geometric ops: (strength, sign (B,), height, width) -> (B, 2, 3) matrices.

def rotate(strength, sign, height, width):
  angle = sign * math.radians(30.0) * strength
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  return _about_centre(_linear(cos, -sin, sin, cos), jnp.zeros((len(sign), 2)), height, width)


def shear_x(strength, sign, height, width):
  one, zero = jnp.ones_like(sign), jnp.zeros_like(sign)
  return _about_centre(_linear(one, zero, sign * 0.3 * strength, one), jnp.zeros((len(sign), 2)),
                       height, width)


def shear_y(strength, sign, height, width):
  one, zero = jnp.ones_like(sign), jnp.zeros_like(sign)
  return _about_centre(_linear(one, sign * 0.3 * strength, zero, one), jnp.zeros((len(sign), 2)),
                       height, width)


def _translation(shift, height, width):
  eye = jnp.broadcast_to(jnp.eye(2), (len(shift), 2, 2))
  return _about_centre(eye, shift, height, width)


def translate_x(strength, sign, height, width):
  shift = sign * 0.45 * strength * width
  return _translation(jnp.stack([jnp.zeros_like(shift), shift], axis=1), height, width)


def translate_y(strength, sign, height, width):
  shift = sign * 0.45 * strength * height
  return _translation(jnp.stack([shift, jnp.zeros_like(shift)], axis=1), height, width)


# Pixel ops: (images, strength, sign (B,)) -> images.

def _enhance(enhancement):
  def op(images, strength, sign):
    return enhancement(images, 1.0 + sign * 0.9 * strength)
  op.__name__ = enhancement.__name__.replace('enhance_', '')
  return op


def identity(images, strength, sign):
  return images


def autocontrast(images, strength, sign):
  return color_ops.autocontrast(images)


def equalize(images, strength, sign):
  return color_ops.equalize(images)


def solarize(images, strength, sign):
  return color_ops.solarize(images, 256.0 * (1.0 - strength))


def posterize(images, strength, sign):
  return color_ops.posterize(images, 8 - jnp.floor(4 * strength))


# The paper's list, in its order: (op, geometric). Strength is m / MAX_MAGNITUDE, sign +-1.
OPS = ((identity, False), (autocontrast, False), (equalize, False), (rotate, True),
       (solarize, False), (_enhance(color_ops.enhance_color), False), (posterize, False),
       (_enhance(color_ops.enhance_contrast), False),
       (_enhance(color_ops.enhance_brightness), False),
       (_enhance(color_ops.enhance_sharpness), False), (shear_x, True), (shear_y, True),
       (translate_x, True), (translate_y, True))


def check(n, m):
  """`ValueError` unless `n` is a positive whole number and `m` in [0, MAX_MAGNITUDE]."""
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'randaugment: n (ops per image) must be a whole number >= 1, got {n!r}')
  if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= MAX_MAGNITUDE:
    raise ValueError(f'randaugment: magnitude m must be in [0, {MAX_MAGNITUDE:g}] (AutoAugment\'s '
                     f'scale), got {m!r}')


def randaugment(images, key, n: int, m: float) -> jax.Array:
  """`n` ops of `OPS` per image, each drawn uniformly and on its own, at magnitude `m`. The
  geometric ops of a layer share one warp (`image_ops.affine`)."""
  check(n, m)
  strength = m / MAX_MAGNITUDE
  count, height, width = images.shape[:3]
  for layer_key in jax.random.split(key, n):
    choice_key, sign_key = jax.random.split(layer_key)
    choice = jax.random.randint(choice_key, (count,), 0, len(OPS))
    sign = jnp.where(jax.random.bernoulli(sign_key, 0.5, (count,)), 1.0, -1.0)
    pixels = images
    matrices = _translation(jnp.zeros((count, 2)), height, width)
    geometric = jnp.zeros((count,), bool)
    for index, (op, warps) in enumerate(OPS):
      chosen = choice == index
      if warps:
        matrices = jnp.where(chosen[:, None, None], op(strength, sign, height, width), matrices)
        geometric |= chosen
      else:
        pixels = jnp.where(chosen[:, None, None, None], op(images, strength, sign), pixels)
    if any(warps for _, warps in OPS):
      pixels = jnp.where(geometric[:, None, None, None],
                         image_ops.affine(images, matrices, FILL), pixels)
    images = jnp.clip(pixels, 0.0, 255.0)
  return images
