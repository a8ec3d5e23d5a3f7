"""Pretrained MobileNetV2 weights: Keras `.h5` / `.weights.h5`, TFLite, and tlflax's own format.

    variables = tlflax.weights.load_pretrained('imagenet', alpha=1.0, include_top=False,
                                               input_size=160)
    features = MobileNetV2(include_top=False).apply(variables, images)

`source` is 'imagenet' (the Keras-applications download, cached in `~/.keras/models`) or a path to a
`.h5`, `.weights.h5`, `.tflite` or `.msgpack` (ported by `python -m tlflax.weights`) file.
"""
from pathlib import Path
from typing import Optional

from tlflax.models import variable_shapes
from tlflax.weights.convert import WeightsError, check_variables, to_flax_variables
from tlflax.weights.download import (KERAS_BASE_URL, DownloadError, check_sha256, fetch,
                                     keras_weights_filename)
from tlflax.weights.keras_h5 import read_h5
from tlflax.weights.native import NATIVE_SUFFIX, load_variables, save_variables
from tlflax.weights.tflite import read_tflite

TOP_LAYERS = ('predictions',)


def read_keras_h5(path) -> dict:
  """Reads a Keras `.h5` or `.weights.h5` file into Flax variables."""
  return to_flax_variables(read_h5(str(path)), str(path))


def read_weights_file(path, alpha: float = 1.0) -> dict:
  """Reads any supported weights file into Flax variables, choosing the reader by suffix."""
  path = Path(path)
  if path.is_dir():
    raise WeightsError(f'{path} is a folder; the weights are one file (.h5, .weights.h5, .tflite '
                       f'or {NATIVE_SUFFIX})')
  if not path.is_file():
    raise WeightsError(f'weights file {path} does not exist')
  name = path.name.lower()
  if name.endswith(NATIVE_SUFFIX):
    return load_variables(path)[0]
  if name.endswith(('.h5', '.hdf5')):
    return read_keras_h5(path)
  if name.endswith('.tflite'):
    return to_flax_variables(read_tflite(str(path), alpha), str(path))
  raise WeightsError(f'{path}: unknown weights format; expected .h5, .weights.h5, .tflite or '
                     f'{NATIVE_SUFFIX}')


def load_pretrained(source: str = 'imagenet', *, alpha: float = 1.0, include_top: bool = False,
                    input_size: int = 224, cache_dir: Optional[str] = None,
                    sha256: Optional[str] = None, base_url: str = KERAS_BASE_URL) -> dict:
  """Returns `{'params', 'batch_stats'}` for `MobileNetV2(alpha, include_top)` from `source`.

  Every expected variable must be present with the expected shape; a file with a classifier may
  be loaded without it (`include_top=False`). Raises `WeightsError` or `DownloadError` otherwise.
  """
  expected = variable_shapes(alpha, include_top)
  dont_load = () if include_top else TOP_LAYERS

  def fitted(variables, origin):
    return check_variables(variables, expected, origin, dont_load)

  if source == 'imagenet':
    filename = keras_weights_filename(alpha, include_top, input_size)
    validated = {}

    def validate(path):  # fetch calls this on the cached or freshly downloaded file
      validated['variables'] = fitted(read_keras_h5(path), str(path))

    fetch(base_url + filename, filename, cache_dir, sha256, validate=validate)
    return validated['variables']
  path = Path(source).expanduser()
  if sha256 and path.is_file():
    check_sha256(path, sha256)
  return fitted(read_weights_file(path, alpha), str(path))


__all__ = ['DownloadError', 'WeightsError', 'load_pretrained',
           'read_weights_file', 'save_variables']
