"""Ported-params files, the conversion command, and clear errors for files that do not fit."""
import jax
import numpy as np
import pytest

from keras_reference import random_keras_model, write_published_h5
from tlflax.weights import WeightsError, load_pretrained, read_weights_file, save_variables
from tlflax.weights.__main__ import main as convert_main
from tlflax.weights.native import load_variables

pytestmark = pytest.mark.usefixtures('float32_matmuls')


@pytest.fixture(scope='module')
def published_035(tmp_path_factory):
  path = tmp_path_factory.mktemp('h5') / 'alpha035.h5'
  write_published_h5(path, random_keras_model('mobilenet_v2', {'alpha': 0.35}, True, 96))
  return path


def assert_same_variables(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_native_round_trip_keeps_variables_and_metadata(tmp_path, published_035):
  args = {'alpha': 0.35}
  variables = load_pretrained(str(published_035), backbone_args=args, include_top=True)
  path = save_variables(tmp_path / 'ported.msgpack', variables, backbone='mobilenet_v2',
                        backbone_args=args, source='test')
  restored, metadata = load_variables(path)
  assert metadata == {'backbone': 'mobilenet_v2', 'backbone_args': args, 'source': 'test'}
  assert_same_variables(restored, variables)
  assert_same_variables(load_pretrained(str(path), backbone_args=args, include_top=True),
                        variables)


def test_a_ported_file_of_another_backbone_stops_naming_both(tmp_path, published_035):
  variables = load_pretrained(str(published_035), backbone_args={'alpha': 0.35})
  path = save_variables(tmp_path / 'other.msgpack', variables, backbone='some_other_net')
  with pytest.raises(WeightsError, match='holds some_other_net weights; the model is '
                     'mobilenet_v2'):
    load_pretrained(str(path), backbone_args={'alpha': 0.35})


def test_convert_command_ports_tflite(tmp_path, tflite_path, capsys):
  output = tmp_path / 'imagenet_no_top.msgpack'
  assert convert_main([str(tflite_path), str(output)]) == 0
  assert '2,223,872 parameters' in capsys.readouterr().out
  assert_same_variables(load_pretrained(str(output)), load_pretrained(str(tflite_path)))
  leaves = jax.tree.leaves(load_variables(output)[0])
  assert {leaf.dtype for leaf in leaves} == {np.dtype(np.float32)}  # the model's, not float64
  values = sum(leaf.size for leaf in leaves)  # parameters and BatchNorm statistics
  assert output.stat().st_size < 4 * values * 1.01


def test_convert_command_reports_errors_without_traceback(tmp_path, capsys):
  assert convert_main([str(tmp_path / 'missing.h5'), str(tmp_path / 'out.msgpack')]) == 1
  assert 'missing.h5 does not exist' in capsys.readouterr().err
  assert convert_main([str(tmp_path), str(tmp_path / 'out.msgpack')]) == 1
  assert f'{tmp_path} is a folder; the weights are one file' in capsys.readouterr().err
  assert convert_main(['imagenet', str(tmp_path / 'out.npz')]) == 2
  assert not (tmp_path / 'out.msgpack').exists()
  existing = tmp_path / 'existing.msgpack'
  existing.write_text('mine')
  assert convert_main(['imagenet', str(existing)]) == 2
  assert 'existing.msgpack exists' in capsys.readouterr().err
  assert existing.read_text() == 'mine'


@pytest.mark.parametrize('kept', [100, 2_000_000])
def test_a_truncated_tflite_file_is_a_weights_error(tmp_path, tflite_path, kept, capsys):
  """A download cut short: the flatbuffer's offsets point past its end."""
  truncated = tmp_path / 'truncated.tflite'
  truncated.write_bytes(tflite_path.read_bytes()[:kept])
  with pytest.raises(WeightsError, match='truncated.tflite is damaged'):
    read_weights_file(truncated)
  assert convert_main([str(truncated), str(tmp_path / 'out.msgpack')]) == 1
  assert 'truncated.tflite is damaged' in capsys.readouterr().err


def test_a_tflite_file_of_another_width_says_so(tflite_path):
  with pytest.raises(WeightsError) as error:
    read_weights_file(tflite_path, backbone_args={'alpha': 0.5})
  assert 'has 32 output channels, expected 16 (another width?)' in str(error.value)
  assert 'damaged' not in str(error.value)


def test_top_is_dropped_on_request_but_never_invented(published_035):
  without_top = load_pretrained(str(published_035), backbone_args={'alpha': 0.35},
                                include_top=False)
  assert 'predictions' not in without_top['params']


def test_file_without_top_cannot_give_a_classifier(tmp_path):
  path = tmp_path / 'no_top.h5'
  write_published_h5(path, random_keras_model('mobilenet_v2', {'alpha': 0.35}, False, 96))
  with pytest.raises(WeightsError,
                     match=r'missing \(2\): params/predictions/bias, params/predictions/kernel'):
    load_pretrained(str(path), backbone_args={'alpha': 0.35}, include_top=True)


def test_wrong_alpha_lists_mis_shaped_variables(published_035):
  with pytest.raises(WeightsError, match=r'wrong shape \(\d+\): .*\(144,\) \(expected \(384,\)\)'):
    load_pretrained(str(published_035), backbone_args={'alpha': 1.0})


@pytest.mark.parametrize('name,content,message', [
    ('garbage.h5', b'not hdf5', 'not a readable HDF5'),
    ('garbage.tflite', b'\x00' * 64, 'not a TFLite flatbuffer'),
    ('garbage.msgpack', b'\xc1junk', 'not a tlflax ported-weights file'),
    ('weights.npz', b'', 'unknown weights format')])
def test_unreadable_files_fail_naming_the_file(tmp_path, name, content, message):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(WeightsError, match=message) as error:
    read_weights_file(path)
  assert name in str(error.value)


def test_hdf5_that_is_not_keras_fails_clearly(tmp_path):
  import h5py
  path = tmp_path / 'other.h5'
  with h5py.File(path, 'w') as f:
    f.create_dataset('x', data=np.zeros(3))
  with pytest.raises(WeightsError, match='not a Keras weights file'):
    read_weights_file(path)


def test_sha256_of_a_local_file_is_checked(published_035):
  with pytest.raises(WeightsError, match='sha256'):
    load_pretrained(str(published_035), backbone_args={'alpha': 0.35}, sha256='f' * 64)
