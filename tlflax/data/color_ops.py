"""Batched colour and tone ops in JAX for augmentation on the device, on float (B, H, W, 3) images
in [0, 255]: `tf.image`'s adjust_* ops (through dm-pix, which computes them as TensorFlow does)
for colour jitter, and PIL's `ImageOps` / `ImageEnhance` ops that RandAugment uses.

Factors and thresholds are per image ((B,) arrays or scalars).
"""
import dm_pix
import jax
import jax.numpy as jnp

GREY_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's 'L' conversion (ITU-R 601-2 luma)


def _per_image(value, images) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(value, jnp.float32), images.shape[:1])[:, None, None, None]


def adjust_brightness(images, delta) -> jax.Array:
  """`tf.image.adjust_brightness` of images in [0, 1] by `delta`, on the [0, 255] scale."""
  return dm_pix.adjust_brightness(images, 255.0 * _per_image(delta, images))


def adjust_contrast(images, factor) -> jax.Array:
  """`tf.image.adjust_contrast`: each channel's distance from its mean scaled by `factor`."""
  return dm_pix.adjust_contrast(images, _per_image(factor, images))


def adjust_saturation(images, factor) -> jax.Array:
  """`tf.image.adjust_saturation`: HSV saturation scaled by `factor`, clipped to [0, 1]."""
  return jax.vmap(dm_pix.adjust_saturation)(images, jnp.broadcast_to(factor, images.shape[:1]))


def adjust_hue(images, delta) -> jax.Array:
  """`tf.image.adjust_hue`: HSV hue turned by `delta` (a fraction of the circle)."""
  return jax.vmap(dm_pix.adjust_hue)(images, jnp.broadcast_to(delta, images.shape[:1]))


def grey(images) -> jax.Array:
  """(B, H, W, 1) luma, as PIL's conversion to 'L'."""
  return jnp.sum(images * jnp.asarray(GREY_WEIGHTS, jnp.float32), axis=-1, keepdims=True)


def blend(degenerate, images, factor) -> jax.Array:
  """PIL `ImageEnhance`: `degenerate + factor * (images - degenerate)`, clipped to [0, 255]."""
  mixed = degenerate + _per_image(factor, images) * (images - degenerate)
  return jnp.clip(mixed, 0.0, 255.0)


def enhance_color(images, factor) -> jax.Array:
  """PIL `ImageEnhance.Color`: towards (factor < 1) or away from the grey image."""
  return blend(jnp.broadcast_to(grey(images), images.shape), images, factor)


def enhance_contrast(images, factor) -> jax.Array:
  """PIL `ImageEnhance.Contrast`: towards or away from the mean grey level."""
  mean = jnp.mean(grey(images), axis=(1, 2, 3), keepdims=True)
  return blend(jnp.broadcast_to(mean, images.shape), images, factor)


def enhance_brightness(images, factor) -> jax.Array:
  """PIL `ImageEnhance.Brightness`: towards or away from black."""
  return blend(jnp.zeros_like(images), images, factor)


def enhance_sharpness(images, factor) -> jax.Array:
  """PIL `ImageEnhance.Sharpness`: towards or away from PIL's SMOOTH filter (3x3, centre 5,
  the rest 1, over 13), whose border pixels stay as they are."""
  images = jnp.asarray(images, jnp.float32)
  kernel = jnp.ones((3, 3), jnp.float32).at[1, 1].set(5.0) / 13.0
  channels = images.shape[-1]
  smooth = jax.lax.conv_general_dilated(
      images, jnp.tile(kernel[:, :, None, None], (1, 1, 1, channels)), (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=channels)
  degenerate = images.at[:, 1:-1, 1:-1].set(jnp.round(smooth))
  return blend(degenerate, images, factor)


def _levels(images) -> jax.Array:
  return jnp.clip(jnp.round(images), 0, 255)


def solarize(images, threshold) -> jax.Array:
  """PIL `ImageOps.solarize`: levels at or above `threshold` inverted."""
  images = _levels(images)
  return jnp.where(images >= _per_image(threshold, images), 255.0 - images, images)


def posterize(images, bits) -> jax.Array:
  """PIL `ImageOps.posterize`: each level keeps its top `bits` bits (1 to 8)."""
  step = 2.0 ** (8 - _per_image(bits, images))
  return jnp.floor(_levels(images) / step) * step


def autocontrast(images) -> jax.Array:
  """PIL `ImageOps.autocontrast`: each channel stretched so that its darkest level is 0 and its
  brightest 255 (a channel of one level stays as it is)."""
  low = jnp.min(images, axis=(1, 2), keepdims=True)
  high = jnp.max(images, axis=(1, 2), keepdims=True)
  spread = high - low
  stretched = (images - low) * 255.0 / jnp.where(spread > 0, spread, 1.0)
  return jnp.where(spread > 0, stretched, images)


def _equalize_channel(levels) -> jax.Array:
  """PIL's `ImageOps.equalize` of one (H, W) channel of integer levels."""
  counts = jnp.bincount(levels.reshape(-1), length=256)
  last = counts[255 - jnp.argmax(counts[::-1] > 0)]  # the count of the highest level present
  step = (jnp.sum(counts) - last) // 255
  before = jnp.cumsum(counts) - counts
  table = jnp.clip((step // 2 + before) // jnp.maximum(step, 1), 0, 255)
  return jnp.where(step > 0, table[levels], levels).astype(jnp.float32)


def equalize(images) -> jax.Array:
  """PIL `ImageOps.equalize`: each channel's histogram flattened."""
  levels = _levels(images).astype(jnp.int32)
  per_channel = jax.vmap(jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1))
  return per_channel(levels)
