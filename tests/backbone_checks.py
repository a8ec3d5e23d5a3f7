"""The checks every registered backbone family passes against its Keras application.

Each family's test file calls these for its smallest member (numerics) and its other sizes
(layer names and shapes only):
- `check_table`: the layer table is Keras's `model.layers` (names, order, layers with weights) and
  its variable shapes are the traced Flax module's and Keras's.
- `check_parity`: Keras with every weight randomized by seed, saved as `.h5` and `.weights.h5`, is
  ported; features and logits equal Keras's within 1e-4 at two input sizes.
- `check_trainable_counts`: `fine_tune_at` freezes the same number of parameters as Keras.
- `check_float64`: in float64 on both sides the port is exact (1e-9), so the float32 gaps are
  round-off.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np

from keras_reference import keras_application, random_keras_model, write_published_h5
from tlflax import backbones
from tlflax.weights import load_pretrained

TOLERANCE = 1e-4


def same_name(table_name: str, keras_name: str) -> bool:
  """Keras numbers automatically named layers on from the models built before in the session: a
  table's `max_pooling2d`, `max_pooling2d_1` may be Keras's `max_pooling2d_3`, `max_pooling2d_4`."""
  base = re.sub(r'_\d+$', '', table_name)
  return keras_name == table_name or re.fullmatch(re.escape(base) + r'_\d+', keras_name)


def check_table(name: str, args: dict, include_top: bool, size: int):
  keras_model = keras_application(name, args, include_top, size)
  spec = backbones.get(name)
  table = backbones.table(spec, args, include_top)
  names = [layer.name for layer in table]
  keras_names = [layer.name for layer in keras_model.layers]
  assert len(names) == len(keras_names), (len(names), len(keras_names))
  wrong = [(i, n, k) for i, (n, k) in enumerate(zip(names, keras_names)) if not same_name(n, k)]
  assert not wrong, wrong[:5]
  assert [layer.index for layer in table] == list(range(len(table)))
  with_weights = {layer.name for layer in keras_model.layers if layer.weights}
  assert {n for n, layer in zip(keras_names, table) if layer.has_variables} == with_weights
  shapes = backbones.variable_shapes(table)
  traced = jax.eval_shape(backbones.network(spec, args, include_top).init, jax.random.key(0),
                          jnp.zeros((1, size, size, 3)))
  assert shapes == {'batch_stats': {}, **traced}  # a network without BatchNorm traces no stats
  for layer, keras_layer in zip(table, keras_model.layers):
    keras_shapes = sorted(tuple(w.shape) for w in keras_layer.weights)
    ours = sorted(tuple(s.shape[:-2] + s.shape[:-3:-1]) if s.swap_last_axes else s.shape
                  for s in _slots(table, layer))
    assert ours == keras_shapes, (layer.name, ours, keras_shapes)


def _slots(table, layer):
  from tlflax.backbones.graph import slots_by_layer
  return slots_by_layer(table).get(layer.name, ())


def check_parity(tmp_path, name: str, args: dict, include_top: bool, size: int,
                 file_format: str, batch: int = 2, seed: int = 0, tolerance: float = TOLERANCE):
  """Ports the randomized Keras model from a `file_format` ('h5' in the published layout or
  'weights.h5') file and compares outputs (logits with the top) in full float32 precision, within
  `tolerance` (larger only where Keras's own float32 round-off is). Returns the largest absolute
  difference."""
  keras_model = random_keras_model(name, args, include_top, size, seed=seed,
                                   classifier_activation=None)
  if file_format == 'h5':
    path = tmp_path / f'{name}.h5'
    write_published_h5(path, keras_model)
  else:
    path = tmp_path / f'{name}.weights.h5'
    keras_model.save_weights(path)
  variables = load_pretrained(str(path), backbone=name, backbone_args=args,
                              include_top=include_top, input_size=size)
  spec = backbones.get(name)
  images = spec.preprocessing(np.random.default_rng(seed + 1).uniform(
      0, 255, (batch, size, size, 3))).astype(np.float32)
  expected = np.asarray(keras_model(images, training=False))
  model = backbones.network(spec, args, include_top, classifier_activation=None)
  with jax.default_matmul_precision('highest'):
    actual = np.asarray(jax.jit(model.apply)(variables, images))
  assert actual.shape == expected.shape
  assert np.std(expected) > 1e-3, 'the reference outputs carry no signal'
  np.testing.assert_allclose(actual, expected, atol=tolerance, rtol=0)
  return float(np.max(np.abs(actual - expected)))


def check_trainable_counts(name: str, args: dict, fine_tune_at, size: int):
  """Keras's `for layer in base_model.layers[:k]: layer.trainable = False` and tlflax's
  `fine_tune_at=k` (an index or a layer name) train the same number of parameters."""
  spec = backbones.get(name)
  table = backbones.table(spec, args)
  at = backbones.layer_position(table, fine_tune_at)
  base_model = keras_application(name, args, False, size)
  base_model.trainable = True
  for layer in base_model.layers[:at]:
    layer.trainable = False
  keras_count = sum(int(np.prod(w.shape)) for w in base_model.trainable_weights)
  params = backbones.variable_shapes(table)['params']
  mask = backbones.trainable_mask(params, table, at)
  count = sum(int(np.prod(p.shape)) for p, t in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(mask)) if t)
  assert count == keras_count
  return count


def check_float64(tmp_path, name: str, args: dict, include_top: bool, size: int):
  """Keras and tlflax in float64 on the same randomized weights agree within 1e-9."""
  import keras
  spec = backbones.get(name)
  images = spec.preprocessing(np.random.default_rng(3).uniform(0, 255, (2, size, size, 3)))
  policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
  keras.config.set_dtype_policy('float64')  # the layers' computations
  keras.config.set_floatx('float64')  # the input layer's dtype
  try:
    keras_model = random_keras_model(name, args, include_top, size, classifier_activation=None)
    expected = np.asarray(keras_model(images, training=False))
  finally:
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(floatx)
  assert expected.dtype == np.float64
  write_published_h5(tmp_path / f'{name}.h5', keras_model)
  with jax.enable_x64(True):
    variables = load_pretrained(str(tmp_path / f'{name}.h5'), backbone=name, backbone_args=args,
                                include_top=include_top, input_size=size)
    model = backbones.network(spec, args, include_top, classifier_activation=None,
                              dtype=jnp.float64)
    actual = np.asarray(jax.jit(model.apply)(variables, images))
  assert actual.dtype == np.float64
  np.testing.assert_allclose(actual, expected, atol=1e-9, rtol=0)
