"""MobileNetV2 in Flax, layer for layer the same as `keras.applications.MobileNetV2`.

Variables are keyed by Keras layer names (`params['Conv1']['kernel']`,
`batch_stats['bn_Conv1']['mean']`, ...), and the module is built by walking the Keras layer table,
so Keras layer indices (as in "fine-tune from layer 100") mean the same here.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from tlflax.models import layer_table
from tlflax.models.depthwise import DepthwiseConv2D
from tlflax.models.pointwise import PointwiseConv

# Keras's MobileNetV2 BatchNormalization settings.
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.999
MIN_INPUT_SIZE = 32


def correct_pad(size: tuple[int, int], kernel_size: int):
  """Keras `imagenet_utils.correct_pad`: zero padding before a stride-2 'valid' convolution."""
  half = kernel_size // 2
  return tuple((half - (1 - s % 2), half) for s in size)


class MobileNetV2(nn.Module):
  """`keras.applications.MobileNetV2` in Flax.

  Attributes:
    alpha: width multiplier (Keras publishes weights for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4).
    include_top: end with global average pooling and the `predictions` classifier.
    pooling: without the top, None (the feature map), 'avg' or 'max'.
    classes: classifier width when `include_top`.
    classifier_activation: 'softmax' (as Keras) or None for logits.
    depthwise_implementation: 'auto', 'grouped' or 'shifted' (see `tlflax.models.depthwise`).
    dtype: computation dtype; parameters stay float32.
  """
  alpha: float = 1.0
  include_top: bool = True
  pooling: Optional[str] = None
  classes: int = 1000
  classifier_activation: Optional[str] = 'softmax'
  depthwise_implementation: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @property
  def layers(self) -> tuple[layer_table.Layer, ...]:
    """The Keras layer table this module follows."""
    return layer_table.mobilenet_v2_layers(self.alpha, self.include_top, self.pooling, self.classes)

  @nn.compact
  def __call__(self, inputs, train: bool = False, *, start: int = 0, stop: Optional[int] = None):
    """Runs Keras layers `[start, stop)` of the network (all of them by default).

    From `start=0`, `inputs` are NHWC images scaled to [-1, 1]; from a later `start`, they are the
    `boundary_activations` that `stop=start` returned. With `stop`, the result is those boundary
    activations: the output of layer `stop - 1` and every earlier output that a residual `add` at or
    after `stop` still needs, keyed by layer name.

    `train` is Keras's `training` argument for BatchNorm: False (the default, and what transfer
    learning wants) normalizes with the moving statistics; True uses batch statistics and updates
    the `batch_stats` collection, which must then be mutable.
    """
    layers = self.layers
    end = len(layers) if stop is None else stop
    if not (0 <= start <= end <= len(layers) and end >= 1):
      raise ValueError(f'need 0 <= start <= stop <= {len(layers)} and stop >= 1, '
                       f'got start={start}, stop={stop}')
    if self.classifier_activation not in (None, 'softmax'):
      raise ValueError("classifier_activation must be 'softmax' or None, "
                       f'got {self.classifier_activation!r}')
    if start == 0:
      _check_images(inputs)
      outputs, x = {}, inputs.astype(self.dtype)
    else:
      outputs = {name: value.astype(self.dtype) for name, value in inputs.items()}
      x = outputs[layers[start - 1].name]
    for layer in layers[start:end]:
      x = self._apply_layer(layer, x, outputs, train)
      outputs[layer.name] = x
    return x if stop is None else boundary_activations(layers, stop, outputs)

  def _apply_layer(self, layer, x, outputs, train):
    kind = layer.kind
    if kind == 'input':
      return x
    if kind == 'conv' and layer.kernel_size == 1 and layer.strides == 1:
      return PointwiseConv(layer.features, dtype=self.dtype, name=layer.name)(x)
    if kind == 'conv':
      return nn.Conv(layer.features, (layer.kernel_size,) * 2, strides=layer.strides,
                     padding='SAME', use_bias=False, dtype=self.dtype,
                     kernel_init=nn.initializers.glorot_uniform(), name=layer.name)(x)
    if kind == 'batch_norm':
      return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
                          epsilon=BATCH_NORM_EPSILON, dtype=self.dtype, name=layer.name)(x)
    if kind == 'relu6':
      return jnp.clip(x, 0, 6)
    if kind == 'pad':
      pads = correct_pad(x.shape[1:3], layer.kernel_size)
      return jnp.pad(x, ((0, 0), *pads, (0, 0)))
    if kind == 'depthwise':
      return DepthwiseConv2D(layer.kernel_size, layer.strides,
                             padding='SAME' if layer.strides == 1 else 'VALID',
                             implementation=self.depthwise_implementation, dtype=self.dtype,
                             name=layer.name)(x)
    if kind == 'add':
      return outputs[layer.residual] + x
    if kind == 'avg_pool':
      return jnp.mean(x, axis=(1, 2))
    if kind == 'max_pool':
      return jnp.max(x, axis=(1, 2))
    if kind == 'dense':
      logits = nn.Dense(layer.features, dtype=self.dtype, name=layer.name)(x)
      if self.classifier_activation == 'softmax':
        return nn.softmax(logits.astype(jnp.float32))
      return logits
    raise NotImplementedError(f'layer kind {kind!r} of {layer.name}')


def _check_images(images):
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'expected images of shape (batch, height, width, 3), got {images.shape}')
  if min(images.shape[1:3]) < MIN_INPUT_SIZE:
    raise ValueError(f'MobileNetV2 needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, '
                     f'got {images.shape[1]}x{images.shape[2]}')


def boundary_activations(layers, stop: int, outputs: dict) -> dict:
  """The outputs (by layer name) that layers `stop...` need: layer `stop - 1`'s and residuals'."""
  needed = {layers[stop - 1].name} | {layer.residual for layer in layers[stop:] if layer.residual}
  return {name: outputs[name] for name in needed if name in outputs}


def variable_shapes(alpha: float = 1.0, include_top: bool = True, pooling: Optional[str] = None,
                    classes: int = 1000) -> dict:
  """`jax.eval_shape(MobileNetV2(...).init, ...)` without tracing: shapes from the layer table."""
  params, batch_stats = {}, {}
  channels = 3

  def struct(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)

  for layer in layer_table.mobilenet_v2_layers(alpha, include_top, pooling, classes):
    k = layer.kernel_size
    if layer.kind == 'conv':
      params[layer.name] = {'kernel': struct(k, k, channels, layer.features)}
      channels = layer.features
    elif layer.kind == 'depthwise':
      params[layer.name] = {'kernel': struct(k, k, 1, channels)}
    elif layer.kind == 'batch_norm':
      params[layer.name] = {'scale': struct(channels), 'bias': struct(channels)}
      batch_stats[layer.name] = {'mean': struct(channels), 'var': struct(channels)}
    elif layer.kind == 'dense':
      params[layer.name] = {'kernel': struct(channels, layer.features),
                            'bias': struct(layer.features)}
      channels = layer.features
  return {'params': params, 'batch_stats': batch_stats}
