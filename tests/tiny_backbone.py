"""A complete backbone plug-in in one file: a tiny residual ConvNet, its Keras twin and its spec.

Importing it registers 'tiny_resnet'; a config file that imports it can set
`config.model.backbone = 'tiny_resnet'` (see tests/test_backbone_plugin.py).
"""
from tlflax import backbones
from tlflax.backbones.preprocessing import UNIT_RANGE

NAME = 'tiny_resnet'


def tiny_resnet_layers(include_top: bool, width: int = 8, classes: int = 10):
  """input -> 3x3/2 conv, BN, ReLU -> a residual block of two 3x3 convs -> 1x1 conv -> pooling."""
  table = backbones.TableBuilder()
  table.add('input_layer', 'input')
  table.add('stem_conv', 'conv', features=width, kernel_size=3, strides=2, use_bias=True)
  table.add('stem_bn', 'batch_norm')
  shortcut = table.add('stem_relu', 'activation', activation='relu')
  table.add('block_conv1', 'conv', features=width, kernel_size=3)
  table.add('block_bn1', 'batch_norm')
  table.add('block_relu1', 'activation', activation='relu')
  table.add('block_conv2', 'conv', features=width, kernel_size=3)
  residual = table.add('block_bn2', 'batch_norm')
  table.add('block_add', 'add', inputs=(shortcut, residual))
  table.add('block_out', 'activation', activation='relu')
  table.add('head_conv', 'conv', features=2 * width, use_bias=True, activation='relu')
  table.add('avg_pool', 'global_avg_pool')
  if include_top:
    table.add('predictions', 'dense', features=classes, activation='softmax')
  return table.layers()


def tiny_resnet_keras(keras, input_shape, include_top=True, weights=None, pooling=None,
                      classifier_activation='softmax', name=NAME, width: int = 8,
                      classes: int = 10):
  """The same network as a Keras functional model (what export builds)."""
  del weights, pooling  # random weights; always average pooling, as the table
  layers = keras.layers
  inputs = keras.Input(input_shape, name='input_layer')
  x = layers.Conv2D(width, 3, strides=2, padding='same', name='stem_conv')(inputs)
  x = layers.BatchNormalization(epsilon=1e-3, name='stem_bn')(x)
  shortcut = layers.Activation('relu', name='stem_relu')(x)
  x = layers.Conv2D(width, 3, padding='same', use_bias=False, name='block_conv1')(shortcut)
  x = layers.BatchNormalization(epsilon=1e-3, name='block_bn1')(x)
  x = layers.Activation('relu', name='block_relu1')(x)
  x = layers.Conv2D(width, 3, padding='same', use_bias=False, name='block_conv2')(x)
  x = layers.BatchNormalization(epsilon=1e-3, name='block_bn2')(x)
  x = layers.Add(name='block_add')([shortcut, x])
  x = layers.Activation('relu', name='block_out')(x)
  x = layers.Conv2D(2 * width, 1, activation='relu', name='head_conv')(x)
  x = layers.GlobalAveragePooling2D(name='avg_pool')(x)
  if include_top:
    x = layers.Dense(classes, activation=classifier_activation, name='predictions')(x)
  return keras.Model(inputs, x, name=name)


backbones.register(backbones.Backbone(
    name=NAME,
    layers=tiny_resnet_layers,
    keras_application=lambda keras, **settings: tiny_resnet_keras(keras, **settings),
    preprocessing=UNIT_RANGE,
    imagenet_weights=None,
    fine_tune_at='block_conv1',
    default_args={'width': 8},
    min_image_size=8,
))
