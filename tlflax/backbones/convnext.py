"""ConvNeXt Tiny, Small, Base, Large and XLarge (`keras.applications.ConvNeXtTiny`, ...).

A 4x4 stride-4 patchifying stem, then four stages of ConvNeXt blocks (7x7 depthwise convolution,
LayerNorm, 1x1 expansion to 4x as a Dense, exact GELU, 1x1 projection as a Dense, LayerScale, and
the block's input added back), with a 2x2 stride-2 downsampling (LayerNorm then convolution)
before stages 1-3; every LayerNorm has epsilon 1e-6. Preprocessing is inside the network: a
Normalization with the ImageNet mean and variance on [0, 255] inputs.

Two things in Keras's `model.layers` are not one plain layer each, and the table keeps it one to
one all the same:
- The stem and the downsampling blocks are nested `Sequential` models of a convolution and a
  LayerNormalization; each is one row here, of a kind registered below that runs both (its
  `.weights.h5` variables lie in the Sequential's inner layer groups, named by the slots).
- The residual sum (`inputs + layer(x)` in Keras) is an operation, not a layer: the row of the
  layer just before it, the linear `Activation` named `..._identity`, carries the sum ('add' of
  the block input and the layer scale's output), so that its output is what the next layer reads.
  (Keras's members all have drop_path_rate 0, so it builds that Activation, never StochasticDepth.)
Without the top, Keras ends with global average pooling and an automatically named
LayerNormalization (`layer_normalization`), which the table keeps.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from tlflax.backbones import kinds
from tlflax.backbones.kinds import Kind, Slot
from tlflax.backbones.layers import TableBuilder
from tlflax.backbones.preprocessing import INSIDE_THE_NETWORK
from tlflax.backbones.registry import Backbone, WeightsFile, register

WEIGHTS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/convnext/'
EPSILON = 1e-6
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # the prestem Normalization's statistics
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class Config(NamedTuple):
  """One member: blocks and channels per stage, and the sha256 of Keras's files with and without
  the top."""
  depths: tuple[int, int, int, int]
  projection_dims: tuple[int, int, int, int]
  top_sha256: str
  notop_sha256: str


CONFIGS = {  # Keras's MODEL_CONFIGS and WEIGHTS_HASHES
    'convnext_tiny': Config(
        (3, 3, 9, 3), (96, 192, 384, 768),
        '8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff',
        'd547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1'),
    'convnext_small': Config(
        (3, 3, 27, 3), (96, 192, 384, 768),
        'ce1277d8f1ee5a0ef0e171469089c18f5233860ceaf9b168049cb9263fd7483c',
        '6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab'),
    'convnext_base': Config(
        (3, 3, 27, 3), (128, 256, 512, 1024),
        '52cbb006d3dadd03f6e095a8ca1aca47aecdd75acb4bc74bce1f5c695d0086e6',
        '40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45'),
    'convnext_large': Config(
        (3, 3, 27, 3), (192, 384, 768, 1536),
        '070c5ed9ed289581e477741d3b34beffa920db8cf590899d6d2c67fba2a198a6',
        '96f02b6f0753d4f543261bc9d09bed650f24dd6bc02ddde3066135b63d23a1cd'),
    'convnext_xlarge': Config(
        (3, 3, 27, 3), (256, 512, 1024, 2048),
        'c1f5ccab661354fc3a79a10fa99af82f0fbf10ec65cb894a3ae0815f17a889ee',
        'de3f8a54174130e0cecdc71583354753d557fcf1f4487331558e2a16ba0cfe05'),
}
KERAS_CONSTRUCTORS = {'convnext_tiny': 'ConvNeXtTiny', 'convnext_small': 'ConvNeXtSmall',
                      'convnext_base': 'ConvNeXtBase', 'convnext_large': 'ConvNeXtLarge',
                      'convnext_xlarge': 'ConvNeXtXLarge'}


# --- the stem and downsampling `Sequential`s: a patchifying convolution and a LayerNorm ----------

def _layer_norm(x, scale, bias, epsilon):
  """Keras's LayerNormalization over the channels, computed in float32 at least."""
  y = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = y.mean(-1, keepdims=True)
  variance = jnp.square(y - mean).mean(-1, keepdims=True)
  return ((y - mean) * jax.lax.rsqrt(variance + epsilon) * scale + bias).astype(x.dtype)


class PatchConvAndNorm(nn.Module):
  """A convolution with kernel size = stride ('valid', with bias) and a LayerNorm, the norm first
  if `norm_first`: Keras's stem (conv, norm) and downsampling blocks (norm, conv). Variables
  `kernel`, `bias` (convolution), `norm_scale`, `norm_bias` (LayerNorm)."""
  features: int
  patch_size: int
  norm_first: bool
  epsilon: float = EPSILON
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    p = self.patch_size
    norm_channels = (x.shape[-1] if self.norm_first else self.features,)
    kernel = self.param('kernel', nn.initializers.glorot_uniform(),
                        (p, p, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    norm_scale = self.param('norm_scale', nn.initializers.ones, norm_channels)
    norm_bias = self.param('norm_bias', nn.initializers.zeros, norm_channels)
    if self.norm_first:
      x = _layer_norm(x, norm_scale, norm_bias, self.epsilon)
    x = jax.lax.conv_general_dilated(x, kernel.astype(self.dtype), (p, p), 'VALID',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    x = x + bias.astype(self.dtype)
    if not self.norm_first:
      x = _layer_norm(x, norm_scale, norm_bias, self.epsilon)
    return x


def _patch_conv_and_norm(norm_first: bool):
  def apply(layer, inputs, context):
    (x,) = inputs
    return PatchConvAndNorm(layer.features, layer.kernel_size, norm_first, layer.epsilon,
                            context.dtype, name=layer.name)(x)

  def slots(layer, channels):
    k, features = layer.kernel_size, layer.features
    conv = (Slot('kernel', 'params', 'kernel', (k, k, channels, features),
                 keras_sublayer='conv2d'),
            Slot('bias', 'params', 'bias', (features,), keras_sublayer='conv2d'))
    norm_channels = channels if norm_first else features
    norm = (Slot('gamma', 'params', 'norm_scale', (norm_channels,),
                 keras_sublayer='layer_normalization'),
            Slot('beta', 'params', 'norm_bias', (norm_channels,),
                 keras_sublayer='layer_normalization'))
    return norm + conv if norm_first else conv + norm  # the Sequential's get_weights() order

  return Kind(apply, slots, 'sequential')


kinds.register('patch_conv_then_layer_norm', _patch_conv_and_norm(norm_first=False))
kinds.register('layer_norm_then_patch_conv', _patch_conv_and_norm(norm_first=True))


# --- the layer table -----------------------------------------------------------------------------

def convnext_layers(name: str, include_top: bool = True, classes: int = 1000):
  """The layers of `keras.applications.ConvNeXt...(include_top, pooling='avg')` for member `name`
  (Keras's default model name, which prefixes the layer names)."""
  config = CONFIGS[name]
  table = TableBuilder()
  add = table.add
  add('input_layer', 'input')
  # Keras 3's Normalization with given statistics has no variables: (x - mean) / std, here as
  # x * (1 / std) - mean / std.
  add(f'{name}_prestem_normalization', 'rescaling',
      scale=tuple(1 / s for s in IMAGENET_STD),
      offset=tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)))
  norm = dict(epsilon=EPSILON)
  for stage, (depth, channels) in enumerate(zip(config.depths, config.projection_dims)):
    if stage == 0:
      add(f'{name}_stem', 'patch_conv_then_layer_norm', features=channels, kernel_size=4, **norm)
    else:
      add(f'{name}_downsampling_block_{stage - 1}', 'layer_norm_then_patch_conv',
          features=channels, kernel_size=2, **norm)
    for block in range(depth):
      prefix = f'{name}_stage_{stage}_block_{block}'
      block_input = table.last
      add(f'{prefix}_depthwise_conv', 'conv', features=channels, kernel_size=7, groups=channels,
          use_bias=True)
      add(f'{prefix}_layernorm', 'layer_norm', **norm)
      add(f'{prefix}_pointwise_conv_1', 'dense', features=4 * channels)
      add(f'{prefix}_gelu', 'activation', activation='gelu')
      add(f'{prefix}_pointwise_conv_2', 'dense', features=channels)
      scaled = add(f'{prefix}_layer_scale', 'layer_scale')
      # Keras's linear `_identity` Activation, then `block_input + ...` (an operation): one row.
      add(f'{prefix}_identity', 'add', inputs=(block_input, scaled))
  if include_top:
    add(f'{name}_head_gap', 'global_avg_pool')
    add(f'{name}_head_layernorm', 'layer_norm', **norm)
    add(f'{name}_head_dense', 'dense', features=classes, activation='softmax')
  else:
    add('global_average_pooling2d', 'global_avg_pool')
    add('layer_normalization', 'layer_norm', **norm)
  return table.layers()


def imagenet_weights(name: str, include_top: bool) -> WeightsFile:
  """Keras's file for member `name`; one file fits every input size (fully convolutional, then
  global average pooling)."""
  config = CONFIGS[name]
  filename = name + ('.h5' if include_top else '_notop.h5')
  return WeightsFile(WEIGHTS_URL + filename, filename,
                     config.top_sha256 if include_top else config.notop_sha256)


def fine_tune_at(name: str) -> str:
  """The first layer of the block two thirds into stage 2 (of 4): from there on the last ~34% of
  the layers train (45 of 134 in Tiny, 87 of 260 in the others), as the MobileNetV2 tutorial's
  layer 100 of 155 leaves 35%."""
  return f'{name}_stage_2_block_{2 * CONFIGS[name].depths[2] // 3}_depthwise_conv'


def _register(name: str):
  constructor = KERAS_CONSTRUCTORS[name]
  return register(Backbone(
      name=name,
      layers=lambda include_top, **args: convnext_layers(name, include_top, **args),
      keras_application=lambda keras, **settings: getattr(keras.applications, constructor)(
          **settings),
      preprocessing=INSIDE_THE_NETWORK,
      imagenet_weights=lambda include_top, input_size: imagenet_weights(name, include_top),
      fine_tune_at=fine_tune_at(name),
  ))


CONVNEXT_TINY, CONVNEXT_SMALL, CONVNEXT_BASE, CONVNEXT_LARGE, CONVNEXT_XLARGE = (
    _register(name) for name in CONFIGS)
