"""Which library decodes image files: TensorFlow where it is installed (tf.data reads and decodes
them in parallel, as the streamed pipeline does), else Pillow in a thread pool
(`tlflax.data.pillow_decoding`), so that folders of images need no TensorFlow.
"""
import concurrent.futures
import importlib.util
import os
from typing import Iterator, Sequence

import numpy as np

from tlflax.data import pillow_decoding


def tensorflow_installed() -> bool:
  """Whether TensorFlow can be imported (an import blocked with `sys.modules['tensorflow'] =
  None` counts as not installed)."""
  try:
    return importlib.util.find_spec('tensorflow') is not None
  except ValueError:  # in sys.modules as None
    return False


def name() -> str:
  """The library that decodes here."""
  return 'TensorFlow' if tensorflow_installed() else 'Pillow'


def _threads() -> int:
  return os.cpu_count() or 1


def decodable(paths: Sequence, max_pixels=None) -> np.ndarray:
  """For each path, whether it reads and decodes as an image (checked in parallel)."""
  ok = np.zeros(len(paths), bool)
  if not len(paths):
    return ok
  if not tensorflow_installed():
    def check(path):
      try:
        pillow_decoding.decode_rgb(path, max_pixels)
        return True
      except Exception:  # anything Pillow cannot read
        return False
    with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
      return np.fromiter(pool.map(check, paths), bool, len(paths))
  import tensorflow as tf

  from tlflax.data.transforms import decode_rgb
  checks = (tf.data.Dataset.from_tensor_slices([os.fsencode(p) for p in paths]).enumerate()
            .map(lambda i, p: (i, tf.shape(decode_rgb(tf.io.read_file(p), max_pixels))),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .ignore_errors())
  for index, _ in checks.as_numpy_iterator():
    ok[index] = True
  return ok


def decoded_batches(paths: Sequence, batch_size: int, size: int, max_pixels=None,
                    rounded: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices into `paths`, images) batches of the files that decode, in order: decoded and
  resized to float32 (size, size, 3) in [0, 255], or with `rounded` to the uint8 that exported
  models take. Files that do not decode are left out (their indices are missing)."""
  if not len(paths):
    return
  if tensorflow_installed():
    yield from _tensorflow_batches(paths, batch_size, size, max_pixels, rounded)
    return

  def decode(index):
    try:
      image = pillow_decoding.resize(pillow_decoding.decode_rgb(paths[index], max_pixels), size)
    except Exception:  # not readable: left out, as tf.data's ignore_errors
      return None
    return np.clip(np.round(image), 0, 255).astype(np.uint8) if rounded else image
  with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
    for start in range(0, len(paths), batch_size):
      indices = range(start, min(start + batch_size, len(paths)))
      images = list(pool.map(decode, indices))
      kept = [i for i, image in zip(indices, images) if image is not None]
      if kept:
        yield np.array(kept), np.stack([image for image in images if image is not None])


def _tensorflow_batches(paths, batch_size: int, size: int, max_pixels, rounded: bool):
  import tensorflow as tf

  from tlflax.data import transforms
  from tlflax.data.pipeline import without_autotuning
  prepare = transforms.exported_model_input if rounded else transforms.decode_and_resize
  batches = (tf.data.Dataset.from_tensor_slices([os.fsencode(p) for p in paths]).enumerate()
             .map(lambda i, p: (i, prepare(tf.io.read_file(p), size, max_pixels)),
                  num_parallel_calls=tf.data.AUTOTUNE)
             .ignore_errors()
             .batch(batch_size)
             .prefetch(2))
  yield from without_autotuning(batches).as_numpy_iterator()
