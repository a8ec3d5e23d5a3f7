"""The trained classifier as a Keras model: `keras.applications.MobileNetV2` (the same layers,
by name) and the head, with the fine-tuned weights written back (`to_keras_weights`, the inverse
of the weight port). It takes raw uint8 RGB images and outputs class probabilities.

Keras is an optional dependency (the `export` extra); it is imported when a model is built.
"""
import numpy as np

from tlflax.errors import ConfigError, ExportError
from tlflax.weights.convert import to_keras_weights

BACKBONE_NAME = 'mobilenetv2'
HEAD_NAME = 'probabilities'  # the dense layer of the head


def probability_head(kernel, bias, sigmoid: bool) -> tuple[np.ndarray, np.ndarray]:
  """Dense weights whose softmax gives the class probabilities. A softmax over [0, z] is
  [1 - sigmoid(z), sigmoid(z)], so the one-logit sigmoid head becomes a two-way softmax with a zero
  first column; a softmax head is kept as it is."""
  kernel, bias = np.asarray(kernel, np.float32), np.asarray(bias, np.float32)
  if not sigmoid:
    return kernel, bias
  return (np.concatenate([np.zeros_like(kernel), kernel], axis=1),
          np.concatenate([np.zeros_like(bias), bias]))


def _keras():
  try:
    import keras
  except ImportError as e:
    raise ConfigError('exporting to Keras or TFLite needs Keras: pip install -e ".[export]"') from e
  return keras


def check_backend():
  """`ConfigError` unless Keras runs on TensorFlow, which its TFLite exporter needs and with which
  its outputs are checked."""
  backend = _keras().backend.backend()
  if backend != 'tensorflow':
    raise ConfigError(f'export to Keras and TFLite needs Keras on TensorFlow; KERAS_BACKEND is '
                      f'{backend!r}: run with KERAS_BACKEND=tensorflow')


def build(alpha: float, image_size: int, num_classes: int, dropout: float):
  """An untrained Keras classifier: uint8 images -> scaling to [-1, 1] -> MobileNetV2 (no top,
  average pooling, BatchNorm in inference mode) -> dropout -> dense softmax."""
  keras = _keras()
  inputs = keras.Input((image_size, image_size, 3), dtype='uint8', name='image')
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name='scale_to_unit_range')(inputs)
  backbone = keras.applications.MobileNetV2(
      input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False, weights=None,
      pooling='avg', name=BACKBONE_NAME)
  x = backbone(x, training=False)
  x = keras.layers.Dropout(dropout, name='head_dropout')(x)
  outputs = keras.layers.Dense(num_classes, activation='softmax', name=HEAD_NAME)(x)
  return keras.Model(inputs, outputs, name='tlflax_classifier')


def keras_classifier(variables: dict, alpha: float, image_size: int, num_classes: int,
                     sigmoid: bool, dropout: float):
  """`build`'s model with the weights of a `tlflax.classifier.Classifier`'s variables; every
  backbone layer with variables receives them."""
  model = build(alpha, image_size, num_classes, dropout)
  backbone = model.get_layer(BACKBONE_NAME)
  params = variables['params']
  weights = to_keras_weights({'params': params['backbone'],
                              'batch_stats': variables['batch_stats']['backbone']})
  expecting = {layer.name for layer in backbone.layers if layer.weights}
  if set(weights) != expecting:
    raise ExportError(f'the trained backbone and Keras\'s MobileNetV2 differ in layers '
                      f'{sorted(set(weights) ^ expecting)[:8]}')
  head = model.get_layer(HEAD_NAME)
  try:
    for name, arrays in weights.items():
      backbone.get_layer(name).set_weights(arrays)
    head.set_weights(list(probability_head(params['head']['kernel'], params['head']['bias'],
                                           sigmoid)))
  except ValueError as e:  # a shape Keras's layer does not have
    raise ExportError(f'the trained weights do not fit Keras\'s model: {e}') from e
  return model


def load(path):
  """A saved `.keras` classifier, as a function of a uint8 image batch."""
  model = _keras().models.load_model(path)
  return lambda images: np.asarray(model.predict(np.asarray(images, np.uint8), verbose=0),
                                   np.float32)
