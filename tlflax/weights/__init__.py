"""Pretrained backbone weights: Keras `.h5` / `.weights.h5`, TFLite, and tlflax's own format.

    variables = tlflax.weights.load_pretrained('imagenet', backbone='resnet50', input_size=160)
    features = tlflax.backbones.network(tlflax.backbones.get('resnet50')).apply(variables, images)

`source` is 'imagenet' (the Keras-applications download, cached in `~/.keras/models`) or a path to a
`.h5`, `.weights.h5`, `.msgpack` (ported by `python -m tlflax.weights`) or a format the backbone
reads itself (MobileNetV2: `.tflite`) file.
"""
from pathlib import Path
from typing import Mapping, Optional

from tlflax import backbones
from tlflax.backbones import graph
from tlflax.weights.convert import WeightsError, check_variables, to_flax_variables
from tlflax.weights.download import DownloadError, check_file_hash, fetch
from tlflax.weights.keras_h5 import read_h5
from tlflax.weights.native import NATIVE_SUFFIX, load_variables, save_variables


def top_layers(backbone: backbones.Backbone, args: dict) -> tuple[str, ...]:
  """The layers of the backbone's classifier top: in its table with the top, not without."""
  without = {layer.name for layer in backbone.layers(False, **args)}
  return tuple(layer.name for layer in backbone.layers(True, **args) if layer.name not in without)


def _read_h5(path: Path, layers) -> dict:
  """The variables of a Keras HDF5 file saved from the Keras model of table `layers`."""
  return to_flax_variables(read_h5(str(path), layers), str(path), layers)


def _read_keras_h5(path: Path, backbone: backbones.Backbone, args: dict) -> dict:
  """A Keras HDF5 file of the backbone, saved with or without its top."""
  try:
    return _read_h5(path, backbone.layers(True, **args))
  except WeightsError:  # saved without the top, whose last layers may differ (ConvNeXt's)
    return _read_h5(path, backbone.layers(False, **args))


def _read(path: Path, backbone: backbones.Backbone, args: dict) -> dict:
  name = path.name.lower()
  if name.endswith(NATIVE_SUFFIX):
    variables, metadata = load_variables(path)
    made_for = metadata.get('backbone', backbones.DEFAULT_BACKBONE)
    if made_for != backbone.name:
      raise WeightsError(f'{path} holds {made_for} weights; the model is {backbone.name}')
    return variables
  if name.endswith(('.h5', '.hdf5')):
    return _read_keras_h5(path, backbone, args)
  for suffix, reader in backbone.weight_readers.items():
    if name.endswith(suffix):
      return to_flax_variables(reader(str(path), **args), str(path),
                               backbone.layers(True, **args))
  formats = ', '.join(['.h5', '.weights.h5', *backbone.weight_readers, NATIVE_SUFFIX])
  raise WeightsError(f'{path}: unknown weights format for {backbone.name}; expected {formats}')


def _check_file(path: Path):
  if path.is_dir():
    raise WeightsError(f'{path} is a folder; the weights are one file (.h5, .weights.h5 or '
                       f'{NATIVE_SUFFIX})')
  if not path.is_file():
    raise WeightsError(f'weights file {path} does not exist')


def read_weights_file(path, backbone: str = backbones.DEFAULT_BACKBONE,
                      backbone_args: Optional[Mapping] = None) -> dict:
  """Reads any supported weights file of `backbone` into Flax variables (reader by suffix)."""
  path = Path(path)
  _check_file(path)
  spec = backbones.get(backbone)
  return _read(path, spec, backbones.arguments(spec, backbone_args))


def backbone_of(path: Path, besides: str) -> Optional[str]:
  """The registered backbone (default arguments) whose variables a weights file fits, other
  than `besides`; None if none does."""
  for name in backbones.names():
    if name == besides:
      continue
    spec = backbones.get(name)
    args = backbones.arguments(spec, None)
    try:
      check_variables(_read(path, spec, args), graph.variable_shapes(spec.layers(False, **args)),
                      str(path), top_layers(spec, args))
    except (WeightsError, ValueError, KeyError):
      continue
    return name
  return None


def load_pretrained(source: str = 'imagenet', *, backbone: str = backbones.DEFAULT_BACKBONE,
                    backbone_args: Optional[Mapping] = None, include_top: bool = False,
                    input_size: int = 224, cache_dir: Optional[str] = None,
                    sha256: Optional[str] = None, base_url: Optional[str] = None) -> dict:
  """Returns `{'params', 'batch_stats'}` for the backbone (with its top if `include_top`).

  Every expected variable must be present with the expected shape; a file with a classifier may
  be loaded without it (`include_top=False`). `base_url` replaces the folder of Keras's download
  URL (a mirror). Raises `WeightsError` (naming the backbone a file was made for, when it is
  another registered one) or `DownloadError` otherwise.
  """
  spec = backbones.get(backbone)
  args = backbones.arguments(spec, backbone_args)
  expected = graph.variable_shapes(spec.layers(include_top, **args))
  dont_load = () if include_top else top_layers(spec, args)

  def fitted(path: Path, read=_read):
    try:
      return check_variables(read(path, spec, args), expected, str(path), dont_load)
    except WeightsError as e:
      other = backbone_of(path, besides=spec.name)
      if other:
        raise WeightsError(f'{path} holds {other} weights, not {spec.name} ones: set '
                           f'model.backbone={other} or use {spec.name} weights') from e
      raise

  if source == 'imagenet':
    if spec.imagenet_weights is None:
      raise WeightsError(f'Keras publishes no ImageNet weights for {spec.name}')
    file = spec.imagenet_weights(include_top, input_size, **args)
    url = (base_url + file.filename) if base_url else file.url
    validated = {}

    def validate(path):  # fetch calls this on the cached or freshly downloaded (.part) file
      validated['variables'] = fitted(Path(path), _read_keras_h5)

    fetch(url, file.filename, cache_dir, sha256 or file.file_hash, validate=validate)
    return validated['variables']
  path = Path(source).expanduser()
  _check_file(path)
  if sha256:
    check_file_hash(path, sha256)
  return fitted(path)


__all__ = ['DownloadError', 'WeightsError', 'load_pretrained', 'read_weights_file',
           'save_variables']
