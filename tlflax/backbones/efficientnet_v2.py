"""EfficientNetV2 B0-B3, S, M and L (`keras.applications.EfficientNetV2B0`, ...).

A 3x3 stem, then stages of Fused-MBConv blocks (one regular convolution that expands, a 1x1
projection) and MBConv blocks (1x1 expansion, depthwise convolution, squeeze-excite, 1x1
projection), all with BatchNorm (epsilon 1e-3, momentum 0.9) and swish; a block whose input and
output match adds its input back after drop-connect (a Keras `Dropout`, an identity here, as in
inference). Preprocessing is inside the network: B0-B3 rescale to [0, 1] and normalize with the
ImageNet mean and standard deviation, S, M and L rescale to [-1, 1).
"""
from typing import NamedTuple

from tlflax.backbones.efficientnet import add_top, round_repeats
from tlflax.backbones.layers import TableBuilder
from tlflax.backbones.preprocessing import INSIDE_THE_NETWORK
from tlflax.backbones.registry import Backbone, WeightsFile, register

WEIGHTS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/'
BATCH_NORM = dict(epsilon=1e-3, momentum=0.9)
KERNEL_SIZE = 3  # of every block in Keras's default block arguments
DROP_CONNECT_RATE = 0.2
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # B0-B3's built-in Normalization, on [0, 1] inputs
IMAGENET_STD = (0.229, 0.224, 0.225)


class Stage(NamedTuple):
  """One entry of Keras's `DEFAULT_BLOCKS_ARGS`: `repeats` blocks, the first with `strides`."""
  fused: bool  # Keras's conv_type 1 (Fused-MBConv) rather than 0 (MBConv)
  repeats: int
  input_filters: int
  output_filters: int
  expand_ratio: int
  se_ratio: float
  strides: int


B_STAGES = (  # efficientnetv2-b0 to -b3 (scaled by their width and depth coefficients)
    Stage(True, 1, 32, 16, 1, 0, 1),
    Stage(True, 2, 16, 32, 4, 0, 2),
    Stage(True, 2, 32, 48, 4, 0, 2),
    Stage(False, 3, 48, 96, 4, 0.25, 2),
    Stage(False, 5, 96, 112, 6, 0.25, 1),
    Stage(False, 8, 112, 192, 6, 0.25, 2),
)
S_STAGES = (
    Stage(True, 2, 24, 24, 1, 0, 1),
    Stage(True, 4, 24, 48, 4, 0, 2),
    Stage(True, 4, 48, 64, 4, 0, 2),
    Stage(False, 6, 64, 128, 4, 0.25, 2),
    Stage(False, 9, 128, 160, 6, 0.25, 1),
    Stage(False, 15, 160, 256, 6, 0.25, 2),
)
M_STAGES = (
    Stage(True, 3, 24, 24, 1, 0, 1),
    Stage(True, 5, 24, 48, 4, 0, 2),
    Stage(True, 5, 48, 80, 4, 0, 2),
    Stage(False, 7, 80, 160, 4, 0.25, 2),
    Stage(False, 14, 160, 176, 6, 0.25, 1),
    Stage(False, 18, 176, 304, 6, 0.25, 2),
    Stage(False, 5, 304, 512, 6, 0.25, 1),
)
L_STAGES = (
    Stage(True, 4, 32, 32, 1, 0, 1),
    Stage(True, 7, 32, 64, 4, 0, 2),
    Stage(True, 7, 64, 96, 4, 0, 2),
    Stage(False, 10, 96, 192, 4, 0.25, 2),
    Stage(False, 19, 192, 224, 6, 0.25, 1),
    Stage(False, 25, 224, 384, 6, 0.25, 2),
    Stage(False, 7, 384, 640, 6, 0.25, 1),
)


class Member(NamedTuple):
  """A Keras constructor's settings: its function, model name (the weights file's stem), weights
  hashes (top, no top), scaling coefficients, stages and default input size; and the layer where
  fine-tuning starts."""
  constructor: str
  keras_name: str
  hashes: tuple[str, str]
  width: float
  depth: float
  stages: tuple[Stage, ...]
  default_size: int
  fine_tune_at: str


# fine_tune_at: the MobileNetV2 tutorial trains its layers 100.. of 155 (from 64.5% of the depth);
# each member starts at the first layer (`expand_conv`) of the block nearest that relative depth,
# a stage-6 MBConv block in every member. The comments give its index / the layers without top.
MEMBERS = {
    'efficientnetv2_b0': Member(
        'EfficientNetV2B0', 'efficientnetv2-b0',
        ('21ecbf6da12460d5c40bb2f29ceb2188', '893217f2bb855e2983157299931e43ff'),
        1.0, 1.0, B_STAGES, 224, 'block6c_expand_conv'),  # 177 / 271
    'efficientnetv2_b1': Member(
        'EfficientNetV2B1', 'efficientnetv2-b1',
        ('069f0534ff22adf035c89e2d9547a9dc', '0e80663031ca32d657f9caa404b6ec37'),
        1.0, 1.1, B_STAGES, 240, 'block6b_expand_conv'),  # 211 / 335
    'efficientnetv2_b2': Member(
        'EfficientNetV2B2', 'efficientnetv2-b2',
        ('424e49f28180edbde1e94797771950a7', '1dfe2e7a5d45b6632553a8961ea609eb'),
        1.1, 1.2, B_STAGES, 260, 'block6c_expand_conv'),  # 226 / 350
    'efficientnetv2_b3': Member(
        'EfficientNetV2B3', 'efficientnetv2-b3',
        ('1f1fc43bd98a6e4fd8fdfd551e02c7a0', 'f6abf7b5849ac99a89b50dd3fd532856'),
        1.2, 1.4, B_STAGES, 300, 'block6d_expand_conv'),  # 271 / 410
    'efficientnetv2_s': Member(
        'EfficientNetV2S', 'efficientnetv2-s',
        ('e1d88a8495beba45748fedd0cecbe016', 'af0682fb74e8c54910f2d4393339c070'),
        1.0, 1.0, S_STAGES, 384, 'block6d_expand_conv'),  # 330 / 514
    'efficientnetv2_m': Member(
        'EfficientNetV2M', 'efficientnetv2-m',
        ('a3bf6aa3276309f4fc6a34aa114c95cd', '1b8dc055df72dde80d614482840fe342'),
        1.0, 1.0, M_STAGES, 480, 'block6g_expand_conv'),  # 484 / 741
    'efficientnetv2_l': Member(
        'EfficientNetV2L', 'efficientnetv2-l',
        ('27e6d408b53c7ebc868fefa357689935', 'b0b66b5c863aef5b46e8608fe1711615'),
        1.0, 1.0, L_STAGES, 480, 'block6i_expand_conv'),  # 667 / 1029
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Keras's EfficientNetV2 channel rounding: `filters * width` to the nearest multiple of
  `divisor`, at least `divisor` (no 90% rule, unlike MobileNet's `make_divisible`)."""
  return int(max(divisor, int(filters * width + divisor / 2) // divisor * divisor))


def _block(table: TableBuilder, prefix: str, input_filters: int, output_filters: int,
           expand_ratio: int, se_ratio: float, strides: int, fused: bool, drop_connect: bool):
  """Keras's `FusedMBConvBlock` (fused) or `MBConvBlock`, from the block input (the last layer)."""
  add, block_input = table.add, table.last
  swish = dict(activation='swish')
  filters = input_filters * expand_ratio
  if expand_ratio != 1:
    add(prefix + 'expand_conv', 'conv', features=filters,
        kernel_size=KERNEL_SIZE if fused else 1, strides=strides if fused else 1)
    add(prefix + 'expand_bn', 'batch_norm', **BATCH_NORM)
    add(prefix + 'expand_activation', 'activation', **swish)
  if not fused:
    add(prefix + 'dwconv2', 'depthwise', kernel_size=KERNEL_SIZE, strides=strides)
    add(prefix + 'bn', 'batch_norm', **BATCH_NORM)
    add(prefix + 'activation', 'activation', **swish)
  if 0 < se_ratio <= 1:
    excited = table.last
    add(prefix + 'se_squeeze', 'global_avg_pool')
    add(prefix + 'se_reshape', 'reshape_to_pixel')
    add(prefix + 'se_reduce', 'conv', features=max(1, int(input_filters * se_ratio)),
        use_bias=True, **swish)
    add(prefix + 'se_expand', 'conv', features=filters, use_bias=True, activation='sigmoid')
    add(prefix + 'se_excite', 'multiply', inputs=(excited, prefix + 'se_expand'))
  projects_only = fused and expand_ratio == 1  # the projection is the block's one convolution
  add(prefix + 'project_conv', 'conv', features=output_filters,
      kernel_size=KERNEL_SIZE if projects_only else 1, strides=strides if projects_only else 1)
  add(prefix + 'project_bn', 'batch_norm', **BATCH_NORM)
  if projects_only:
    add(prefix + 'project_activation', 'activation', **swish)
  if strides == 1 and input_filters == output_filters:
    if drop_connect:
      add(prefix + 'drop', 'dropout')
    add(prefix + 'add', 'add', inputs=(table.last, block_input))


def efficientnet_v2_layers(include_top: bool, member: Member, classes: int = 1000):
  """The layers of the Keras `member` built with `include_top` (without it, `pooling='avg'`).

  Automatically named layers (`input_layer`, `rescaling`, `normalization`) are given without the
  `_N` suffix Keras adds when several models exist in one session. B0-B3's `Normalization` holds
  its mean and variance as constants, not weights: here it is the equivalent per-channel
  rescaling `x / std - mean / std`.
  """
  table = TableBuilder()
  add = table.add
  add('input_layer', 'input')
  if member.keras_name.split('-')[-1].startswith('b'):
    add('rescaling', 'rescaling', scale=(1 / 255,))
    add('normalization', 'rescaling', scale=tuple(1 / s for s in IMAGENET_STD),
        offset=tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)))
  else:
    add('rescaling', 'rescaling', scale=(1 / 128,), offset=(-1.0,))
  add('stem_conv', 'conv', features=round_filters(member.stages[0].input_filters, member.width),
      kernel_size=3, strides=2)
  add('stem_bn', 'batch_norm', **BATCH_NORM)
  add('stem_activation', 'activation', activation='swish')
  block_number = 0  # Keras's `b`: drop-connect grows from 0, so the first block has no `drop`
  for stage_id, stage in enumerate(member.stages):
    input_filters = round_filters(stage.input_filters, member.width)
    output_filters = round_filters(stage.output_filters, member.width)
    strides = stage.strides
    for repeat in range(round_repeats(stage.repeats, member.depth)):
      _block(table, f'block{stage_id + 1}{chr(ord("a") + repeat)}_', input_filters, output_filters,
             stage.expand_ratio, stage.se_ratio, strides, stage.fused,
             drop_connect=DROP_CONNECT_RATE * block_number > 0)
      input_filters, strides = output_filters, 1
      block_number += 1
  add_top(table, round_filters(1280, member.width), include_top, classes, BATCH_NORM,
          dropout=True)
  return table.layers()


def imagenet_weights(member: Member, include_top: bool, input_size: int) -> WeightsFile:
  """Keras's file: one for every input size, but with the top Keras asks for the default size."""
  if include_top and input_size != member.default_size:
    raise ValueError(f'ImageNet {member.constructor} weights with the classifier top need '
                     f'{member.default_size}x{member.default_size} inputs, got {input_size}')
  filename = member.keras_name + ('.h5' if include_top else '_notop.h5')
  return WeightsFile(WEIGHTS_URL + filename, filename, member.hashes[0 if include_top else 1])


def _register(name: str, member: Member) -> Backbone:
  return register(Backbone(
      name=name,
      layers=lambda include_top: efficientnet_v2_layers(include_top, member),
      keras_application=lambda keras, **settings: getattr(
          keras.applications, member.constructor)(**settings),
      preprocessing=INSIDE_THE_NETWORK,
      imagenet_weights=lambda include_top, input_size: imagenet_weights(
          member, include_top, input_size),
      fine_tune_at=member.fine_tune_at,
      default_image_size=member.default_size,
      min_image_size=32,
  ))


EFFICIENTNET_V2 = {name: _register(name, member) for name, member in MEMBERS.items()}
