"""MobileNetV2: the layer table is Keras's, and the Flax network equals Keras's on the same random
weights, loaded from every Keras file layout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbone_checks import check_float64, check_parity, check_table, check_trainable_counts
from keras_reference import random_keras_model, write_keras3_legacy_h5, write_published_h5
from tlflax import backbones
from tlflax.weights import load_pretrained

pytestmark = pytest.mark.usefixtures('float32_matmuls')

NAME = 'mobilenet_v2'
TOLERANCE = 1e-4


def network(alpha=1.0, include_top=False, **settings):
  return backbones.network(backbones.get(NAME), {'alpha': alpha}, include_top, **settings)


@pytest.mark.parametrize('alpha,include_top', [
    (1.0, False), (1.0, True), (0.35, False), (1.4, False), (0.5, True)])
def test_layer_table_equals_keras(alpha, include_top):
  check_table(NAME, {'alpha': alpha}, include_top, 96)


@pytest.mark.parametrize('fine_tune_at', [0, 100, 'block_11_expand_relu', 120, 154])
def test_trainable_counts_equal_keras(fine_tune_at):
  """The tutorial's `base_model.layers[:fine_tune_at]` frozen: same trainable count as Keras."""
  count = check_trainable_counts(NAME, {'alpha': 1.0}, fine_tune_at, 160)
  if fine_tune_at in (100, backbones.get(NAME).fine_tune_at):
    assert count == 1_861_440  # the tutorial's 1,862,721 trainable minus its 1,281-weight head


def test_trainable_mask_rejects_unknown_layers_and_indices():
  layers = network().layers
  with pytest.raises(KeyError, match='head'):
    backbones.trainable_mask({'head': {'kernel': 0}}, layers, 100)
  with pytest.raises(ValueError, match='outside'):
    backbones.trainable_mask({}, layers, 500)


def test_bad_width_fails_clearly():
  with pytest.raises(ValueError, match='alpha'):
    backbones.table(backbones.get(NAME), {'alpha': 0})


@pytest.mark.parametrize('shape,settings,message', [
    ((1, 31, 64, 3), {}, 'at least 32x32'),
    ((1, 64, 64), {}, 'batch, height, width, 3'),
    ((1, 64, 64, 1), {}, 'batch, height, width, 3'),
    ((1, 64, 64, 3), {'classifier_activation': 'sigmoid'}, 'classifier_activation')])
def test_model_rejects_bad_inputs_with_clear_errors(shape, settings, message):
  model = network(alpha=0.35, include_top=True, **settings)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


@pytest.mark.parametrize('alpha,include_top,size', [
    (1.0, False, 160), (1.0, True, 224), (1.0, False, 97),
    (0.35, False, 224), (0.35, True, 160), (0.35, False, 75)])
def test_parity_through_published_h5(tmp_path, alpha, include_top, size):
  check_parity(tmp_path, NAME, {'alpha': alpha}, include_top, size, 'h5')


@pytest.mark.parametrize('size', [96, 131])
def test_parity_through_keras3_weights_h5(tmp_path, size):
  check_parity(tmp_path, NAME, {'alpha': 0.35}, True, size, 'weights.h5')


def test_parity_with_softmax_top(tmp_path):
  keras_model = random_keras_model(NAME, {}, True, 160)
  path = tmp_path / 'published.h5'
  write_published_h5(path, keras_model)
  variables = load_pretrained(str(path), include_top=True, input_size=160)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 160, 160, 3)).astype(np.float32)
  expected = keras_model(images, training=False).numpy()
  actual = np.asarray(jax.jit(network(include_top=True).apply)(variables, images))
  np.testing.assert_allclose(actual, expected, atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(actual.sum(-1), 1, atol=1e-5)


def test_parity_through_keras3_legacy_h5(tmp_path):
  keras_model = random_keras_model(NAME, {}, True, 224, classifier_activation=None)
  write_keras3_legacy_h5(tmp_path / 'keras3.h5', keras_model)
  variables = load_pretrained(str(tmp_path / 'keras3.h5'), include_top=True)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
  expected = keras_model(images, training=False).numpy()
  actual = np.asarray(jax.jit(network(include_top=True, classifier_activation=None).apply)(
      variables, images))
  np.testing.assert_allclose(actual, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize('implementation', ['grouped', 'shifted'])
def test_parity_for_each_depthwise_implementation(tmp_path, implementation):
  keras_model = random_keras_model(NAME, {'alpha': 0.35}, False, 96)
  write_published_h5(tmp_path / 'published.h5', keras_model)
  variables = load_pretrained(str(tmp_path / 'published.h5'), backbone_args={'alpha': 0.35},
                              input_size=96)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
  model = network(alpha=0.35, depthwise_implementation=implementation)
  actual = np.asarray(jax.jit(model.apply)(variables, images))
  np.testing.assert_allclose(actual, keras_model(images, training=False).numpy(),
                             atol=TOLERANCE, rtol=0)


def test_batch_norm_training_mode_matches_keras(tmp_path):
  """With `train=True` BatchNorm uses batch statistics, as Keras's `training=True` does."""
  keras_model = random_keras_model(NAME, {'alpha': 0.35}, False, 64)
  write_published_h5(tmp_path / 'published.h5', keras_model)
  variables = load_pretrained(str(tmp_path / 'published.h5'), backbone_args={'alpha': 0.35},
                              input_size=64)
  images = np.random.default_rng(2).uniform(-1, 1, (4, 64, 64, 3)).astype(np.float32)
  expected = keras_model(images, training=True).numpy()
  model = network(alpha=0.35)
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
  check_float64(tmp_path, NAME, {}, True, 96)
