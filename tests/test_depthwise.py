"""The shifted depthwise convolution equals the grouped one, forward and backward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlflax.models.depthwise import (DepthwiseConv2D, grouped_depthwise, resolve_implementation,
                                     shifted_depthwise)

pytestmark = pytest.mark.usefixtures('float32_matmuls')


@pytest.mark.parametrize('size,strides,padding', [
    (16, 1, 'SAME'), (15, 1, 'SAME'), (17, 2, ((1, 1), (1, 1))), (16, 2, ((0, 1), (0, 1))),
    (9, 2, 'SAME'), (8, 1, 'VALID')])
def test_shifted_equals_grouped(size, strides, padding):
  x = jax.random.normal(jax.random.key(0), (2, size, size, 24))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 24))

  def loss(fn, x, kernel):
    return jnp.sum(jnp.sin(fn(x, kernel, strides, padding)))

  grouped = grouped_depthwise(x, kernel, strides, padding)
  shifted = shifted_depthwise(x, kernel, strides, padding)
  assert shifted.shape == grouped.shape
  np.testing.assert_allclose(shifted, grouped, atol=1e-5, rtol=0)
  def grads(fn):
    return jax.jit(jax.grad(lambda *a: loss(fn, *a), argnums=(0, 1)))(x, kernel)

  for a, b in zip(grads(shifted_depthwise), grads(grouped_depthwise)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_module_parameter_layout_does_not_depend_on_implementation():
  x = jnp.ones((1, 8, 8, 5))
  shapes = {impl: jax.tree.map(jnp.shape, DepthwiseConv2D(implementation=impl).init(
      jax.random.key(0), x)) for impl in ('grouped', 'shifted')}
  assert shapes['grouped'] == shapes['shifted'] == {'params': {'kernel': (3, 3, 1, 5)}}


def test_auto_picks_shifted_on_cpu_and_rejects_unknown_names():
  assert resolve_implementation('auto') == (
      'shifted' if jax.default_backend() == 'cpu' else 'grouped')
  with pytest.raises(ValueError, match='fft'):
    resolve_implementation('fft')
