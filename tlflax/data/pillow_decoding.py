"""Image files decoded and resized without TensorFlow: Pillow decodes, NumPy resizes as
`tf.image.resize(method='bilinear')` does (half-pixel centres, no antialiasing), in a thread pool
(Pillow releases the GIL while it decodes). Used where TensorFlow is not installed; the result
matches `tlflax.data.transforms.exported_model_input` (decoding, the reduced-scale JPEG decoding
above `max_pixels`, resizing, rounding to uint8) up to the JPEG decoders' own differences.
"""
import concurrent.futures
import math
import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

JPEG_SCALES = (1, 2, 4, 8)  # the reduced-size decodings libjpeg offers (`draft`, `ratio`)


def _jpeg_ratio(width: int, height: int, max_pixels: Optional[int]) -> int:
  """The reduction `tlflax.data.transforms.decode_rgb` decodes a JPEG at."""
  if max_pixels is None:
    return 1
  scale = math.sqrt(height * width / max_pixels)
  return JPEG_SCALES[sum(s < scale for s in JPEG_SCALES[:-1])]


def decode_rgb(path, max_pixels: Optional[int] = None) -> np.ndarray:
  """The file at `path` as uint8 (H, W, 3); a JPEG over `max_pixels` at 1/2, 1/4 or 1/8 scale."""
  with Image.open(path) as image:
    if image.format == 'JPEG':
      ratio = _jpeg_ratio(image.width, image.height, max_pixels)
      if ratio > 1:
        # Pillow picks the largest reduction r with size // requested >= r on both sides
        image.draft('RGB', (max(1, image.width // ratio), max(1, image.height // ratio)))
    image.seek(0)  # the first frame of an animation, as TensorFlow's decode_image
    if image.mode in ('I', 'I;16', 'I;16B', 'I;16L'):  # 16-bit grey: scaled, as TensorFlow does
      grey = np.round(np.asarray(image, np.float64) / 257).clip(0, 255).astype(np.uint8)
      return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert('RGB'))


def _axis(in_size: int, out_size: int):
  """(lower, upper, fraction) of each output position along one axis, as TensorFlow's
  `ResizeBilinear` with half-pixel centres computes them."""
  position = (np.arange(out_size, dtype=np.float32) + 0.5) * np.float32(in_size / out_size) - 0.5
  floor = np.floor(position)
  lower = np.maximum(floor, 0).astype(np.int64)
  upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int64)
  return lower, upper, (position - floor).astype(np.float32)[:, None]


def resize(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 (H, W, C) -> float32 (size, size, C), bilinear as `tf.image.resize`."""
  image = image.astype(np.float32)
  top, bottom, y_fraction = _axis(image.shape[0], size)
  left, right, x_fraction = _axis(image.shape[1], size)
  upper, lower = image[top], image[bottom]
  x_fraction = x_fraction[None]
  top_row = upper[:, left] + (upper[:, right] - upper[:, left]) * x_fraction
  bottom_row = lower[:, left] + (lower[:, right] - lower[:, left]) * x_fraction
  return top_row + (bottom_row - top_row) * y_fraction[:, :, None]


def decode_and_resize(path, size: int, max_pixels: Optional[int] = None) -> np.ndarray:
  """The file at `path` decoded and resized to uint8 (size, size, 3), rounded."""
  return np.clip(np.round(resize(decode_rgb(path, max_pixels), size)), 0, 255).astype(np.uint8)


def decode_files(paths: Sequence, size: int, max_pixels: Optional[int] = None,
                 out: Optional[np.ndarray] = None, progress=None) -> np.ndarray:
  """uint8 (len(paths), size, size, 3): each file decoded and resized, in parallel threads; into
  `out` if given. `progress(n)` is called as images finish."""
  out = np.empty((len(paths), size, size, 3), np.uint8) if out is None else out

  def fill(index):
    out[index] = decode_and_resize(paths[index], size, max_pixels)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for _ in pool.map(fill, range(len(paths))):
      if progress:
        progress(1)
  return out
