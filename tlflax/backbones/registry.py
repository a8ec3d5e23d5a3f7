"""The backbone registry: a name maps to one `Backbone`, which holds everything backbone-specific.

    from tlflax import backbones
    spec = backbones.get('resnet50')
    net = backbones.network(spec, {})              # a KerasGraph: features with average pooling
    variables = tlflax.weights.load_pretrained('imagenet', backbone='resnet50', input_size=224)

A new backbone is one module that builds its Keras layer table and calls `register` (see
`tests/tiny_backbone.py` for a complete one in 60 lines).
"""
import dataclasses
import difflib
from typing import Any, Callable, Mapping, Optional, Sequence

from tlflax.backbones.graph import KerasGraph
from tlflax.backbones.layers import Layer, layer_index
from tlflax.backbones.preprocessing import Preprocessing
from tlflax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class WeightsFile:
  """A Keras-applications weights download: URL, file name in Keras's cache, and the hash Keras
  checks (md5 or sha256, told apart by length; None where Keras publishes none)."""
  url: str
  filename: str
  file_hash: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Backbone:
  """Everything about one backbone that the rest of tlflax asks for.

  Attributes:
    name: the registered name (`model.backbone`).
    layers: `layers(include_top, **args)`: the Keras layer table of the application built with
      `include_top` (ending with its classifier) or without (ending with global average pooling,
      Keras's `pooling='avg'`).
    keras_application: `keras_application(keras, **settings)`: the Keras application the table
      follows, called with Keras's own keyword arguments (`input_shape`, `include_top`,
      `weights`, `pooling`, `name`, ... and the backbone's `args`); export and the parity tests
      build it.
    preprocessing: what turns [0, 255] RGB into the network's input outside the network.
    imagenet_weights: `imagenet_weights(include_top, input_size, **args)`: Keras's download,
      or None if Keras publishes no ImageNet weights for it.
    fine_tune_at: the Keras layer name where the tutorial-style second phase starts
      (`fine_tune_at='default'`).
    default_args: the keyword arguments (`model.backbone_args`) and their defaults.
    default_image_size, min_image_size: Keras's default input side and the smallest it builds.
    weight_readers: readers for other file formats by suffix (e.g. '.tflite'):
      `reader(path, **args) -> KerasWeights`.
  """
  name: str
  layers: Callable[..., tuple[Layer, ...]]
  keras_application: Callable
  preprocessing: Preprocessing
  imagenet_weights: Optional[Callable[..., WeightsFile]]
  fine_tune_at: str
  default_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  default_image_size: int = 224
  min_image_size: int = 32
  weight_readers: Mapping[str, Callable] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
  """Adds `backbone` under its name. A module registering again (a config file read twice)
  replaces its entry; another module's backbone of the same name is a `ValueError`."""
  known = _REGISTRY.get(backbone.name)
  if known and _source(known) != _source(backbone):
    raise ValueError(f'backbone {backbone.name!r} is already registered by {_source(known)}')
  _REGISTRY[backbone.name] = backbone
  return backbone


def _source(backbone: Backbone) -> str:
  return f'{backbone.layers.__module__}.{backbone.layers.__qualname__}'


def names() -> list[str]:
  """The registered backbone names, sorted."""
  return sorted(_REGISTRY)


def get(name: str) -> Backbone:
  """The backbone registered as `name`; a `ConfigError` listing the names otherwise."""
  if name not in _REGISTRY:
    raise ConfigError(f'unknown backbone {name!r}; registered: {", ".join(names())}')
  return _REGISTRY[name]


def arguments(backbone: Backbone, args: Optional[Mapping]) -> dict:
  """`args` completed with the backbone's defaults; a `ConfigError` for one it does not take."""
  args = dict(args or {})
  unknown = sorted(map(str, set(args) - set(backbone.default_args)))
  if unknown:
    takes = ', '.join(backbone.default_args) or 'none'
    raise ConfigError(f'model.backbone_args: {backbone.name} takes no {", ".join(unknown)} '
                      f'(its arguments: {takes})')
  for key, value in args.items():
    default = backbone.default_args[key]
    same_type = (isinstance(value, type(default)) and isinstance(value, bool) == isinstance(
        default, bool)) or (type(default) is float and type(value) is int)
    if not same_type:
      raise ConfigError(f'model.backbone_args: {backbone.name}\'s {key} must be '
                        f'{type(default).__name__} like its default {default!r}, got {value!r}')
  return {**backbone.default_args, **args}


def table(backbone: Backbone, args: Optional[Mapping] = None,
          include_top: bool = False) -> tuple[Layer, ...]:
  """The backbone's Keras layer table for `args`."""
  return backbone.layers(include_top, **arguments(backbone, args))


def network(backbone: Backbone, args: Optional[Mapping] = None, include_top: bool = False,
            **settings) -> KerasGraph:
  """The backbone as a Flax module (`settings`: those of `KerasGraph`, e.g. `dtype`)."""
  return KerasGraph(table(backbone, args, include_top), min_input_size=backbone.min_image_size,
                    **settings)


def layer_position(layers: Sequence[Layer], at, what: str = 'fine_tune_at') -> int:
  """A Keras layer index from an index or a layer name; a `ConfigError` naming the nearest
  names for a name the table does not have, or the range for an index outside it."""
  if isinstance(at, str) and at.isdigit():  # an index read as text
    at = int(at)
  if isinstance(at, bool) or not isinstance(at, (int, str)):
    raise ConfigError(f'{what} must be a Keras layer index or name, got {at!r}')
  if isinstance(at, int):
    if not 0 <= at <= len(layers):
      raise ConfigError(f'{what} must be a Keras layer index in 0..{len(layers)} (or a layer '
                        f'name), got {at}')
    return at
  index = layer_index(layers)
  if at not in index:
    nearest = difflib.get_close_matches(at, list(index), n=5, cutoff=0.5)
    hint = f'; nearest: {", ".join(nearest)}' if nearest else ''
    raise ConfigError(f'{what}={at!r} is not a layer of this backbone{hint}')
  return index[at]
