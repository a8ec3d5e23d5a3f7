"""Flax MobileNetV2 equals Keras MobileNetV2 on the same random weights, loaded from Keras files."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from keras_reference import random_keras_model, write_keras3_legacy_h5, write_published_h5
from tlflax.models import MobileNetV2
from tlflax.weights import load_pretrained

pytestmark = pytest.mark.usefixtures('float32_matmuls')

TOLERANCE = 1e-4


def compare_with_keras(tmp_path, alpha, include_top, size, writer, classifier_activation=None,
                       depthwise_implementation='auto', batch=2):
  keras_model = random_keras_model(alpha, include_top, size,
                                   classifier_activation=classifier_activation)
  path = writer(tmp_path, keras_model)
  variables = load_pretrained(str(path), alpha=alpha, include_top=include_top, input_size=size)
  images = np.random.default_rng(1).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  expected = keras_model(images, training=False).numpy()
  model = MobileNetV2(alpha=alpha, include_top=include_top,
                      classifier_activation=classifier_activation,
                      depthwise_implementation=depthwise_implementation)
  actual = np.asarray(jax.jit(model.apply)(variables, images))
  assert actual.shape == expected.shape
  np.testing.assert_allclose(actual, expected, atol=TOLERANCE, rtol=0)
  return expected


def published_h5(tmp_path, model):
  write_published_h5(tmp_path / 'published.h5', model)
  return tmp_path / 'published.h5'


def keras3_legacy_h5(tmp_path, model):
  write_keras3_legacy_h5(tmp_path / 'keras3.h5', model)
  return tmp_path / 'keras3.h5'


def keras3_weights_h5(tmp_path, model):
  model.save_weights(tmp_path / 'model.weights.h5')
  return tmp_path / 'model.weights.h5'


@pytest.mark.parametrize('alpha,include_top,size', [
    (1.0, False, 160), (1.0, True, 224), (1.0, False, 97),
    (0.35, False, 224), (0.35, True, 160), (0.35, False, 75)])
def test_parity_through_published_h5(tmp_path, alpha, include_top, size):
  compare_with_keras(tmp_path, alpha, include_top, size, published_h5)


def test_parity_with_softmax_top(tmp_path):
  probabilities = compare_with_keras(tmp_path, 1.0, True, 160, published_h5,
                                     classifier_activation='softmax')
  np.testing.assert_allclose(probabilities.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize('writer', [keras3_legacy_h5, keras3_weights_h5])
def test_parity_through_keras3_files(tmp_path, writer):
  compare_with_keras(tmp_path, 1.0, True, 224, writer)


@pytest.mark.parametrize('implementation', ['grouped', 'shifted'])
def test_parity_for_each_depthwise_implementation(tmp_path, implementation):
  compare_with_keras(tmp_path, 0.35, False, 96, published_h5,
                     depthwise_implementation=implementation)


def test_batch_norm_training_mode_matches_keras(tmp_path):
  """With `train=True` BatchNorm uses batch statistics, as Keras's `training=True` does."""
  keras_model = random_keras_model(0.35, False, 64)
  path = published_h5(tmp_path, keras_model)
  variables = load_pretrained(str(path), alpha=0.35, input_size=64)
  images = np.random.default_rng(2).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
  expected = keras_model(images, training=True).numpy()
  model = MobileNetV2(alpha=0.35, include_top=False)
  actual, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, images)
  # Batch statistics are reduced in a different order on each side: looser than inference.
  np.testing.assert_allclose(np.asarray(actual), expected, atol=1e-3, rtol=0)
  for layer in model.layers:  # the moving statistics moved as Keras's did
    if layer.kind == 'batch_norm':
      stats = updates['batch_stats'][layer.name]
      keras_mean, keras_var = keras_model.get_layer(layer.name).get_weights()[2:]
      np.testing.assert_allclose(stats['mean'], keras_mean, atol=1e-6, rtol=1e-5)
      np.testing.assert_allclose(stats['var'], keras_var, atol=1e-6, rtol=1e-5)
  assert not np.allclose(updates['batch_stats']['bn_Conv1']['mean'],
                         variables['batch_stats']['bn_Conv1']['mean'], atol=1e-7, rtol=0)


def test_port_is_exact_in_float64(tmp_path):
  """In float64 on both sides the outputs agree to 1e-9: the float32 gaps above are round-off.

  (In float32 Keras itself is ~1e-4 away from the float64 result after 52 layers.)
  """
  import keras
  images = np.random.default_rng(3).uniform(-1, 1, (2, 96, 96, 3))
  policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
  keras.config.set_dtype_policy('float64')  # the layers' computations
  keras.config.set_floatx('float64')  # the input layer's dtype
  try:
    keras_model = random_keras_model(1.0, True, 96, classifier_activation=None)
    expected = keras_model(images, training=False).numpy()
  finally:
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(floatx)
  assert expected.dtype == np.float64
  path = published_h5(tmp_path, keras_model)
  with jax.enable_x64(True):
    variables = load_pretrained(str(path), include_top=True, input_size=96)
    model = MobileNetV2(classifier_activation=None, dtype=jnp.float64)
    actual = np.asarray(jax.jit(model.apply)(variables, images))
  assert actual.dtype == np.float64
  np.testing.assert_allclose(actual, expected, atol=1e-9, rtol=0)
