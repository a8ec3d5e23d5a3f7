"""The layer table equals Keras's `base_model.layers`, and freezing by index counts like Keras."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlflax.models import MobileNetV2, mobilenet_v2_layers, trainable_mask, variable_shapes

AUTO_NAMED = re.compile(r'^(input_layer|global_average_pooling2d|global_max_pooling2d)(_\d+)?$')


def keras_layer_names(model):
  """Keras layer names, without the `_N` suffix Keras gives auto-named layers in a session."""
  return [AUTO_NAMED.sub(r'\1', layer.name) for layer in model.layers]


@pytest.mark.parametrize('alpha,include_top,pooling', [
    (1.0, False, None), (1.0, True, None), (0.35, False, 'avg'), (1.4, False, 'max'),
    (0.5, True, None)])
def test_layer_table_equals_keras(alpha, include_top, pooling):
  import keras
  model = keras.applications.MobileNetV2(input_shape=(160, 160, 3), alpha=alpha,
                                         include_top=include_top, pooling=pooling, weights=None)
  table = mobilenet_v2_layers(alpha, include_top, pooling)
  assert [layer.name for layer in table] == keras_layer_names(model)
  assert [layer.index for layer in table] == list(range(len(model.layers)))
  with_weights = {layer.name for layer in model.layers if layer.weights}
  assert {layer.name for layer in table if layer.has_variables} == with_weights


@pytest.mark.parametrize('fine_tune_at', [0, 100, 120, 154])
def test_trainable_counts_equal_keras(fine_tune_at):
  """The tutorial's `base_model.layers[:fine_tune_at]` frozen: same trainable count as Keras."""
  import keras
  base_model = keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False,
                                              weights=None)
  base_model.trainable = True
  for layer in base_model.layers[:fine_tune_at]:
    layer.trainable = False
  keras_count = sum(int(np.prod(w.shape)) for w in base_model.trainable_weights)

  model = MobileNetV2(include_top=False)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 160, 160, 3)))['params']
  mask = trainable_mask(params, model.layers, fine_tune_at)
  count = sum(int(np.prod(p.shape)) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(mask))
              if t)
  assert count == keras_count
  if fine_tune_at == 100:
    assert count == 1_861_440  # the tutorial's 1,862,721 trainable minus its 1,281-weight head


def test_trainable_mask_rejects_unknown_layers_and_indices():
  model = MobileNetV2(include_top=False)
  with pytest.raises(KeyError, match='head'):
    trainable_mask({'head': {'kernel': 0}}, model.layers, 100)
  with pytest.raises(ValueError, match='outside'):
    trainable_mask({}, model.layers, 500)


@pytest.mark.parametrize('bad', [dict(alpha=0), dict(pooling='mean')])
def test_bad_architecture_settings_fail_clearly(bad):
  with pytest.raises(ValueError):
    mobilenet_v2_layers(**bad)


@pytest.mark.parametrize('alpha,include_top,pooling', [
    (1.0, False, None), (1.0, True, None), (0.35, True, None), (1.4, False, 'avg')])
def test_variable_shapes_equal_the_traced_module(alpha, include_top, pooling):
  model = MobileNetV2(alpha=alpha, include_top=include_top, pooling=pooling)
  traced = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 96, 96, 3)))
  assert variable_shapes(alpha, include_top, pooling) == traced


@pytest.mark.parametrize('shape,settings,message', [
    ((1, 31, 64, 3), {}, 'at least 32x32'),
    ((1, 64, 64), {}, 'batch, height, width, 3'),
    ((1, 64, 64, 1), {}, 'batch, height, width, 3'),
    ((1, 64, 64, 3), {'classifier_activation': 'sigmoid'}, 'classifier_activation')])
def test_model_rejects_bad_inputs_with_clear_errors(shape, settings, message):
  model = MobileNetV2(alpha=0.35, **settings)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
