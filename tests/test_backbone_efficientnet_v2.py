"""EfficientNetV2: the layer tables are Keras's, and B0's Flax network equals Keras's on the same
random weights, loaded from both Keras file layouts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tlflax.backbones.efficientnet_v2  # noqa: F401  (registers the family)
from backbone_checks import check_parity, check_table, check_trainable_counts
from keras_reference import keras_application, random_keras_model, write_published_h5
from tlflax import backbones
from tlflax.weights import load_pretrained

pytestmark = pytest.mark.usefixtures('float32_matmuls')

SMALLEST = 'efficientnetv2_b0'
OTHERS = ['efficientnetv2_b1', 'efficientnetv2_b2', 'efficientnetv2_b3', 'efficientnetv2_s',
          'efficientnetv2_m', 'efficientnetv2_l']
KERAS_FILE_STEMS = {  # `name + file_suffix` in Keras's source
    'efficientnetv2_b0': 'efficientnetv2-b0', 'efficientnetv2_b1': 'efficientnetv2-b1',
    'efficientnetv2_b2': 'efficientnetv2-b2', 'efficientnetv2_b3': 'efficientnetv2-b3',
    'efficientnetv2_s': 'efficientnetv2-s', 'efficientnetv2_m': 'efficientnetv2-m',
    'efficientnetv2_l': 'efficientnetv2-l'}


@pytest.mark.parametrize('include_top', [False, True])
def test_smallest_layer_table_equals_keras(include_top):
  check_table(SMALLEST, {}, include_top, 64)


@pytest.mark.parametrize('name', OTHERS)
def test_layer_table_equals_keras(name):
  check_table(name, {}, False, 32)


# Each pair of a size, a file format and a top setting is checked once (the formats read the same
# arrays: the differences of both formats for one size and top were equal).
@pytest.mark.parametrize('size,file_format,include_top', [
    (96, 'h5', False), (96, 'weights.h5', True), (131, 'h5', True), (131, 'weights.h5', False)])
def test_parity(tmp_path, size, file_format, include_top):
  difference = check_parity(tmp_path, SMALLEST, {}, include_top, size, file_format)
  print(f'{SMALLEST} {size} {file_format} top={include_top}: max |difference| {difference:.2e}')


@pytest.mark.parametrize('fine_tune_at', [backbones.get(SMALLEST).fine_tune_at, 100])
def test_trainable_counts_equal_keras(fine_tune_at):
  check_trainable_counts(SMALLEST, {}, fine_tune_at, 64)


@pytest.mark.parametrize('name', [SMALLEST, *OTHERS])
def test_imagenet_weights_are_keras_files(name):
  spec = backbones.get(name)
  stem = KERAS_FILE_STEMS[name]
  top = spec.imagenet_weights(True, spec.default_image_size)
  no_top = spec.imagenet_weights(False, 96)
  assert (top.filename, no_top.filename) == (f'{stem}.h5', f'{stem}_notop.h5')
  base = 'https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/'
  assert (top.url, no_top.url) == (base + top.filename, base + no_top.filename)
  assert len(top.file_hash) == len(no_top.file_hash) == 32 and top.file_hash != no_top.file_hash
  with pytest.raises(ValueError, match='classifier top'):
    spec.imagenet_weights(True, spec.default_image_size + 1)


@pytest.mark.parametrize('name,last', [(SMALLEST, 'normalization'),
                                       ('efficientnetv2_s', 'rescaling')])
def test_built_in_preprocessing_equals_keras(name, last):
  """B0-B3 rescale and normalize, S, M and L rescale only: the output of the last preprocessing
  layer is Keras's."""
  import keras
  model = backbones.network(backbones.get(name))
  stop = backbones.layer_position(model.layers, last) + 1
  keras_model = keras_application(name, {}, False, 32)
  keras_preprocessing = keras.Model(keras_model.input, keras_model.layers[stop - 1].output)
  images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  actual = model.apply({}, images, stop=stop)[last]  # layers without variables
  np.testing.assert_allclose(actual, keras_preprocessing(images).numpy(), atol=1e-6, rtol=0)


def test_port_is_exact_in_float64(tmp_path):
  """In float64 on both sides B0's logits agree to 1e-9: the float32 gaps above are round-off.

  From the stem on: Keras's float64 Rescaling and Normalization cast their constants through
  float32 (`tf.cast` of a Python float), so both sides start from Keras's preprocessed images.
  """
  import keras
  images = np.random.default_rng(3).uniform(0, 255, (2, 64, 64, 3))
  policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
  keras.config.set_dtype_policy('float64')
  keras.config.set_floatx('float64')
  try:
    keras_model = random_keras_model(SMALLEST, {}, True, 64, classifier_activation=None)
    preprocessed, expected = (np.asarray(output) for output in keras.Model(
        keras_model.input, [keras_model.get_layer('stem_conv').input, keras_model.output])(images))
  finally:
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx(floatx)
  assert expected.dtype == np.float64
  write_published_h5(tmp_path / 'published.h5', keras_model)
  model = backbones.network(backbones.get(SMALLEST), {}, True, classifier_activation=None,
                            dtype=jnp.float64)
  start = backbones.layer_position(model.layers, 'stem_conv')
  with jax.enable_x64(True):
    variables = load_pretrained(str(tmp_path / 'published.h5'), backbone=SMALLEST,
                                include_top=True, input_size=64)
    actual = np.asarray(jax.jit(lambda v, x: model.apply(v, x, start=start))(
        variables, {'normalization': preprocessed}))
  assert actual.dtype == np.float64
  np.testing.assert_allclose(actual, expected, atol=1e-9, rtol=0)
