"""The registry around the families: preprocessing equal to Keras's, configs of older runs, and
one-line errors for bad backbone settings."""
import json

import numpy as np
import pytest

from tlflax import backbones
from tlflax import config as config_lib
from tlflax.errors import ConfigError
from tlflax.resume import config_as_json


@pytest.mark.parametrize('name,module', [
    ('mobilenet_v2', 'mobilenet_v2'), ('mobilenet_v3_small', 'mobilenet_v3'),
    ('efficientnet_b0', 'efficientnet'), ('efficientnetv2_b0', 'efficientnet_v2'),
    ('resnet50', 'resnet'), ('resnet50_v2', 'resnet_v2'), ('convnext_tiny', 'convnext')])
def test_preprocessing_is_kerass_preprocess_input(name, module):
  """What each family does outside the network is its Keras module's `preprocess_input` (the
  identity for those that preprocess inside the network)."""
  import keras
  images = np.random.default_rng(0).uniform(0, 255, (2, 9, 9, 3)).astype(np.float32)
  expected = np.asarray(getattr(keras.applications, module).preprocess_input(images.copy()))
  actual = np.asarray(backbones.get(name).preprocessing(images))
  np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
  assert not np.array_equal(images, expected) or module in (
      'mobilenet_v3', 'efficientnet', 'efficientnet_v2', 'convnext')


def test_a_config_of_a_run_from_before_backbones_is_the_same_config():
  """config.json of an older run (model.alpha, fine_tune_at 100) equals today's tutorial config
  once upgraded, so such runs resume, evaluate and finish their sweeps; another width differs."""
  from configs import cats_dogs
  now = config_as_json(cats_dogs.get_config())
  old = json.loads(json.dumps(now))
  model = old['model']
  del model['backbone'], model['backbone_args']
  model['alpha'] = 1.0
  old['phases']['fine_tune']['fine_tune_at'] = 100
  assert config_lib.differences(config_lib.upgrade_stored(old), now) == {}
  model['alpha'] = 0.5
  assert config_lib.differences(config_lib.upgrade_stored(old), now) == {
      'model.backbone_args.alpha': (0.5, 1.0)}


def test_fine_tune_at_takes_any_form_also_in_a_resolved_copy():
  from configs import cats_dogs
  config = cats_dogs.get_config().copy_and_resolve_references()
  for at, index in ((0, 0), ('block_13_expand', 116), ('120', 120), ('default', 100)):
    config.phases.fine_tune.fine_tune_at = at
    assert config_as_json(config)['phases']['fine_tune']['fine_tune_at'] == index


@pytest.mark.parametrize('args,message', [
    ({'alpha': None}, "alpha must be float like its default 1.0, got None"),
    ({'alpha': '0.35'}, "alpha must be float like its default 1.0, got '0.35'"),
    ({1: 2}, 'mobilenet_v2 takes no 1')])
def test_bad_backbone_args_are_one_line_errors(args, message):
  with pytest.raises(ConfigError, match=message):
    backbones.arguments(backbones.get('mobilenet_v2'), args)
