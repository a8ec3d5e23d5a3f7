"""ResNet V1 and V2 (`keras.applications.ResNet50/101/152` and `ResNet50V2/101V2/152V2`).

Both are four stages of bottleneck blocks (1x1, 3x3 and 4x-wider 1x1 convolutions; BatchNorm
epsilon 1.001e-5) after a 7x7 stride-2 convolution and a 3x3 max pool, and differ in their blocks:
V1 normalizes after each convolution (all with biases) and adds before a ReLU, takes caffe inputs
(BGR minus the ImageNet mean) and strides in the first block of every stage after the first; V2
(pre-activation) normalizes each block's input, adds the bare convolution output, ends with
'post_bn'/'post_relu', takes inputs in [-1, 1] and strides in the last block of every stage but
the last, whose shortcut is then a 1x1 stride-2 max pool. Keras builds both with one function
(`resnet.ResNet(preact=...)`), as here.

Keras lists a block's shortcut layers ('_0_conv', '_0_bn' or the max pool) among the last layers
of its main path, by their distance to the block's 'add': `_0_conv, _3_conv, _0_bn, _3_bn`.
"""
from typing import Callable

from tlflax.backbones.layers import TableBuilder
from tlflax.backbones.preprocessing import CAFFE, UNIT_RANGE
from tlflax.backbones.registry import Backbone, WeightsFile, register

WEIGHTS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/resnet/'
BATCH_NORM = dict(epsilon=1.001e-5)
STAGE_FILTERS = (64, 128, 256, 512)  # bottleneck widths; blocks output 4x as many channels

# Per depth: blocks per stage, and the block where tutorial-style fine-tuning starts: the conv4
# block that starts nearest 65% of the layers, as the MobileNetV2 tutorial's layer 100 of 155.
# Index of its first layer in the table without the top (V1 / V2): 50: 113 of 176 / 120 of 191;
# 101: 223 of 346 / 241 of 378; 152: 333 of 516 / 362 of 565.
DEPTHS = {
    50: ((3, 4, 6, 3), 'conv4_block4'),
    101: ((3, 4, 23, 3), 'conv4_block15'),
    152: ((3, 8, 36, 3), 'conv4_block22'),
}

# Keras's md5 hashes of its downloads (`WEIGHTS_HASHES` in keras/src/applications/resnet.py):
# (with the top, without).
WEIGHTS_HASHES = {
    'resnet50': ('2cb95161c43110f7111970584f804107', '4d473c1dd8becc155b73f8504c6f6626'),
    'resnet101': ('f1aeb4b969a6efcfb50fad2f0c20cfc5', '88cf7a10940856eca736dc7b7e228a21'),
    'resnet152': ('100835be76be38e30d865e96f2aaae62', 'ee4c566cf9a93f14d82f913c2dc6dd0c'),
    'resnet50v2': ('3ef43a0b657b3be2300d5770ece849e0', 'fac2f116257151a9d068a22e544a4917'),
    'resnet101v2': ('6343647c601c52e1368623803854d971', 'c0ed64b8031c3730f411d2eb4eea35b5'),
    'resnet152v2': ('a49b44d1979771252814e80f8ec446f9', 'ed17cf2e0169df9d443503ef94b23b33'),
}


def _conv(table: TableBuilder, name: str, features: int, kernel_size: int = 1, strides: int = 1,
          padding: str = 'valid', use_bias: bool = True, inputs=None) -> str:
  """A Keras `Conv2D` (valid padding and a bias unless told otherwise)."""
  taken = {} if inputs is None else {'inputs': (inputs,)}
  return table.add(name, 'conv', features=features, kernel_size=kernel_size, strides=strides,
                   padding=padding, use_bias=use_bias, **taken)


def residual_block_v1(table: TableBuilder, filters: int, strides: int, conv_shortcut: bool,
                      name: str):
  """Keras `residual_block_v1`: conv-BN-ReLU twice, conv-BN, plus the shortcut, then ReLU."""
  block_input = table.last
  _conv(table, f'{name}_1_conv', filters, strides=strides)
  table.add(f'{name}_1_bn', 'batch_norm', **BATCH_NORM)
  table.add(f'{name}_1_relu', 'activation', activation='relu')
  _conv(table, f'{name}_2_conv', filters, kernel_size=3, padding='same')
  table.add(f'{name}_2_bn', 'batch_norm', **BATCH_NORM)
  main = table.add(f'{name}_2_relu', 'activation', activation='relu')
  shortcut = block_input
  if conv_shortcut:
    shortcut = _conv(table, f'{name}_0_conv', 4 * filters, strides=strides, inputs=block_input)
  main = _conv(table, f'{name}_3_conv', 4 * filters, inputs=main)
  if conv_shortcut:
    shortcut = table.add(f'{name}_0_bn', 'batch_norm', inputs=(shortcut,), **BATCH_NORM)
  main = table.add(f'{name}_3_bn', 'batch_norm', inputs=(main,), **BATCH_NORM)
  table.add(f'{name}_add', 'add', inputs=(shortcut, main))
  table.add(f'{name}_out', 'activation', activation='relu')


def stack_v1(table: TableBuilder, filters: int, blocks: int, strides: int, name: str):
  """Keras `stack_residual_blocks_v1`: the first block strides and has a conv shortcut."""
  residual_block_v1(table, filters, strides, True, f'{name}_block1')
  for i in range(2, blocks + 1):
    residual_block_v1(table, filters, 1, False, f'{name}_block{i}')


def residual_block_v2(table: TableBuilder, filters: int, strides: int, conv_shortcut: bool,
                      name: str):
  """Keras `residual_block_v2`: BN-ReLU of the input, then conv-BN-ReLU twice (the 3x3 one
  strided) and a conv, plus the shortcut (a conv of the activated input, a stride-`strides` 1x1
  max pool of the input, or the input)."""
  block_input = table.last
  table.add(f'{name}_preact_bn', 'batch_norm', **BATCH_NORM)
  preact = table.add(f'{name}_preact_relu', 'activation', activation='relu')
  _conv(table, f'{name}_1_conv', filters, use_bias=False)
  table.add(f'{name}_1_bn', 'batch_norm', **BATCH_NORM)
  table.add(f'{name}_1_relu', 'activation', activation='relu')
  table.add(f'{name}_2_pad', 'pad', padding=((1, 1), (1, 1)))
  _conv(table, f'{name}_2_conv', filters, kernel_size=3, strides=strides, use_bias=False)
  table.add(f'{name}_2_bn', 'batch_norm', **BATCH_NORM)
  main = table.add(f'{name}_2_relu', 'activation', activation='relu')
  shortcut = block_input
  if conv_shortcut:
    shortcut = _conv(table, f'{name}_0_conv', 4 * filters, strides=strides, inputs=preact)
  elif strides > 1:
    shortcut = table.add(_keras_auto_name(table, 'max_pooling2d'), 'max_pool', kernel_size=1,
                         strides=strides, padding='valid', inputs=(block_input,))
  main = _conv(table, f'{name}_3_conv', 4 * filters, inputs=main)
  table.add(f'{name}_out', 'add', inputs=(shortcut, main))


def stack_v2(table: TableBuilder, filters: int, blocks: int, strides: int, name: str):
  """Keras `stack_residual_blocks_v2`: the first block has a conv shortcut, the last strides."""
  residual_block_v2(table, filters, 1, True, f'{name}_block1')
  for i in range(2, blocks):
    residual_block_v2(table, filters, 1, False, f'{name}_block{i}')
  residual_block_v2(table, filters, strides, False, f'{name}_block{blocks}')


def _keras_auto_name(table: TableBuilder, base: str) -> str:
  """The name Keras gives the next unnamed layer of a class in a fresh session: `base`, then
  `base_1`, `base_2`, ..."""
  taken = sum(spec['name'] == base or spec['name'].startswith(base + '_')
              for spec in table.specs)
  return f'{base}_{taken}' if taken else base


def resnet_layers(include_top: bool = True, depth: int = 50, preact: bool = False,
                  classes: int = 1000):
  """The layers of Keras's `ResNet{depth}` (`preact=False`) or `ResNet{depth}V2` (`preact=True`)
  with `include_top`, or with `pooling='avg'` without it (Keras `resnet.ResNet`).

  Keras's automatically named layers (`input_layer`, `max_pooling2d`, ...) have the names of a
  fresh Keras session.
  """
  if depth not in DEPTHS:
    raise ValueError(f'ResNet depth must be one of {tuple(DEPTHS)}, got {depth}')
  stack = stack_v2 if preact else stack_v1
  table = TableBuilder()
  add = table.add
  add('input_layer', 'input')
  add('conv1_pad', 'pad', padding=((3, 3), (3, 3)))
  _conv(table, 'conv1_conv', 64, kernel_size=7, strides=2)
  if not preact:
    add('conv1_bn', 'batch_norm', **BATCH_NORM)
    add('conv1_relu', 'activation', activation='relu')
  add('pool1_pad', 'pad', padding=((1, 1), (1, 1)))
  add('pool1_pool', 'max_pool', kernel_size=3, strides=2, padding='valid')
  blocks_per_stage, _ = DEPTHS[depth]
  for stage, (filters, blocks) in enumerate(zip(STAGE_FILTERS, blocks_per_stage)):
    # V1 strides in every stage but the first (after the max pool), V2 in every stage but the last.
    strides = 1 if stage == (3 if preact else 0) else 2
    stack(table, filters, blocks, strides, f'conv{stage + 2}')
  if preact:
    add('post_bn', 'batch_norm', **BATCH_NORM)
    add('post_relu', 'activation', activation='relu')
  add('avg_pool', 'global_avg_pool')
  if include_top:
    add('predictions', 'dense', features=classes, activation='softmax')
  return table.layers()


def _imagenet_weights(weights_name: str) -> Callable[..., WeightsFile]:
  def imagenet_weights(include_top: bool, input_size: int) -> WeightsFile:
    """Keras's file (one per model; without the top it fits any input size)."""
    if include_top and input_size != 224:
      raise ValueError('ImageNet weights with the classifier top need 224x224 inputs, '
                       f'got {input_size}')
    suffix = '' if include_top else '_notop'
    filename = f'{weights_name}_weights_tf_dim_ordering_tf_kernels{suffix}.h5'
    with_top, without_top = WEIGHTS_HASHES[weights_name]
    return WeightsFile(WEIGHTS_URL + filename, filename, with_top if include_top else without_top)
  return imagenet_weights


def _register(depth: int, preact: bool) -> Backbone:
  version = 'V2' if preact else ''
  _, fine_tune_block = DEPTHS[depth]
  return register(Backbone(
      name=f'resnet{depth}_v2' if preact else f'resnet{depth}',
      layers=lambda include_top: resnet_layers(include_top, depth, preact),
      keras_application=lambda keras, **settings: getattr(
          keras.applications, f'ResNet{depth}{version}')(**settings),
      preprocessing=UNIT_RANGE if preact else CAFFE,
      imagenet_weights=_imagenet_weights(f'resnet{depth}{version.lower()}'),
      fine_tune_at=f'{fine_tune_block}_preact_bn' if preact else f'{fine_tune_block}_1_conv',
  ))


RESNETS = {(depth, preact): _register(depth, preact)
           for preact in (False, True) for depth in DEPTHS}
