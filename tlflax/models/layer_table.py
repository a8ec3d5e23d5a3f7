"""The Keras MobileNetV2 layer list, as data.

`keras.applications.MobileNetV2` is a flat functional model whose `layers` list is what the Keras
tutorial indexes ("fine-tune from layer 100" is `base_model.layers[100:]`). `mobilenet_v2_layers`
reproduces that list exactly: same names, same order, same indices. The Flax module is built by
walking it, so the table and the model cannot drift apart, and weight porting and freezing look
layers up in it.
"""
import dataclasses
from typing import Mapping, Optional, Sequence

import jax

# (expansion, output filters before alpha, stride) of the 17 inverted residual blocks (0..16).
INVERTED_RESIDUAL_BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)

# Layer kinds that own variables, and the names of their Keras variables in `get_weights()` order.
KERAS_VARIABLES = {
    'conv': ('kernel',),
    'depthwise': ('depthwise_kernel',),
    'batch_norm': ('gamma', 'beta', 'moving_mean', 'moving_variance'),
    'dense': ('kernel', 'bias'),
}
# The Keras 3 class-derived names under which `.weights.h5` files store each kind.
KERAS_CLASS_NAMES = {
    'conv': 'conv2d',
    'depthwise': 'depthwise_conv2d',
    'batch_norm': 'batch_normalization',
    'dense': 'dense',
}


@dataclasses.dataclass(frozen=True)
class Layer:
  """One Keras layer: its index in `model.layers`, name, kind and static settings."""
  index: int
  name: str
  kind: str  # input, conv, batch_norm, relu6, pad, depthwise, add, avg_pool, max_pool, dense
  features: int = 0
  kernel_size: int = 1
  strides: int = 1
  residual: Optional[str] = None  # for kind 'add': the layer whose output is added

  @property
  def has_variables(self) -> bool:
    return self.kind in KERAS_VARIABLES


def make_divisible(value: float, divisor: int = 8) -> int:
  """Keras's channel rounding: nearest multiple of `divisor`, never below 90% of `value`."""
  new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


def mobilenet_v2_layers(alpha: float = 1.0, include_top: bool = True,
                        pooling: Optional[str] = None,
                        classes: int = 1000) -> tuple[Layer, ...]:
  """The layers of `keras.applications.MobileNetV2(alpha, include_top, pooling)`, in Keras order.

  Names of Keras's automatically named layers (`input_layer`, `global_average_pooling2d`, ...) are
  given without the `_N` suffix Keras adds when several models exist in one session.
  """
  if alpha <= 0:
    raise ValueError(f'alpha must be positive, got {alpha}')
  if pooling not in (None, 'avg', 'max'):
    raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
  specs = []

  def add(name, kind, **settings):
    specs.append(dict(name=name, kind=kind, **settings))

  add('input_layer', 'input')
  channels = make_divisible(32 * alpha)
  add('Conv1', 'conv', features=channels, kernel_size=3, strides=2)
  add('bn_Conv1', 'batch_norm')
  add('Conv1_relu', 'relu6')
  for block_id, (expansion, filters, strides) in enumerate(INVERTED_RESIDUAL_BLOCKS):
    block_input = specs[-1]['name']
    out_channels = make_divisible(int(filters * alpha))
    if block_id:
      prefix = f'block_{block_id}_'
      add(prefix + 'expand', 'conv', features=expansion * channels)
      add(prefix + 'expand_BN', 'batch_norm')
      add(prefix + 'expand_relu', 'relu6')
    else:
      prefix = 'expanded_conv_'
    if strides == 2:
      add(prefix + 'pad', 'pad', kernel_size=3)
    add(prefix + 'depthwise', 'depthwise', kernel_size=3, strides=strides)
    add(prefix + 'depthwise_BN', 'batch_norm')
    add(prefix + 'depthwise_relu', 'relu6')
    add(prefix + 'project', 'conv', features=out_channels)
    add(prefix + 'project_BN', 'batch_norm')
    if channels == out_channels and strides == 1:
      add(prefix + 'add', 'add', residual=block_input)
    channels = out_channels
  # As in the paper and Keras, alpha < 1 does not shrink the last convolution.
  add('Conv_1', 'conv', features=make_divisible(1280 * alpha) if alpha > 1.0 else 1280)
  add('Conv_1_bn', 'batch_norm')
  add('out_relu', 'relu6')
  if include_top:
    add('global_average_pooling2d', 'avg_pool')
    add('predictions', 'dense', features=classes)
  elif pooling == 'avg':
    add('global_average_pooling2d', 'avg_pool')
  elif pooling == 'max':
    add('global_max_pooling2d', 'max_pool')
  return tuple(Layer(index=i, **spec) for i, spec in enumerate(specs))


def layer_index(layers: Sequence[Layer]) -> dict[str, int]:
  """Maps each layer name to its Keras index."""
  return {layer.name: layer.index for layer in layers}


def variable_layers_from(layers: Sequence[Layer], start: int) -> list[str]:
  """Names of the layers with variables in `layers[start:]` (`base_model.layers[start:]`)."""
  if not 0 <= start <= len(layers):
    raise ValueError(f'layer index {start} is outside 0..{len(layers)} for this model')
  return [layer.name for layer in layers[start:] if layer.has_variables]


def trainable_mask(params: Mapping, layers: Sequence[Layer], fine_tune_at: int) -> dict:
  """A tree like `params` (keyed by layer name) with True for layers at index >= `fine_tune_at`.

  This is Keras's `for layer in base_model.layers[:fine_tune_at]: layer.trainable = False`.
  """
  trainable = set(variable_layers_from(layers, fine_tune_at))
  known = layer_index(layers)
  unknown = sorted(set(params) - set(known))
  if unknown:
    raise KeyError(f'parameters of layers not in the layer table: {", ".join(unknown)}')
  return {name: jax.tree.map(lambda _, t=name in trainable: t, subtree)
          for name, subtree in params.items()}
