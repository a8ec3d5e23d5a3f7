"""The trained classifier as a Keras model: the backbone's Keras application (the same layers, by
name) and the head, with the fine-tuned weights written back (`to_keras_weights`, the inverse of
the weight port). It takes raw uint8 RGB images and outputs class probabilities.

Keras is an optional dependency (the `export` extra); it is imported when a model is built.
"""
import re

import numpy as np

from tlflax import backbones
from tlflax.errors import ConfigError, ExportError
from tlflax.weights.convert import to_keras_weights

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


def build(spec, args: dict, image_size: int, num_classes: int, dropout: float):
  """An untrained Keras classifier: uint8 images -> the backbone's preprocessing -> its Keras
  application (no top, average pooling, BatchNorm in inference mode) -> dropout -> dense
  softmax."""
  keras = _keras()
  inputs = keras.Input((image_size, image_size, 3), dtype='uint8', name='image')
  x = inputs
  for layer in spec.preprocessing.keras_layers(keras):
    x = layer(x)
  backbone = spec.keras_application(keras, input_shape=(image_size, image_size, 3),
                                    include_top=False, weights=None, pooling='avg', **args)
  x = backbone(x, training=False)
  x = keras.layers.Dropout(dropout, name='head_dropout')(x)
  outputs = keras.layers.Dense(num_classes, activation='softmax', name=HEAD_NAME)(x)
  return keras.Model(inputs, outputs, name='tlflax_classifier')


def backbone_of(model):
  """The Keras application inside `build`'s classifier (it keeps its own name: some applications,
  such as ConvNeXt, prefix their layer names with it)."""
  keras = _keras()
  return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def keras_classifier(classifier, variables: dict, image_size: int, num_classes: int,
                     sigmoid: bool):
  """`build`'s model for a `tlflax.classifier.Classifier` with its `variables`; every backbone
  layer with variables receives them."""
  spec = classifier.spec
  args = backbones.arguments(spec, classifier.backbone_args)
  model = build(spec, args, image_size, num_classes, classifier.dropout)
  backbone = backbone_of(model)
  params = variables['params']
  table = spec.layers(False, **args)
  weights = to_keras_weights({'params': params['backbone'],
                              'batch_stats': variables['batch_stats']['backbone']}, table)
  # Layer i of the table is Keras's layer i; Keras numbers automatically named layers per
  # session (`layer_normalization_1` in a second model), so names match up to that suffix.
  differing = [(ours.name, theirs.name) for ours, theirs in zip(table, backbone.layers)
               if not re.fullmatch(re.escape(re.sub(r'_\d+$', '', ours.name)) + r'(_\d+)?',
                                   theirs.name)]
  if len(table) != len(backbone.layers) or differing:
    raise ExportError(f'the trained backbone and Keras\'s {spec.name} differ in layers '
                      f'{differing[:8]} ({len(table)} and {len(backbone.layers)} layers)')
  keras_layers = {ours.name: theirs for ours, theirs in zip(table, backbone.layers)}
  head = model.get_layer(HEAD_NAME)
  try:
    for name, arrays in weights.items():
      layer = keras_layers[name]
      layer.set_weights(arrays)
      if hasattr(layer, 'finalize_state'):  # Normalization computes with copies made here
        layer.finalize_state()
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
