"""MobileNetV2 (`keras.applications.MobileNetV2`): the tutorial's backbone.

Inverted residual blocks of 1x1 expansion, 3x3 depthwise and 1x1 projection convolutions, each
followed by BatchNorm (epsilon 1e-3, momentum 0.999) and ReLU6 but the projection; inputs in
[-1, 1]. `alpha` scales the widths; Keras publishes ImageNet weights for six alphas at five sizes.
"""
from tlflax.backbones.layers import TableBuilder
from tlflax.backbones.preprocessing import UNIT_RANGE
from tlflax.backbones.registry import Backbone, WeightsFile, register

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
WEIGHTS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/'
KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
KERAS_SIZES = (96, 128, 160, 192, 224)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Keras's channel rounding: nearest multiple of `divisor`, never below 90% of `value`."""
  new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


def mobilenet_v2_layers(include_top: bool = True, alpha: float = 1.0, classes: int = 1000):
  """The layers of `keras.applications.MobileNetV2(alpha, include_top, pooling='avg')`.

  Names of Keras's automatically named layers (`input_layer`, `global_average_pooling2d`, ...) are
  given without the `_N` suffix Keras adds when several models exist in one session.
  """
  if alpha <= 0:
    raise ValueError(f'alpha must be positive, got {alpha}')
  table = TableBuilder()
  add = table.add
  add('input_layer', 'input')
  channels = make_divisible(32 * alpha)
  bn = dict(epsilon=1e-3, momentum=0.999)
  add('Conv1', 'conv', features=channels, kernel_size=3, strides=2)
  add('bn_Conv1', 'batch_norm', **bn)
  add('Conv1_relu', 'activation', activation='relu6')
  for block_id, (expansion, filters, strides) in enumerate(INVERTED_RESIDUAL_BLOCKS):
    block_input = table.last
    out_channels = make_divisible(int(filters * alpha))
    if block_id:
      prefix = f'block_{block_id}_'
      add(prefix + 'expand', 'conv', features=expansion * channels)
      add(prefix + 'expand_BN', 'batch_norm', **bn)
      add(prefix + 'expand_relu', 'activation', activation='relu6')
    else:
      prefix = 'expanded_conv_'
    if strides == 2:
      add(prefix + 'pad', 'correct_pad', kernel_size=3)
    add(prefix + 'depthwise', 'depthwise', kernel_size=3, strides=strides,
        padding='same' if strides == 1 else 'valid')
    add(prefix + 'depthwise_BN', 'batch_norm', **bn)
    add(prefix + 'depthwise_relu', 'activation', activation='relu6')
    add(prefix + 'project', 'conv', features=out_channels)
    project = add(prefix + 'project_BN', 'batch_norm', **bn)
    if channels == out_channels and strides == 1:
      add(prefix + 'add', 'add', inputs=(block_input, project))
    channels = out_channels
  # As in the paper and Keras, alpha < 1 does not shrink the last convolution.
  add('Conv_1', 'conv', features=make_divisible(1280 * alpha) if alpha > 1.0 else 1280)
  add('Conv_1_bn', 'batch_norm', **bn)
  add('out_relu', 'activation', activation='relu6')
  add('global_average_pooling2d', 'global_avg_pool')
  if include_top:
    add('predictions', 'dense', features=classes, activation='softmax')
  return table.layers()


def imagenet_weights(include_top: bool, input_size: int, alpha: float = 1.0) -> WeightsFile:
  """Keras's file for `alpha` (it falls back to the 224 file for sizes it has none for)."""
  if alpha not in KERAS_ALPHAS:
    raise ValueError(f'Keras publishes ImageNet MobileNetV2 weights for alpha in {KERAS_ALPHAS}, '
                     f'not {alpha}')
  if include_top and input_size != 224:
    raise ValueError('ImageNet weights with the classifier top need 224x224 inputs, '
                     f'got {input_size}')
  rows = input_size if input_size in KERAS_SIZES else 224
  suffix = '' if include_top else '_no_top'
  filename = f'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}{suffix}.h5'
  return WeightsFile(WEIGHTS_URL + filename, filename)


def _read_tflite(path, alpha: float = 1.0):
  from tlflax.weights.tflite import read_tflite  # the flatbuffer schema, only when asked for
  return read_tflite(path, mobilenet_v2_layers(True, alpha))


MOBILENET_V2 = register(Backbone(
    name='mobilenet_v2',
    layers=mobilenet_v2_layers,
    keras_application=lambda keras, **settings: keras.applications.MobileNetV2(**settings),
    preprocessing=UNIT_RANGE,
    imagenet_weights=imagenet_weights,
    fine_tune_at='block_11_expand_relu',  # index 100 at every alpha, as in the tutorial
    default_args={'alpha': 1.0},
    weight_readers={'.tflite': _read_tflite},
))
