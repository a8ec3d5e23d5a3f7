"""EfficientNet B0-B7: the layer tables are Keras's (in the layout of Keras's ImageNet model, which
has one Rescaling more than its `weights=None` model), and B0's Flax network equals Keras's on the
same random weights, loaded from both Keras file layouts."""
import inspect

import jax
import numpy as np
import pytest

import tlflax.backbones.efficientnet  # noqa: F401  (registers the family)
from backbone_checks import check_parity, check_table, check_trainable_counts
from keras_reference import random_keras_model, write_published_h5
from tlflax import backbones
from tlflax.backbones.efficientnet import IMAGENET_STDDEV_RGB, STEM_NAMES
from tlflax.classifier import Classifier, init_variables
from tlflax.export import keras_model

pytestmark = pytest.mark.usefixtures('float32_matmuls')

SMALLEST = 'efficientnet_b0'
OTHERS = [f'efficientnet_b{i}' for i in range(1, 8)]
WEIGHTS_NONE_LAYOUT = {'imagenet_rescaling': False}


@pytest.mark.parametrize('include_top', [False, True])
def test_smallest_layer_table_equals_keras(include_top):
  check_table(SMALLEST, {}, include_top, 64)


def test_weights_none_layout_table_equals_keras():
  check_table(SMALLEST, WEIGHTS_NONE_LAYOUT, False, 64)
  default, without = (backbones.table(backbones.get(SMALLEST), args)
                      for args in ({}, WEIGHTS_NONE_LAYOUT))
  assert len(default) == len(without) + 1
  assert default[3].name == STEM_NAMES[2] and default[4].name == without[3].name


@pytest.mark.parametrize('name', OTHERS)
def test_layer_table_equals_keras(name):
  check_table(name, {}, False, 32)


def test_keras_application_is_kerass_imagenet_model(tmp_path, monkeypatch):
  """Keras's own `weights='imagenet'` model, with the download replaced by a file written from
  `keras_application`'s model, has the same layers (class, configuration, and the names of those
  Keras does not name automatically) and outputs."""
  import keras
  from keras.src.applications import efficientnet as keras_source
  assert tuple(keras_source.IMAGENET_STDDEV_RGB) == IMAGENET_STDDEV_RGB
  ours = random_keras_model(SMALLEST, {}, False, 64)
  path = tmp_path / 'efficientnetb0_notop.h5'
  write_published_h5(path, ours)
  monkeypatch.setattr(keras_source.file_utils, 'get_file', lambda *args, **kwargs: str(path))
  imagenet = keras.applications.EfficientNetB0(include_top=False, weights='imagenet',
                                               input_shape=(64, 64, 3), pooling='avg')
  table = backbones.table(backbones.get(SMALLEST))
  assert len(imagenet.layers) == len(ours.layers) == len(table)
  automatic = {'input_layer', *STEM_NAMES}
  for layer, keras_layer, imagenet_layer in zip(table, ours.layers, imagenet.layers):
    assert type(keras_layer) is type(imagenet_layer)
    assert _unnamed_config(keras_layer) == _unnamed_config(imagenet_layer), layer.name
    assert layer.name in automatic or imagenet_layer.name == layer.name
  images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  np.testing.assert_allclose(imagenet(images, training=False), ours(images, training=False),
                             atol=1e-6, rtol=0)


def _unnamed_config(layer) -> dict:
  return {key: value for key, value in layer.get_config().items() if key != 'name'}


@pytest.mark.parametrize('include_top', [False, True])
@pytest.mark.parametrize('file_format', ['h5', 'weights.h5'])
@pytest.mark.parametrize('size', [96, 131])
def test_parity(tmp_path, size, file_format, include_top):
  difference = check_parity(tmp_path, SMALLEST, {}, include_top, size, file_format)
  print(f'{SMALLEST} size={size} {file_format} top={include_top}: max |diff| {difference:.2e}')


def test_export_builds_the_tables_layers():
  """Export's Keras backbone (`keras_application(..., weights=None)`) has the
  layers of the table, by name: those it gives the trained weights to."""
  spec = backbones.get(SMALLEST)
  model = keras_model.build(spec, backbones.arguments(spec, {}), 64, num_classes=2, dropout=0.2)
  names = [layer.name for layer in keras_model.backbone_of(model).layers]
  assert names == [layer.name for layer in backbones.table(spec)]


def test_export_gives_the_normalization_its_statistics(tmp_path):
  reference = random_keras_model(SMALLEST, {}, False, 64)
  write_published_h5(tmp_path / 'published.h5', reference)
  model = Classifier(backbone=SMALLEST, outputs=2)
  variables = init_variables(model, 64, jax.random.key(0), str(tmp_path / 'published.h5'))
  exported = keras_model.keras_classifier(model, variables, 64, num_classes=2, sigmoid=False)
  images = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  np.testing.assert_allclose(keras_model.backbone_of(exported)(images),
                             reference(images, training=False), atol=1e-5, rtol=0)


@pytest.mark.parametrize('fine_tune_at', ['default', 200])
def test_trainable_counts_equal_keras(fine_tune_at):
  at = backbones.get(SMALLEST).fine_tune_at if fine_tune_at == 'default' else fine_tune_at
  check_trainable_counts(SMALLEST, {}, at, 96)


def test_fine_tune_at_indices_follow_the_imagenet_layout():
  spec = backbones.get(SMALLEST)
  assert backbones.layer_position(backbones.table(spec), spec.fine_tune_at) == 148
  assert backbones.layer_position(backbones.table(spec, WEIGHTS_NONE_LAYOUT),
                                  spec.fine_tune_at) == 147


@pytest.mark.parametrize('name', [SMALLEST, *OTHERS])
def test_imagenet_weights_are_kerass_files(name):
  """File names, URLs and hashes as Keras's source makes them (`name + file_suffix`)."""
  import keras
  from keras.src.applications import efficientnet as keras_source
  spec = backbones.get(name)
  constructor = getattr(keras.applications, f'EfficientNetB{name[-1]}')
  keras_name = inspect.signature(constructor).parameters['name'].default
  hashes = keras_source.WEIGHTS_HASHES[f'b{name[-1]}']
  for include_top, suffix, file_hash in ((True, '.h5', hashes[0]),
                                         (False, '_notop.h5', hashes[1])):
    file = spec.imagenet_weights(include_top, spec.default_image_size)
    assert file.filename == keras_name + suffix
    assert file.url == keras_source.BASE_WEIGHTS_PATH + keras_name + suffix
    assert file.file_hash == file_hash


def test_imagenet_weights_refuse_what_keras_refuses():
  spec = backbones.get(SMALLEST)
  assert spec.imagenet_weights(False, 131).filename == 'efficientnetb0_notop.h5'
  with pytest.raises(ValueError, match='224x224'):
    spec.imagenet_weights(True, 131)
  with pytest.raises(ValueError, match='imagenet_rescaling'):
    spec.imagenet_weights(False, 224, **WEIGHTS_NONE_LAYOUT)
