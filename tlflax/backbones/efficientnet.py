"""EfficientNet B0-B7 (`keras.applications.EfficientNetB0` ... `EfficientNetB7`).

A 3x3 stem, then seven stages of MBConv blocks (1x1 expansion, depthwise convolution,
squeeze-excite, 1x1 projection), all with BatchNorm (epsilon 1e-3, momentum 0.99) and swish; a
block whose input and output match adds its input back after drop-connect (a Keras `Dropout`, an
identity here, as in inference). Width and depth coefficients scale B0 into B1-B7.

Preprocessing is inside the network: `Rescaling(1/255)`, then a `Normalization` whose mean and
variance are variables (the ImageNet files store the mean and the standard deviation). Because
the files store the standard deviation where the variance belongs, Keras's builder adds a third
layer, `Rescaling(1/sqrt(stddev))`, after the Normalization, but only when it is called with
`weights='imagenet'` (tensorflow/tensorflow#49930). So the ImageNet model, the one a user
fine-tunes, has one layer more than the `weights=None` model, and every later index differs by
one. The backbone argument `imagenet_rescaling` says which of the two layouts a table follows;
it defaults to the ImageNet one, which `keras_efficientnet` also builds offline.
"""
import functools
import math
from typing import NamedTuple

from tlflax.backbones.layers import TableBuilder
from tlflax.backbones.preprocessing import INSIDE_THE_NETWORK
from tlflax.backbones.registry import Backbone, WeightsFile, register

WEIGHTS_URL = 'https://storage.googleapis.com/keras-applications/'
BATCH_NORM = dict(epsilon=1e-3, momentum=0.99)
DROP_CONNECT_RATE = 0.2
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)  # Keras's constant for the ImageNet-only Rescaling
# Keras names its stem's preprocessing layers automatically; these are the names a model built
# first in a session gets, and those `keras_efficientnet` gives them in every model.
STEM_NAMES = ('rescaling', 'normalization', 'rescaling_1')


class Stage(NamedTuple):
  """One entry of Keras's `DEFAULT_BLOCKS_ARGS` (all with squeeze-excite ratio 0.25 and an
  identity skip): `repeats` blocks before depth scaling, the first with `strides`."""
  kernel_size: int
  repeats: int
  filters_in: int
  filters_out: int
  expand_ratio: int
  strides: int


STAGES = (
    Stage(3, 1, 32, 16, 1, 1),
    Stage(3, 2, 16, 24, 6, 2),
    Stage(5, 2, 24, 40, 6, 2),
    Stage(3, 3, 40, 80, 6, 2),
    Stage(5, 3, 80, 112, 6, 1),
    Stage(5, 4, 112, 192, 6, 2),
    Stage(3, 1, 192, 320, 6, 1),
)
SQUEEZE_EXCITE_RATIO = 0.25


class Member(NamedTuple):
  """One of B0-B7: Keras's constructor arguments, weights file names and hashes (top, no top),
  and where fine-tuning starts."""
  constructor: str
  keras_name: str  # the Keras model name, which the weights files are named after
  width: float
  depth: float
  default_size: int
  dropout_rate: float
  hashes: tuple[str, str]
  # The first layer (its expansion convolution) of the block that starts nearest to 100/155 of
  # the ImageNet layout's layers without the top, as the MobileNetV2 tutorial's layer 100 of
  # 155: one in stage 5 for every member (B0: index 148 of 239, B7: 529 of 815).
  fine_tune_at: str


MEMBERS = {
    'efficientnet_b0': Member(
        'EfficientNetB0', 'efficientnetb0', 1.0, 1.0, 224, 0.2,
        ('902e53a9f72be733fc0bcb005b3ebbac', '50bc09e76180e00e4465e1a485ddc09d'),
        'block5c_expand_conv'),
    'efficientnet_b1': Member(
        'EfficientNetB1', 'efficientnetb1', 1.0, 1.1, 240, 0.2,
        ('1d254153d4ab51201f1646940f018540', '74c4e6b3e1f6a1eea24c589628592432'),
        'block5d_expand_conv'),
    'efficientnet_b2': Member(
        'EfficientNetB2', 'efficientnetb2', 1.1, 1.2, 260, 0.3,
        ('b15cce36ff4dcbd00b6dd88e7857a6ad', '111f8e2ac8aa800a7a99e3239f7bfb39'),
        'block5d_expand_conv'),
    'efficientnet_b3': Member(
        'EfficientNetB3', 'efficientnetb3', 1.2, 1.4, 300, 0.3,
        ('ffd1fdc53d0ce67064dc6a9c7960ede0', 'af6d107764bb5b1abb91932881670226'),
        'block5e_expand_conv'),
    'efficientnet_b4': Member(
        'EfficientNetB4', 'efficientnetb4', 1.4, 1.8, 380, 0.4,
        ('18c95ad55216b8f92d7e70b3a046e2fc', 'ebc24e6d6c33eaebbd558eafbeedf1ba'),
        'block5f_expand_conv'),
    'efficientnet_b5': Member(
        'EfficientNetB5', 'efficientnetb5', 1.6, 2.2, 456, 0.4,
        ('ace28f2a6363774853a83a0b21b9421a', '38879255a25d3c92d5e44e04ae6cec6f'),
        'block5f_expand_conv'),
    'efficientnet_b6': Member(
        'EfficientNetB6', 'efficientnetb6', 1.8, 2.6, 528, 0.5,
        ('165f6e37dce68623721b423839de8be5', '9ecce42647a20130c1f39a5d4cb75743'),
        'block5g_expand_conv'),
    'efficientnet_b7': Member(
        'EfficientNetB7', 'efficientnetb7', 2.0, 3.1, 600, 0.5,
        ('8c03f828fec3ef71311cd463b6759d99', 'cbcfe4450ddf6f3ad90b1b398090fe4a'),
        'block5i_expand_conv'),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Keras's width scaling: `filters * width` to the nearest multiple of `divisor`, never below
  90% of it."""
  filters *= width
  new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if new_filters < 0.9 * filters:
    new_filters += divisor
  return int(new_filters)


def round_repeats(repeats: int, depth: float) -> int:
  """Keras's depth scaling."""
  return int(math.ceil(depth * repeats))


def _block(table: TableBuilder, prefix: str, filters_in: int, filters_out: int, stage: Stage,
           strides: int, drop_connect: bool):
  """Keras's `block`: an MBConv block with squeeze-excite."""
  add = table.add
  block_input = table.last
  filters = filters_in * stage.expand_ratio
  if stage.expand_ratio != 1:
    add(prefix + 'expand_conv', 'conv', features=filters)
    add(prefix + 'expand_bn', 'batch_norm', **BATCH_NORM)
    add(prefix + 'expand_activation', 'activation', activation='swish')
  if strides == 2:
    add(prefix + 'dwconv_pad', 'correct_pad', kernel_size=stage.kernel_size)
  add(prefix + 'dwconv', 'depthwise', kernel_size=stage.kernel_size, strides=strides,
      padding='valid' if strides == 2 else 'same')
  add(prefix + 'bn', 'batch_norm', **BATCH_NORM)
  features = add(prefix + 'activation', 'activation', activation='swish')
  add(prefix + 'se_squeeze', 'global_avg_pool')
  add(prefix + 'se_reshape', 'reshape_to_pixel')
  add(prefix + 'se_reduce', 'conv', use_bias=True, activation='swish',
      features=max(1, int(filters_in * SQUEEZE_EXCITE_RATIO)))
  se = add(prefix + 'se_expand', 'conv', features=filters, use_bias=True, activation='sigmoid')
  add(prefix + 'se_excite', 'multiply', inputs=(features, se))
  add(prefix + 'project_conv', 'conv', features=filters_out)
  add(prefix + 'project_bn', 'batch_norm', **BATCH_NORM)
  if strides == 1 and filters_in == filters_out:
    if drop_connect:
      add(prefix + 'drop', 'dropout')
    add(prefix + 'add', 'add', inputs=(table.last, block_input))


def efficientnet_layers(include_top: bool, member: Member, imagenet_rescaling: bool = True,
                        classes: int = 1000):
  """The layers of `keras.applications.EfficientNetB*(include_top, pooling='avg')`: with
  `imagenet_rescaling` as built with `weights='imagenet'`, else as with `weights=None`.

  The automatically named layers have the names of a model built first in a session (without the
  `_N` suffix Keras adds to later ones): `input_layer`, `STEM_NAMES`.
  """
  table = TableBuilder()
  add = table.add
  rescaling, normalization, imagenet_only = STEM_NAMES
  add('input_layer', 'input')
  add(rescaling, 'rescaling', scale=(1 / 255,))
  add(normalization, 'normalization')
  if imagenet_rescaling:
    add(imagenet_only, 'rescaling', scale=tuple(1 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB))
  add('stem_conv_pad', 'correct_pad', kernel_size=3)
  add('stem_conv', 'conv', features=round_filters(32, member.width), kernel_size=3, strides=2,
      padding='valid')
  add('stem_bn', 'batch_norm', **BATCH_NORM)
  add('stem_activation', 'activation', activation='swish')
  block_number = 0  # Keras's `b`: drop-connect grows from 0, so the first block has no `drop`
  for stage_id, stage in enumerate(STAGES):
    filters_in = round_filters(stage.filters_in, member.width)
    filters_out = round_filters(stage.filters_out, member.width)
    strides = stage.strides
    for repeat in range(round_repeats(stage.repeats, member.depth)):
      _block(table, f'block{stage_id + 1}{chr(ord("a") + repeat)}_', filters_in, filters_out,
             stage, strides, drop_connect=DROP_CONNECT_RATE * block_number > 0)
      filters_in, strides = filters_out, 1
      block_number += 1
  add_top(table, round_filters(1280, member.width), include_top, classes, BATCH_NORM,
          dropout=member.dropout_rate > 0)
  return table.layers()


def add_top(table: TableBuilder, features: int, include_top: bool, classes: int,
            batch_norm: dict, dropout: bool):
  """The last layers Keras's EfficientNet and EfficientNetV2 share: a 1x1 convolution to
  `features`, BatchNorm (`batch_norm`: each family's settings), swish, pooling, and with
  `include_top` (dropout and) the classifier."""
  table.add('top_conv', 'conv', features=features)
  table.add('top_bn', 'batch_norm', **batch_norm)
  table.add('top_activation', 'activation', activation='swish')
  table.add('avg_pool', 'global_avg_pool')
  if include_top:
    if dropout:
      table.add('top_dropout', 'dropout')
    table.add('predictions', 'dense', features=classes, activation='softmax')


def imagenet_weights(member: Member, include_top: bool, input_size: int,
                     imagenet_rescaling: bool = True) -> WeightsFile:
  """Keras's file (any input size without the top; with it Keras asks for the default size)."""
  if not imagenet_rescaling:
    raise ValueError('the ImageNet weights need imagenet_rescaling=True: their Normalization '
                     'holds the standard deviation as the variance, which that layer corrects')
  if include_top and input_size != member.default_size:
    raise ValueError(f'ImageNet {member.constructor} weights with the classifier top need '
                     f'{member.default_size}x{member.default_size} inputs, got {input_size}')
  filename = member.keras_name + ('.h5' if include_top else '_notop.h5')
  return WeightsFile(WEIGHTS_URL + filename, filename, member.hashes[0 if include_top else 1])


def keras_efficientnet(keras, member: Member, imagenet_rescaling: bool = True, weights=None,
                       **settings):
  """`keras.applications.EfficientNetB*(weights=weights, **settings)` in the layout
  `imagenet_rescaling` says, without downloading anything unless `weights='imagenet'`.

  Keras's builder is called with `weights=None`; `with_stem_layers` then gives the automatically
  named layers their first-in-session names and, for the ImageNet layout, adds the layer Keras
  adds for `weights='imagenet'`. A weights file (`weights=path`) is loaded into the result.
  """
  constructor = getattr(keras.applications, member.constructor)
  if weights == 'imagenet':
    if not imagenet_rescaling:
      raise ValueError("weights='imagenet' builds the layout of imagenet_rescaling=True")
    return constructor(weights='imagenet', **settings)
  model = with_stem_layers(keras, constructor(weights=None, **settings), imagenet_rescaling)
  if weights is not None:
    model.load_weights(weights)
  return model


def with_stem_layers(keras, model, imagenet_rescaling: bool):
  """The `weights=None` EfficientNet `model` with its input and its Rescaling and Normalization
  named `input_layer` and `STEM_NAMES[:2]`, and, if `imagenet_rescaling`, Keras's ImageNet-only
  `Rescaling(1/sqrt(stddev))` named `STEM_NAMES[2]` after the Normalization.

  `keras.models.clone_model` runs the functional graph again on a new input: `clone_function`
  gives each layer to use (the model's own ones, but renamed copies of the two preprocessing
  layers, the only ones of their classes), `call_function` calls it and may add a layer after
  it. Fixed names keep the Normalization, a layer with weights, under the table's name whatever
  else the session built, as weights files and export look layers up by name.
  """
  rescaling, normalization, imagenet_only = STEM_NAMES
  renamed = {keras.layers.Rescaling: rescaling, keras.layers.Normalization: normalization}

  def layer_to_use(layer):
    if type(layer) not in renamed:
      return layer
    return type(layer).from_config({**layer.get_config(), 'name': renamed[type(layer)]})

  def call(layer, *args, **kwargs):
    outputs = layer(*args, **kwargs)
    if imagenet_rescaling and isinstance(layer, keras.layers.Normalization):
      scale = [1.0 / math.sqrt(stddev) for stddev in IMAGENET_STDDEV_RGB]
      outputs = keras.layers.Rescaling(scale, name=imagenet_only)(outputs)
    return outputs

  inputs = keras.Input(batch_shape=model.input.shape, dtype=model.input.dtype, name='input_layer')
  return keras.models.clone_model(model, input_tensors=inputs, clone_function=layer_to_use,
                                  call_function=call)


def _register(name: str, member: Member) -> Backbone:
  return register(Backbone(
      name=name,
      layers=functools.partial(efficientnet_layers, member=member),
      keras_application=functools.partial(keras_efficientnet, member=member),
      preprocessing=INSIDE_THE_NETWORK,
      imagenet_weights=functools.partial(imagenet_weights, member),
      fine_tune_at=member.fine_tune_at,
      default_args={'imagenet_rescaling': True},
      default_image_size=member.default_size,
      min_image_size=32,
  ))


EFFICIENTNET = {name: _register(name, member) for name, member in MEMBERS.items()}
