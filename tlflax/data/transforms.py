"""Per-example image transforms in TensorFlow: decoding, the backbone's preprocessing, and the
Keras-equal rotation that the augmentation ops (`tlflax.data.augment`) use.
"""
import tensorflow as tf

from tlflax.data.pillow_decoding import JPEG_SCALES


def _decode_full(encoded: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def _decode_jpeg_within(encoded: tf.Tensor, max_pixels: int) -> tf.Tensor:
  """A JPEG at the smallest of `JPEG_SCALES` that keeps it within `max_pixels` (or 1/8)."""
  height, width = tf.unstack(tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.float64))
  scale = tf.math.sqrt(height * width / max_pixels)  # the linear reduction needed
  index = tf.reduce_sum(tf.cast(tf.constant(JPEG_SCALES[:-1], tf.float64) < scale, tf.int32))
  return tf.switch_case(index, [lambda: _decode_full(encoded)] + [
      lambda r=ratio: tf.io.decode_jpeg(encoded, channels=3, ratio=r) for ratio in JPEG_SCALES[1:]])


def decode_rgb(encoded: tf.Tensor, max_pixels=None) -> tf.Tensor:
  """Decodes JPEG/PNG/GIF/BMP bytes to uint8 (H, W, 3); grey, RGBA and CMYK become RGB. With
  `max_pixels`, a JPEG larger than that is decoded at 1/2, 1/4 or 1/8 scale (the first that fits;
  images within it decode exactly as without); other formats are decoded whole, so callers skip
  those over the limit beforehand (`tlflax.data.folders.too_large`)."""
  if max_pixels is None:
    return _decode_full(encoded)
  return tf.cond(tf.io.is_jpeg(encoded), lambda: _decode_jpeg_within(encoded, max_pixels),
                 lambda: _decode_full(encoded))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """float32 bilinear resize to (size, size), as `image_dataset_from_directory` and the tutorial.
  It reads uint8 directly (the same values as casting first), so no float copy of a large image
  is made before it shrinks."""
  return tf.image.resize(image, (size, size), method='bilinear')


def decode_and_resize(encoded: tf.Tensor, size: int, max_pixels=None) -> tf.Tensor:
  """Encoded image -> float32 (size, size, 3) in [0, 255]: what augmentation and scaling start
  from (and what `image_cache` keeps)."""
  return resize(decode_rgb(encoded, max_pixels), size)


def preprocess(encoded: tf.Tensor, size: int, preprocessing, max_pixels=None) -> tf.Tensor:
  """Encoded image -> float32 (size, size, 3) as the backbone takes it (`preprocessing`, a
  `tlflax.backbones.Preprocessing`): the evaluation input."""
  return preprocessing(decode_and_resize(encoded, size, max_pixels))


def exported_model_input(encoded: tf.Tensor, size: int, max_pixels=None) -> tf.Tensor:
  """Encoded image -> uint8 (size, size, 3): decoded and resized as `preprocess` does, rounded
  (not scaled), as exported models (`tlflax.export`) take it."""
  image = decode_and_resize(encoded, size, max_pixels)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def rotation_transform(angle: tf.Tensor, height, width) -> tf.Tensor:
  """Keras `RandomRotation`'s 8-vector projective transform for `angle` radians about the centre."""
  cx = (tf.cast(width, tf.float32) - 1) / 2
  cy = (tf.cast(height, tf.float32) - 1) / 2
  cos, sin = tf.cos(angle), tf.sin(angle)
  return tf.stack([cos, -sin, cx - cx * cos + cy * sin,
                   sin, cos, cy - cx * sin - cy * cos, 0.0, 0.0])


def rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
  """Rotates a float (H, W, C) image: bilinear, reflect fill, as Keras `RandomRotation`."""
  shape = tf.shape(image)
  rotated = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=rotation_transform(angle, shape[0], shape[1])[None],
      output_shape=shape[:2], fill_value=0.0, interpolation='BILINEAR', fill_mode='REFLECT')
  return tf.ensure_shape(rotated[0], image.shape)
