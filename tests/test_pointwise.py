"""The 1x1 convolution as a matrix product equals `nn.Conv`, forward and backward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from tlflax.models.pointwise import PointwiseConv

pytestmark = pytest.mark.usefixtures('float32_matmuls')


def test_pointwise_equals_a_1x1_convolution():
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 12))
  pointwise, conv = PointwiseConv(20), nn.Conv(20, (1, 1), use_bias=False)
  variables = pointwise.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, conv.init(
      jax.random.key(1), x)) == {'params': {'kernel': (1, 1, 12, 20)}}

  def loss(module, variables, x):
    return jnp.sum(jnp.sin(module.apply(variables, x)))

  np.testing.assert_allclose(pointwise.apply(variables, x), conv.apply(variables, x),
                             atol=1e-5, rtol=0)
  for a, b in zip(jax.grad(loss, argnums=(1, 2))(pointwise, variables, x),
                  jax.grad(loss, argnums=(1, 2))(conv, variables, x)):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5), a, b)
