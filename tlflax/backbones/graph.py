"""`KerasGraph`: a Flax module that runs a Keras layer table, layer for layer.

Variables are keyed by Keras layer names (`params['Conv1']['kernel']`,
`batch_stats['bn_Conv1']['mean']`, ...), so Keras layer indices (as in "fine-tune from layer 100")
and weight files mean the same here as in Keras.
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from tlflax.backbones import kinds
from tlflax.backbones.layers import Layer, boundary_names, inputs_of


class KerasGraph(nn.Module):
  """A Keras application (or any network written as a `Layer` table) in Flax.

  Attributes:
    layers: the Keras layer table, in `model.layers` order.
    min_input_size: the smallest image side the network takes.
    classifier_activation: 'softmax' (as Keras) or None for logits from a top 'predictions' layer.
    depthwise_implementation: 'auto', 'grouped' or 'shifted' (see `tlflax.models.depthwise`).
    dtype: computation dtype; parameters stay float32.
  """
  layers: tuple[Layer, ...]
  min_input_size: int = 32
  classifier_activation: Optional[str] = 'softmax'
  depthwise_implementation: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, train: bool = False, *, start: int = 0, stop: Optional[int] = None):
    """Runs Keras layers `[start, stop)` of the network (all of them by default).

    From `start=0`, `inputs` are NHWC images, preprocessed as the backbone expects; from a later
    `start`, they are the `boundary_activations` that `stop=start` returned. With `stop`, the
    result is those boundary activations: the output of layer `stop - 1` and every earlier output
    that a layer at or after `stop` still takes, keyed by layer name.

    `train` is Keras's `training` argument for BatchNorm: False (the default, and what transfer
    learning wants) normalizes with the moving statistics; True uses batch statistics and updates
    the `batch_stats` collection, which must then be mutable. Dropout and stochastic depth inside
    the backbone are always off.
    """
    layers = self.layers
    end = len(layers) if stop is None else stop
    if not (0 <= start <= end <= len(layers) and end >= 1):
      raise ValueError(f'need 0 <= start <= stop <= {len(layers)} and stop >= 1, '
                       f'got start={start}, stop={stop}')
    if self.classifier_activation not in (None, 'softmax'):
      raise ValueError("classifier_activation must be 'softmax' or None, "
                       f'got {self.classifier_activation!r}')
    context = kinds.Context(train, self.dtype, self.depthwise_implementation,
                            self.classifier_activation)
    if start == 0:
      self._check_images(inputs)
      outputs, x = {}, inputs.astype(self.dtype)
    else:
      outputs = {name: value.astype(self.dtype) for name, value in inputs.items()}
      x = outputs[layers[start - 1].name]
    for layer in layers[start:end]:
      taken = [outputs[name] for name in layer.inputs] or [x]
      x = kinds.KINDS[layer.kind].apply(layer, taken, context)
      outputs[layer.name] = x
    return x if stop is None else boundary_activations(layers, end, outputs)

  def _check_images(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected images of shape (batch, height, width, 3), got {images.shape}')
    if min(images.shape[1:3]) < self.min_input_size:
      raise ValueError(f'this backbone needs inputs of at least {self.min_input_size}x'
                       f'{self.min_input_size}, got {images.shape[1]}x{images.shape[2]}')


def boundary_activations(layers: Sequence[Layer], stop: int, outputs: dict) -> dict:
  """The outputs (by layer name) that layers `stop...` need (see `boundary_names`)."""
  return {name: outputs[name] for name in boundary_names(layers, stop) if name in outputs}


def variable_shapes(layers: Sequence[Layer]) -> dict:
  """`jax.eval_shape(KerasGraph(layers).init, ...)` without tracing: `{'params', 'batch_stats'}`
  shapes from the table's slots."""
  variables = {'params': {}, 'batch_stats': {}}
  for name, slots in slots_by_layer(layers).items():
    for slot in slots:
      variables[slot.collection].setdefault(name, {})[slot.flax_name] = (
          jax.ShapeDtypeStruct(slot.shape, jnp.float32))
  return variables


def slots_by_layer(layers: Sequence[Layer]) -> dict[str, tuple[kinds.Slot, ...]]:
  """Each layer with variables, by name: its slots (in Keras `get_weights()` order)."""
  found, channels = {}, {}
  for layer in layers:
    taken = inputs_of(layers, layer)
    in_channels = channels[taken[0]] if taken else 3
    slots = kinds.slots_of(layer, in_channels)
    if slots:
      found[layer.name] = slots
    channels[layer.name] = kinds.out_channels(layer, in_channels)
  return found
