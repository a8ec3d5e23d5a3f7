"""Depthwise 2D convolution with two interchangeable implementations.

`grouped` is `lax.conv_general_dilated` with `feature_group_count=channels`, which cuDNN serves
well. XLA:CPU compiles grouped convolutions poorly, so `shifted` computes the same thing as k*k
shifted, strided slices of the padded input, each scaled per channel and summed: on MobileNetV2
shapes it is an order of magnitude faster on CPU. `auto` picks `shifted` on CPU and `grouped`
elsewhere.
"""
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

IMPLEMENTATIONS = ('auto', 'grouped', 'shifted')


def check_implementation(implementation: str):
  """Raises `ValueError` unless `implementation` is one of `IMPLEMENTATIONS`."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'depthwise implementation must be one of {IMPLEMENTATIONS}, '
                     f'got {implementation!r}')


def resolve_implementation(implementation: str) -> str:
  """Turns 'auto' into the implementation that suits the default backend."""
  check_implementation(implementation)
  if implementation == 'auto':
    return 'shifted' if jax.default_backend() == 'cpu' else 'grouped'
  return implementation


def grouped_depthwise(x, kernel, strides: int, padding):
  """Depthwise convolution as a grouped convolution; `kernel` is (k, k, 1, channels)."""
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=x.shape[-1])


def shifted_depthwise(x, kernel, strides: int, padding):
  """Depthwise convolution as a sum of k*k shifted, strided slices times a per-channel weight."""
  k = kernel.shape[0]
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(x.shape[1:3], (k, k), (strides, strides), padding)
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  out_h = (x.shape[1] - k) // strides + 1
  out_w = (x.shape[2] - k) // strides + 1
  out = None
  for i in range(k):
    for j in range(k):
      window = lax.slice(
          x, (0, i, j, 0),
          (x.shape[0], i + strides * (out_h - 1) + 1, j + strides * (out_w - 1) + 1, x.shape[3]),
          (1, strides, strides, 1))
      term = window * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv2D(nn.Module):
  """A depthwise convolution (depth multiplier 1), `kernel` of shape (k, k, 1, C) (and a `bias`)."""
  kernel_size: int = 3
  strides: int = 1
  padding: str = 'SAME'
  use_bias: bool = False
  implementation: str = 'auto'
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.glorot_uniform(),
                        (self.kernel_size, self.kernel_size, 1, channels), self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if resolve_implementation(self.implementation) == 'shifted':
      y = shifted_depthwise(x, kernel, self.strides, self.padding)
    else:
      y = grouped_depthwise(x, kernel, self.strides, self.padding)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (channels,),
                         self.param_dtype).astype(self.dtype)
    return y
