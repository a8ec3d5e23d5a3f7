"""MobileNetV3 Small and Large (`keras.applications.MobileNetV3Small` / `MobileNetV3Large`).

Inverted residual blocks as MobileNetV2's (1x1 expansion, depthwise, 1x1 projection, BatchNorm
with epsilon 1e-3 and momentum 0.999), some with squeeze-and-excite, activated by ReLU or
hard-swish. The network rescales [0, 255] inputs itself (a `Rescaling` layer). `minimalistic`
models drop squeeze-and-excite, hard-swish and 5x5 kernels. Keras publishes ImageNet weights for
alpha 0.75 and 1.0, and for alpha 1.0 minimalistic, all trained at 224x224.

Keras's `hard_sigmoid` is `ReLU(6.0)(x + 3.0) * (1.0 / 6.0)`: the addition and the product are
operations, not layers, so `model.layers` holds only the ReLU; its table layer computes all three
(the 'hard_sigmoid' activation, the same operations in the same order).
"""
import collections

from tlflax.backbones.layers import TableBuilder
from tlflax.backbones.mobilenet_v2 import make_divisible
from tlflax.backbones.preprocessing import INSIDE_THE_NETWORK
from tlflax.backbones.registry import Backbone, WeightsFile, register

# The blocks of Keras's `stack_fn`s, numbered from 0: (expansion, output filters before alpha,
# kernel size, stride, squeeze-and-excite, activation). MODEL stands for the model's own choice:
# a 5x5 kernel and hard-swish, or a 3x3 kernel and ReLU when minimalistic; squeeze-and-excite
# (True) is dropped when minimalistic.
MODEL = 'model'
SMALL_BLOCKS = (
    (1, 16, 3, 2, True, 'relu'),
    (72.0 / 16, 24, 3, 2, False, 'relu'),
    (88.0 / 24, 24, 3, 1, False, 'relu'),
    (4, 40, MODEL, 2, True, MODEL),
    (6, 40, MODEL, 1, True, MODEL),
    (6, 40, MODEL, 1, True, MODEL),
    (3, 48, MODEL, 1, True, MODEL),
    (3, 48, MODEL, 1, True, MODEL),
    (6, 96, MODEL, 2, True, MODEL),
    (6, 96, MODEL, 1, True, MODEL),
    (6, 96, MODEL, 1, True, MODEL),
)
LARGE_BLOCKS = (
    (1, 16, 3, 1, False, 'relu'),
    (4, 24, 3, 2, False, 'relu'),
    (3, 24, 3, 1, False, 'relu'),
    (3, 40, MODEL, 2, True, 'relu'),
    (3, 40, MODEL, 1, True, 'relu'),
    (3, 40, MODEL, 1, True, 'relu'),
    (6, 80, 3, 2, False, MODEL),
    (2.5, 80, 3, 1, False, MODEL),
    (2.3, 80, 3, 1, False, MODEL),
    (2.3, 80, 3, 1, False, MODEL),
    (6, 112, 3, 1, True, MODEL),
    (6, 112, 3, 1, True, MODEL),
    (6, 160, MODEL, 2, True, MODEL),
    (6, 160, MODEL, 1, True, MODEL),
    (6, 160, MODEL, 1, True, MODEL),
)
LAST_POINT_CHANNELS = {'small': 1024, 'large': 1280}  # of the top's `conv_2`
SQUEEZE_EXCITE_RATIO = 0.25
WEIGHTS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/'
# Keras's WEIGHTS_HASHES: (with the top, without) md5s per model name.
WEIGHTS_HASHES = {
    'large_224_0.75_float': ('765b44a33ad4005b3ac83185abf1d0eb',
                             '40af19a13ebea4e2ee0c676887f69a2e'),
    'large_224_1.0_float': ('59e551e166be033d707958cf9e29a6a7',
                            '07fb09a5933dd0c8eaafa16978110389'),
    'large_minimalistic_224_1.0_float': ('675e7b876c45c57e9e63e6d90a36599c',
                                         'ec5221f64a2f6d1ef965a614bdae7973'),
    'small_224_0.75_float': ('cb65d4e5be93758266aa0a7f2c6708b7',
                             'ebdb5cc8e0b497cd13a7c275d475c819'),
    'small_224_1.0_float': ('8768d4c2e7dee89b9d02b2d03d65d862',
                            'd3e8ec802a04aa4fc771ee12a9a9b836'),
    'small_minimalistic_224_1.0_float': ('99cd97fb2fcdad2bf028eb838de69e37',
                                         'cde8136e733e811080d9fcd8a252f7e4'),
}




class _AutoNames:
  """The names Keras gives unnamed layers in a fresh session: 're_lu', 're_lu_1', ..."""

  def __init__(self):
    self.counts = collections.Counter()

  def __call__(self, prefix: str) -> str:
    n = self.counts[prefix]
    self.counts[prefix] += 1
    return f'{prefix}_{n}' if n else prefix


def mobilenet_v3_layers(model_type: str, include_top: bool = True, alpha: float = 1.0,
                        minimalistic: bool = False, classes: int = 1000):
  """The layers of `keras.applications.MobileNetV3<model_type>(alpha, minimalistic,
  include_top, pooling='avg')`.

  Keras numbers its automatically named layers (`re_lu_3`, `activation_7`, ...) as in a fresh
  session; it adds to those numbers when several models exist in one session.
  """
  if alpha <= 0:
    raise ValueError(f'alpha must be positive, got {alpha}')
  table = TableBuilder()
  add, auto = table.add, _AutoNames()
  model_kernel = 3 if minimalistic else 5
  model_activation = 'relu' if minimalistic else 'hard_swish'
  bn = dict(epsilon=1e-3, momentum=0.999)

  def activate(activation):
    if activation == 'relu':
      return add(auto('re_lu'), 'activation', activation='relu')
    return add(auto('activation'), 'activation', activation='hard_swish')

  def squeeze_excite(filters, prefix):
    block_input = table.last
    add(prefix + 'squeeze_excite_avg_pool', 'global_avg_pool', keepdims=True)
    add(prefix + 'squeeze_excite_conv', 'conv',
        features=make_divisible(filters * SQUEEZE_EXCITE_RATIO), use_bias=True)
    add(prefix + 'squeeze_excite_relu', 'activation', activation='relu')
    add(prefix + 'squeeze_excite_conv_1', 'conv', features=filters, use_bias=True)
    gate = add(auto('re_lu'), 'activation', activation='hard_sigmoid')  # see the module doc
    add(prefix + 'squeeze_excite_mul', 'multiply', inputs=(block_input, gate))

  add(auto('input_layer'), 'input')
  add(auto('rescaling'), 'rescaling', scale=(1.0 / 127.5,), offset=(-1.0,))
  add('conv', 'conv', features=16, kernel_size=3, strides=2)
  add('conv_bn', 'batch_norm', **bn)
  activate(model_activation)
  channels = 16
  blocks = {'Small': SMALL_BLOCKS, 'Large': LARGE_BLOCKS}[model_type]
  for block_id, (expansion, filters, kernel, strides, se, activation) in enumerate(blocks):
    kernel = model_kernel if kernel == MODEL else kernel
    activation = model_activation if activation == MODEL else activation
    block_input = table.last
    out_channels = make_divisible(filters * alpha)
    expanded = make_divisible(channels * expansion)
    if block_id:
      prefix = f'expanded_conv_{block_id}_'
      add(prefix + 'expand', 'conv', features=expanded)
      add(prefix + 'expand_bn', 'batch_norm', **bn)
      activate(activation)
    else:
      prefix = 'expanded_conv_'
    if strides == 2:
      add(prefix + 'depthwise_pad', 'correct_pad', kernel_size=kernel)
    add(prefix + 'depthwise', 'depthwise', kernel_size=kernel, strides=strides,
        padding='same' if strides == 1 else 'valid')
    add(prefix + 'depthwise_bn', 'batch_norm', **bn)
    activate(activation)
    if se and not minimalistic:
      squeeze_excite(expanded, prefix)
    add(prefix + 'project', 'conv', features=out_channels)
    project = add(prefix + 'project_bn', 'batch_norm', **bn)
    if strides == 1 and channels == out_channels:
      add(prefix + 'add', 'add', inputs=(block_input, project))
    channels = out_channels
  add('conv_1', 'conv', features=make_divisible(channels * 6))
  add('conv_1_bn', 'batch_norm', **bn)
  activate(model_activation)
  if include_top:
    last_point_channels = LAST_POINT_CHANNELS[model_type.lower()]
    if alpha > 1.0:  # as in Keras, alpha < 1 does not shrink the top
      last_point_channels = make_divisible(last_point_channels * alpha)
    add(auto('global_average_pooling2d'), 'global_avg_pool', keepdims=True)
    add('conv_2', 'conv', features=last_point_channels, use_bias=True)
    activate(model_activation)
    add(auto('dropout'), 'dropout')
    add('logits', 'conv', features=classes, use_bias=True)
    add(auto('flatten'), 'flatten')
    add('predictions', 'classifier_activation')
  else:
    add('avg_pool', 'global_avg_pool')
  return table.layers()


def _imagenet_weights(model_type: str):
  def imagenet_weights(include_top: bool, input_size: int, alpha: float = 1.0,
                       minimalistic: bool = False) -> WeightsFile:
    """Keras's file (trained at 224; Keras loads it for every input size, top or not)."""
    if alpha not in ((1.0,) if minimalistic else (0.75, 1.0)):
      raise ValueError('Keras publishes ImageNet MobileNetV3 weights for alpha 0.75 and 1.0, '
                       f'and 1.0 only when minimalistic; got alpha={alpha}, '
                       f'minimalistic={minimalistic}')
    model_name = f'{model_type}{"_minimalistic" if minimalistic else ""}_224_{float(alpha)}_float'
    with_top, without_top = WEIGHTS_HASHES[model_name]
    if include_top:
      filename, file_hash = f'weights_mobilenet_v3_{model_name}.h5', with_top
    else:
      filename, file_hash = f'weights_mobilenet_v3_{model_name}_no_top_v2.h5', without_top
    return WeightsFile(WEIGHTS_URL + filename, filename, file_hash)
  return imagenet_weights


def _member(model_type: str, fine_tune_at: str) -> Backbone:
  constructor = f'MobileNetV3{model_type}'
  return register(Backbone(
      name=f'mobilenet_v3_{model_type.lower()}',
      layers=lambda include_top, **args: mobilenet_v3_layers(model_type, include_top, **args),
      keras_application=lambda keras, **settings: getattr(keras.applications, constructor)(
          **settings),
      preprocessing=INSIDE_THE_NETWORK,
      imagenet_weights=_imagenet_weights(model_type.lower()),
      fine_tune_at=fine_tune_at,
      default_args={'alpha': 1.0, 'minimalistic': False},
  ))


# The tutorial fine-tunes MobileNetV2's last 35% of layers (from index 100 of 155); here, the
# block whose first layer is nearest that depth (default args, without the top). Small: block 8,
# which starts the last stage (96 channels), index 109 of 158 (last 31%; minimalistic 73 of 104).
# Large: block 11, the second of the 112-channel stage, index 124 of 188 (last 34%; minimalistic
# 100 of 140).
MOBILENET_V3_SMALL = _member('Small', fine_tune_at='expanded_conv_8_expand')
MOBILENET_V3_LARGE = _member('Large', fine_tune_at='expanded_conv_11_expand')
