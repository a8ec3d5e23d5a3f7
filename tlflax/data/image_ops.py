"""Batched image transforms in JAX, for augmentation on the device (`tlflax.data.augment`'s JAX
forms): a horizontal flip and Keras `RandomRotation`'s rotation (bilinear, reflect fill), each
equal to its TensorFlow form in `tlflax.data.transforms`; Inception-style crop boxes, resized
crops and box masks; and affine warps with a constant fill (RandAugment's geometric ops).

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


def crop_boxes(key: jax.Array, count: int, height: int, width: int, scale, ratio,
               attempts: int = 10):
  """Inception-style boxes (timm's and torchvision's `RandomResizedCrop`): an area fraction
  uniform in `scale`, an aspect ratio (width / height) log-uniform in `ratio`, the first of
  `attempts` draws that fits the image, placed uniformly. Returns int32 (top, left, box height,
  box width), each (count,); where no draw fits, the whole image."""
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  areas = height * width * jax.random.uniform(area_key, (count, attempts), minval=scale[0],
                                              maxval=scale[1])
  ratios = jnp.exp(jax.random.uniform(ratio_key, (count, attempts), minval=jnp.log(ratio[0]),
                                      maxval=jnp.log(ratio[1])))
  box_widths = jnp.round(jnp.sqrt(areas * ratios)).astype(jnp.int32)
  box_heights = jnp.round(jnp.sqrt(areas / ratios)).astype(jnp.int32)
  fits = ((box_widths >= 1) & (box_widths <= width) & (box_heights >= 1)
          & (box_heights <= height))
  first = jnp.argmax(fits, axis=1)
  found = jnp.any(fits, axis=1)
  pick = lambda values, whole: jnp.where(found, jnp.take_along_axis(  # noqa: E731
      values, first[:, None], axis=1)[:, 0], whole)
  box_heights, box_widths = pick(box_heights, height), pick(box_widths, width)
  top = jnp.floor(jax.random.uniform(top_key, (count,)) * (height - box_heights + 1))
  left = jnp.floor(jax.random.uniform(left_key, (count,)) * (width - box_widths + 1))
  return top.astype(jnp.int32), left.astype(jnp.int32), box_heights, box_widths


def resized_crops(images: jax.Array, top, left, box_height, box_width) -> jax.Array:
  """Each image's box (int (B,) arrays) resized to the image's size: bilinear, antialiased where
  it shrinks (`jax.image.scale_and_translate`)."""
  height, width, channels = images.shape[1:]

  def one(image, top, left, box_height, box_width):
    scale = jnp.stack([height / box_height, width / box_width]).astype(jnp.float32)
    return jax.image.scale_and_translate(
        image, (height, width, channels), (0, 1), scale, -jnp.stack([top, left]) * scale,
        method='linear', antialias=True)
  return jax.vmap(one)(images.astype(jnp.float32), top, left, box_height, box_width)


def in_boxes(height: int, width: int, top, left, box_height, box_width) -> jax.Array:
  """bool (B, height, width, 1): where each box (int (B,) arrays) covers the image."""
  rows = jnp.arange(height)[None, :, None]
  columns = jnp.arange(width)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < (top + box_height)[:, None, None])
            & (columns >= left[:, None, None]) & (columns < (left + box_width)[:, None, None]))
  return inside[..., None]


def affine(images: jax.Array, matrices: jax.Array, fill: float) -> jax.Array:
  """Each image warped by its (B, 2, 3) matrix, which maps an output pixel's (row, column, 1) to
  the input point it reads: bilinear, `fill` where that point is outside the image."""
  height, width = images.shape[1:3]
  rows, columns = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                               jnp.arange(width, dtype=jnp.float32), indexing='ij')

  def one(image, matrix):
    y = matrix[0, 0] * rows + matrix[0, 1] * columns + matrix[0, 2]
    x = matrix[1, 0] * rows + matrix[1, 1] * columns + matrix[1, 2]
    inside = (y >= 0) & (y <= height - 1) & (x >= 0) & (x <= width - 1)
    sampled = _bilinear(image, jnp.clip(y, 0, height - 1), jnp.clip(x, 0, width - 1))
    return jnp.where(inside[..., None], sampled, fill)
  return jax.vmap(one)(images.astype(jnp.float32), matrices.astype(jnp.float32))
