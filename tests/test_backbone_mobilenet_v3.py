"""MobileNetV3 Small and Large: the layer tables are Keras's, and the Flax network equals Keras's
on the same random weights, loaded from both Keras file layouts."""
import pytest

import tlflax.backbones.mobilenet_v3  # noqa: F401
from backbone_checks import check_parity, check_table, check_trainable_counts
from tlflax import backbones

pytestmark = pytest.mark.usefixtures('float32_matmuls')

SMALL, LARGE = 'mobilenet_v3_small', 'mobilenet_v3_large'


@pytest.fixture
def fresh_keras_session():
  """Keras numbers unnamed layers (`re_lu_13`, `activation_17`) per session; the tables hold the
  numbers of a fresh one, which `check_table` compares."""
  import keras
  keras.backend.clear_session()


@pytest.mark.usefixtures('fresh_keras_session')
@pytest.mark.parametrize('name,args,include_top', [
    (SMALL, {}, False), (SMALL, {}, True), (SMALL, {'minimalistic': True}, False),
    (LARGE, {}, False)])
def test_layer_table_equals_keras(name, args, include_top):
  check_table(name, args, include_top, 96)


@pytest.mark.parametrize('include_top,size,file_format', [
    (False, 96, 'h5'), (True, 131, 'h5'), (True, 96, 'weights.h5'), (False, 131, 'weights.h5')])
def test_parity_small(tmp_path, include_top, size, file_format):
  check_parity(tmp_path, SMALL, {}, include_top, size, file_format)


def test_parity_small_minimalistic(tmp_path):
  check_parity(tmp_path, SMALL, {'minimalistic': True}, True, 131, 'h5')


@pytest.mark.parametrize('fine_tune_at', ['expanded_conv_8_expand', 50])
def test_trainable_counts_equal_keras(fine_tune_at):
  check_trainable_counts(SMALL, {}, fine_tune_at, 96)


def test_fine_tune_at_names_a_block_start():
  assert backbones.layer_position(backbones.table(backbones.get(SMALL)),
                                  backbones.get(SMALL).fine_tune_at) == 109
  assert backbones.layer_position(backbones.table(backbones.get(LARGE)),
                                  backbones.get(LARGE).fine_tune_at) == 124


@pytest.mark.parametrize('name,args,include_top,filename', [
    (SMALL, {}, True, 'weights_mobilenet_v3_small_224_1.0_float.h5'),
    (SMALL, {}, False, 'weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5'),
    (SMALL, {'alpha': 0.75}, False, 'weights_mobilenet_v3_small_224_0.75_float_no_top_v2.h5'),
    (SMALL, {'minimalistic': True}, True,
     'weights_mobilenet_v3_small_minimalistic_224_1.0_float.h5'),
    (LARGE, {}, True, 'weights_mobilenet_v3_large_224_1.0_float.h5'),
    (LARGE, {}, False, 'weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5'),
    (LARGE, {'alpha': 0.75}, True, 'weights_mobilenet_v3_large_224_0.75_float.h5'),
    (LARGE, {'minimalistic': True}, False,
     'weights_mobilenet_v3_large_minimalistic_224_1.0_float_no_top_v2.h5')])
def test_imagenet_weights_are_keras_files(name, args, include_top, filename):
  spec = backbones.get(name)
  weights = spec.imagenet_weights(include_top, 160, **backbones.arguments(spec, args))
  assert weights.filename == filename
  assert weights.url == ('https://storage.googleapis.com/tensorflow/keras-applications/'
                         f'mobilenet_v3/{filename}')
  assert len(weights.file_hash) == 32


@pytest.mark.parametrize('args', [{'alpha': 0.5}, {'alpha': 0.75, 'minimalistic': True}])
def test_imagenet_weights_reject_unpublished_widths(args):
  spec = backbones.get(SMALL)
  with pytest.raises(ValueError, match='alpha'):
    spec.imagenet_weights(False, 224, **backbones.arguments(spec, args))
