"""Batched image transforms in JAX, for augmentation on the device (`tlflax.data.augment`'s JAX
forms): a horizontal flip and Keras `RandomRotation`'s rotation (bilinear, reflect fill), each
equal to its TensorFlow form in `tlflax.data.transforms`.

Images are float (B, H, W, C) arrays in [0, 255].
"""
import jax
import jax.numpy as jnp


def flip_lr(images: jax.Array, flipped: jax.Array) -> jax.Array:
  """`images` with those where `flipped` (bool (B,)) mirrored left to right."""
  return jnp.where(flipped[:, None, None, None], images[:, :, ::-1], images)


def _reflect(coordinate: jax.Array, size: int) -> jax.Array:
  """TensorFlow's REFLECT fill ([abcd] -> [dcba|abcd|dcba]) of a float coordinate, clamped to the
  image as `ImageProjectiveTransformV3` clamps it."""
  if size <= 1:
    return jnp.zeros_like(coordinate)
  period = 2.0 * size
  below = coordinate + period * jnp.trunc(-coordinate / period)  # trunc: C++'s int cast
  below = jnp.where(below < -size, below + period, -below - 1)
  above = coordinate - period * jnp.trunc(coordinate / period)
  above = jnp.where(above >= size, period - above - 1, above)
  reflected = jnp.where(coordinate < 0, below, jnp.where(coordinate > size - 1, above, coordinate))
  return jnp.clip(reflected, 0, size - 1)


def _bilinear(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
  """`image` (H, W, C) sampled at float coordinates `y`, `x` (H, W) inside it, bilinearly, with
  zero beyond the last row and column (whose weight is then zero), as TensorFlow samples."""
  height, width = image.shape[:2]
  y0, x0 = jnp.floor(y), jnp.floor(x)

  def read(row, column):
    inside = (row <= height - 1) & (column <= width - 1)
    value = image[jnp.minimum(row, height - 1).astype(jnp.int32),
                  jnp.minimum(column, width - 1).astype(jnp.int32)]
    return jnp.where(inside[..., None], value, 0.0)
  wx, wy = (x - x0)[..., None], (y - y0)[..., None]
  top = (1 - wx) * read(y0, x0) + wx * read(y0, x0 + 1)
  bottom = (1 - wx) * read(y0 + 1, x0) + wx * read(y0 + 1, x0 + 1)
  return (1 - wy) * top + wy * bottom


def rotate(images: jax.Array, angles: jax.Array) -> jax.Array:
  """Each image rotated by its angle (radians, (B,)) about its centre: bilinear, reflect fill,
  as Keras `RandomRotation` and `tlflax.data.transforms.rotate`."""
  height, width = images.shape[1:3]
  cx, cy = (width - 1) / 2, (height - 1) / 2
  rows, columns = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                               jnp.arange(width, dtype=jnp.float32), indexing='ij')

  def one(image, angle):
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x = cos * columns - sin * rows + (cx - cx * cos + cy * sin)
    y = sin * columns + cos * rows + (cy - cx * sin - cy * cos)
    return _bilinear(image, _reflect(y, height), _reflect(x, width))
  return jax.vmap(one)(images.astype(jnp.float32), angles.astype(jnp.float32))
