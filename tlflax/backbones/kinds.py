"""The layer kinds a Keras layer table may use: how each runs in Flax and where its variables go.

A `Kind` is two things: `apply(layer, inputs, context)`, which computes the layer inside
`KerasGraph`'s compact call (creating its Flax submodule under the Keras layer name), and
`slots(layer, in_channels)`, which lists its variables: the Keras name (in `layer.get_weights()`
order), the Flax collection and name, and the Flax shape. Weight porting in both directions,
variable shapes and `.weights.h5` reading all follow the slots, so a kind is defined in one place.
A backbone that needs another kind registers it with `register` in its own module.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from tlflax.backbones.layers import Layer
from tlflax.models.depthwise import DepthwiseConv2D
from tlflax.models.pointwise import PointwiseConv


class Slot(NamedTuple):
  """One variable: Keras name, Flax collection and name, Flax shape, whether the Keras array is
  the Flax one with its last two axes swapped (depthwise kernels), and for a layer that is a
  nested Keras model (a `Sequential`), the `.weights.h5` group of the inner layer holding it."""
  keras_name: str
  collection: str
  flax_name: str
  shape: tuple[int, ...]
  swap_last_axes: bool = False
  keras_sublayer: str = ''


class Context(NamedTuple):
  """What `apply` may read besides the layer and its inputs: the graph's settings."""
  train: bool
  dtype: jnp.dtype
  depthwise_implementation: str
  classifier_activation: Optional[str]


@dataclasses.dataclass(frozen=True)
class Kind:
  apply: Callable[[Layer, list, Context], jax.Array]
  slots: Callable[[Layer, int], tuple[Slot, ...]] = lambda layer, channels: ()
  keras_class: Optional[str] = None  # the group name `.weights.h5` files derive from the class


KINDS: dict[str, Kind] = {}


def register(name: str, kind: Kind):
  """Makes `name` usable as a `Layer.kind`; a name is registered once."""
  if name in KINDS:
    raise ValueError(f'layer kind {name!r} is already registered')
  KINDS[name] = kind


def out_channels(layer: Layer, in_channels: int) -> int:
  """Channels of the layer's output: its `features` if it has them, else its input's."""
  return layer.features or in_channels


ACTIVATIONS = {
    None: lambda x: x,
    'linear': lambda x: x,
    'relu': nn.relu,
    'relu6': lambda x: jnp.clip(x, 0, 6),
    'sigmoid': nn.sigmoid,
    'swish': nn.swish,
    'silu': nn.swish,
    'hard_sigmoid': lambda x: jnp.clip(x + 3, 0, 6) * (1.0 / 6.0),
    'hard_swish': lambda x: x * (jnp.clip(x + 3, 0, 6) * (1.0 / 6.0)),
    'gelu': lambda x: nn.gelu(x, approximate=False),
    'softmax': lambda x: nn.softmax(x.astype(jnp.float32)),
}


def activate(name: Optional[str], x):
  if name not in ACTIVATIONS:
    raise NotImplementedError(f'activation {name!r}; known: {sorted(map(str, ACTIVATIONS))}')
  return ACTIVATIONS[name](x)


def _single(inputs):
  (x,) = inputs
  return x


def _bias_slot(layer, features):
  return (Slot('bias', 'params', 'bias', (features,)),) if layer.use_bias else ()


# --- convolutions and dense layers -------------------------------------------------------------

def _conv_slots(layer, channels):
  k = layer.kernel_size
  return (Slot('kernel', 'params', 'kernel', (k, k, channels // layer.groups, layer.features)),
          *_bias_slot(layer, layer.features))


def _conv(layer, inputs, context):
  x = _single(inputs)
  channels = x.shape[-1]
  if layer.groups == 1 and layer.kernel_size == 1 and layer.strides == 1:
    y = PointwiseConv(layer.features, use_bias=layer.use_bias, dtype=context.dtype,
                      name=layer.name)(x)
  elif layer.groups == channels == layer.features:
    y = DepthwiseConv2D(layer.kernel_size, layer.strides, padding=layer.padding.upper(),
                        use_bias=layer.use_bias, implementation=context.depthwise_implementation,
                        dtype=context.dtype, name=layer.name)(x)
  else:
    y = nn.Conv(layer.features, (layer.kernel_size,) * 2, strides=layer.strides,
                padding=layer.padding.upper(), feature_group_count=layer.groups,
                use_bias=layer.use_bias, dtype=context.dtype,
                kernel_init=nn.initializers.glorot_uniform(), name=layer.name)(x)
  return activate(layer.activation, y)


def _depthwise_slots(layer, channels):
  k = layer.kernel_size
  return (Slot('depthwise_kernel', 'params', 'kernel', (k, k, 1, channels), swap_last_axes=True),
          *_bias_slot(layer, channels))


def _depthwise(layer, inputs, context):
  y = DepthwiseConv2D(layer.kernel_size, layer.strides, padding=layer.padding.upper(),
                      use_bias=layer.use_bias, implementation=context.depthwise_implementation,
                      dtype=context.dtype, name=layer.name)(_single(inputs))
  return activate(layer.activation, y)


def _dense_slots(layer, channels):
  return (Slot('kernel', 'params', 'kernel', (channels, layer.features)),
          Slot('bias', 'params', 'bias', (layer.features,)))


def _dense(layer, inputs, context):
  y = nn.Dense(layer.features, dtype=context.dtype, name=layer.name)(_single(inputs))
  activation = context.classifier_activation if layer.activation == 'softmax' else layer.activation
  return activate(activation, y)


# --- normalization ------------------------------------------------------------------------------

def _batch_norm_slots(layer, channels):
  return (Slot('gamma', 'params', 'scale', (channels,)),
          Slot('beta', 'params', 'bias', (channels,)),
          Slot('moving_mean', 'batch_stats', 'mean', (channels,)),
          Slot('moving_variance', 'batch_stats', 'var', (channels,)))


def _batch_norm(layer, inputs, context):
  return nn.BatchNorm(use_running_average=not context.train, momentum=layer.momentum,
                      epsilon=layer.epsilon, dtype=context.dtype, name=layer.name)(_single(inputs))


def _layer_norm_slots(layer, channels):
  return (Slot('gamma', 'params', 'scale', (channels,)),
          Slot('beta', 'params', 'bias', (channels,)))


def _layer_norm(layer, inputs, context):
  return nn.LayerNorm(epsilon=layer.epsilon, dtype=context.dtype, use_fast_variance=False,
                      name=layer.name)(
      _single(inputs))


class _Normalization(nn.Module):
  """Keras `Normalization` (per channel, last axis): `(x - mean) / max(sqrt(variance), 1e-7)`;
  mean and variance are constants of the backbone, kept with the BatchNorm statistics."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = (x.shape[-1],)
    mean = self.variable('batch_stats', 'mean', jnp.zeros, channels).value
    variance = self.variable('batch_stats', 'variance', jnp.ones, channels).value
    self.variable('batch_stats', 'count', lambda: jnp.zeros((), jnp.float32))
    return ((x - mean) / jnp.maximum(jnp.sqrt(variance), 1e-7)).astype(self.dtype)


def _normalization_slots(layer, channels):
  return (Slot('mean', 'batch_stats', 'mean', (channels,)),
          Slot('variance', 'batch_stats', 'variance', (channels,)),
          Slot('count', 'batch_stats', 'count', ()))


def _normalization(layer, inputs, context):
  return _Normalization(dtype=context.dtype, name=layer.name)(_single(inputs))


class _LayerScale(nn.Module):
  """ConvNeXt's `LayerScale`: the input times a learned per-channel `gamma`."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    gamma = self.param('gamma', nn.initializers.constant(1e-6), (x.shape[-1],))
    return x * gamma.astype(self.dtype)


def _layer_scale(layer, inputs, context):
  return _LayerScale(dtype=context.dtype, name=layer.name)(_single(inputs))


# --- the rest: no variables ----------------------------------------------------------------------

def _rescaling(layer, inputs, context):
  x = _single(inputs)
  return (x * jnp.asarray(layer.scale or (1.0,), x.dtype)
          + jnp.asarray(layer.offset or (0.0,), x.dtype))


def _pad(layer, inputs, context):
  (top, bottom), (left, right) = layer.padding
  return jnp.pad(_single(inputs), ((0, 0), (top, bottom), (left, right), (0, 0)))


def correct_pad(size: tuple[int, int], kernel_size: int):
  """Keras `imagenet_utils.correct_pad`: zero padding before a stride-2 'valid' convolution."""
  half = kernel_size // 2
  return tuple((half - (1 - s % 2), half) for s in size)


def _correct_pad(layer, inputs, context):
  x = _single(inputs)
  return jnp.pad(x, ((0, 0), *correct_pad(x.shape[1:3], layer.kernel_size), (0, 0)))


def _window(layer):
  return (layer.kernel_size,) * 2, (layer.strides,) * 2, layer.padding.upper()


def _max_pool(layer, inputs, context):
  return nn.max_pool(_single(inputs), *_window(layer))


def _avg_pool(layer, inputs, context):  # Keras excludes padding from 'same' averages
  return nn.avg_pool(_single(inputs), *_window(layer), count_include_pad=False)


def _global(reduce):
  def apply(layer, inputs, context):
    return reduce(_single(inputs), axis=(1, 2), keepdims=layer.keepdims)
  return apply


def _reshape_to_pixel(layer, inputs, context):  # Keras Reshape((1, 1, channels))
  x = _single(inputs)
  return x.reshape(x.shape[0], 1, 1, x.shape[-1])


def _flatten(layer, inputs, context):  # Keras Flatten: (batch, 1, 1, classes) -> (batch, classes)
  x = _single(inputs)
  return x.reshape(x.shape[0], -1)


def _classifier_activation(layer, inputs, context):  # Activation(classifier_activation)
  return activate(context.classifier_activation, _single(inputs))


def _sum(layer, inputs, context):
  total = inputs[0]
  for x in inputs[1:]:
    total = total + x
  return total


def _product(layer, inputs, context):
  total = inputs[0]
  for x in inputs[1:]:
    total = total * x
  return total


def _identity(layer, inputs, context):  # dropout and stochastic depth: the backbone runs in
  return _single(inputs)               # inference mode (see `tlflax.classifier`)


for _name, _kind in {
    'input': Kind(_identity),
    'conv': Kind(_conv, _conv_slots, 'conv2d'),
    'depthwise': Kind(_depthwise, _depthwise_slots, 'depthwise_conv2d'),
    'dense': Kind(_dense, _dense_slots, 'dense'),
    'batch_norm': Kind(_batch_norm, _batch_norm_slots, 'batch_normalization'),
    'layer_norm': Kind(_layer_norm, _layer_norm_slots, 'layer_normalization'),
    'normalization': Kind(_normalization, _normalization_slots, 'normalization'),
    'layer_scale': Kind(_layer_scale, lambda layer, channels: (
        Slot('gamma', 'params', 'gamma', (channels,)),), 'layer_scale'),
    'activation': Kind(lambda layer, inputs, context: activate(layer.activation, _single(inputs))),
    'rescaling': Kind(_rescaling),
    'pad': Kind(_pad),
    'correct_pad': Kind(_correct_pad),
    'max_pool': Kind(_max_pool),
    'avg_pool': Kind(_avg_pool),
    'global_avg_pool': Kind(_global(jnp.mean)),
    'global_max_pool': Kind(_global(jnp.max)),
    'reshape_to_pixel': Kind(_reshape_to_pixel),
    'flatten': Kind(_flatten),
    'classifier_activation': Kind(_classifier_activation),
    'add': Kind(_sum),
    'multiply': Kind(_product),
    'dropout': Kind(_identity),
    'stochastic_depth': Kind(_identity),
}.items():
  register(_name, _kind)


def slots_of(layer: Layer, in_channels: int) -> tuple[Slot, ...]:
  return KINDS[layer.kind].slots(layer, in_channels)


def to_flax_arrays(slots, arrays) -> dict:
  """{collection: {flax_name: array}} from a layer's Keras arrays in slot order."""
  out = {}
  for slot, array in zip(slots, arrays):
    array = np.asarray(array)
    if slot.swap_last_axes:
      array = np.swapaxes(array, -1, -2)
    out.setdefault(slot.collection, {})[slot.flax_name] = array
  return out


def to_keras_arrays(slots, variables: dict, name: str) -> list[np.ndarray]:
  """A layer's float32 Keras arrays from `{collection: {layer name: {flax_name: array}}}`."""
  arrays = []
  for slot in slots:
    array = np.asarray(variables[slot.collection][name][slot.flax_name], np.float32)
    arrays.append(np.swapaxes(array, -1, -2) if slot.swap_last_axes else array)
  return arrays


__all__ = ['KINDS', 'Context', 'Kind', 'Slot', 'activate', 'correct_pad', 'out_channels',
           'register', 'slots_of', 'to_flax_arrays', 'to_keras_arrays']
