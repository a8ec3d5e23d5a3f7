"""1x1 convolution as a matrix product over channels.

A 1x1, stride-1 convolution is a dense layer applied at every pixel. Written as `lax.dot_general`,
XLA:CPU computes it and its gradients as plain matrix products, which on MobileNetV2's shapes is
2-3x faster in the backward pass than `lax.conv_general_dilated` (measured on a 2-core CPU). The
kernel keeps the convolution's (1, 1, in, out) layout, so weights port unchanged.
"""
import jax.numpy as jnp
from flax import linen as nn
from jax import lax


class PointwiseConv(nn.Module):
  """A 1x1, stride-1 convolution with a `kernel` of shape (1, 1, in, `features`) (and a `bias`)."""
  features: int
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.glorot_uniform(),
                        (1, 1, x.shape[-1], self.features), self.param_dtype)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    y = lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,),
                         self.param_dtype).astype(self.dtype)
    return y
