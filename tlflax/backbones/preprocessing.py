"""A backbone's input preprocessing outside the network: float [0, 255] RGB -> what it takes.

Keras applications preprocess in one of three ways: 'tf' mode (`x / 127.5 - 1`: MobileNetV2,
ResNetV2), 'caffe' mode (RGB -> BGR, minus the ImageNet mean: ResNet), or inside the network
(Rescaling / Normalization layers: EfficientNet, MobileNetV3, ConvNeXt), where nothing is left to
do outside. `Preprocessing` covers all three with the same operations, in Keras's order, on
`tf.Tensor`s (the input pipeline), jax and numpy arrays (on-device feeds, export) alike.
"""
import dataclasses
from typing import Union

import numpy as np


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """`image[..., ::-1]` if `bgr`, then `/ divisor`, then `+ offset` (one value or per channel)."""
  divisor: float = 1.0
  offset: Union[float, tuple[float, float, float]] = 0.0
  bgr: bool = False

  def __call__(self, image):
    """Preprocesses float images in [0, 255] (channels last): tf, jax or numpy."""
    if self.bgr:
      image = image[..., ::-1]
    if self.divisor != 1.0:
      image = image / self.divisor
    if np.any(np.asarray(self.offset) != 0):
      image = image + np.asarray(self.offset, np.float32)
    return image

  def description(self) -> str:
    """In words, e.g. 'RGB -> BGR, then + (-103.939, -116.779, -123.68)'."""
    steps = ['RGB -> BGR'] if self.bgr else []
    if self.divisor != 1.0:
      steps.append(f'/ {self.divisor:g}')
    if np.any(np.asarray(self.offset) != 0):
      steps.append(f'+ {self.offset}')
    return ', then '.join(steps) or 'nothing outside the network (it has its own layers)'

  def keras_layers(self, keras) -> list:
    """The same as Keras layers, for an exported model that takes uint8 images: a Rescaling
    (which also casts), and for BGR a fixed 1x1 convolution that reorders the channels."""
    offset = self.offset if isinstance(self.offset, float) else list(self.offset)
    if not self.bgr:
      return [keras.layers.Rescaling(1.0 / self.divisor, offset=offset, name='preprocessing')]
    reorder = np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3)
    bias = np.broadcast_to(np.asarray(self.offset, np.float32), (3,))
    return [keras.layers.Rescaling(1.0 / self.divisor, name='preprocessing_scale'),
            keras.layers.Conv2D(3, 1, name='preprocessing_bgr', trainable=False,
                                kernel_initializer=keras.initializers.Constant(reorder),
                                bias_initializer=keras.initializers.Constant(bias))]


UNIT_RANGE = Preprocessing(divisor=127.5, offset=-1.0)  # Keras 'tf' mode: [-1, 1]
CAFFE = Preprocessing(offset=(-103.939, -116.779, -123.68), bgr=True)  # Keras 'caffe' mode
INSIDE_THE_NETWORK = Preprocessing()  # the network's own Rescaling/Normalization layers
