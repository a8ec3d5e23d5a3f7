"""A new backbone is one file: `tests/tiny_backbone.py`, imported by a config file, trains,
resumes, evaluates, predicts and exports through main.py like the built-in ones."""
import json

import pytest

from backbone_checks import check_parity, check_table, check_trainable_counts
from runs import ROOT, make_synthetic_folder, run_main
from tlflax import backbones

import tiny_backbone

CONFIG = '''import sys
sys.path.insert(0, {tests!r})
import tiny_backbone  # registers 'tiny_resnet'
from configs.cats_dogs import get_config as tutorial


def get_config(variant=''):
  config = tutorial(variant)
  config.model.backbone = 'tiny_resnet'
  return config
'''


def test_the_table_and_the_keras_twin_agree(tmp_path):
  check_table(tiny_backbone.NAME, {}, True, 16)
  check_parity(tmp_path, tiny_backbone.NAME, {'width': 4}, False, 17, 'weights.h5')
  check_trainable_counts(tiny_backbone.NAME, {}, 'block_conv1', 16)


def test_registering_again_replaces_only_ones_own_entry():
  spec = backbones.get(tiny_backbone.NAME)
  assert backbones.register(spec) is spec  # the same module, e.g. a config file read twice
  with pytest.raises(ValueError, match="'mobilenet_v2' is already registered by "
                     'tlflax.backbones.mobilenet_v2'):
    backbones.register(spec.__class__(**{**spec.__dict__, 'name': 'mobilenet_v2'}))


def test_a_backbone_registered_in_a_config_file_runs_every_mode(tmp_path):
  from keras_reference import random_keras_model, write_published_h5
  config_file = tmp_path / 'tiny.py'
  config_file.write_text(CONFIG.format(tests=str(ROOT / 'tests')))
  weights = tmp_path / 'tiny.h5'
  write_published_h5(weights, random_keras_model(tiny_backbone.NAME, {}, False, 24))
  folder = make_synthetic_folder(tmp_path / 'images')
  workdir = tmp_path / 'run'
  flags = [f'--config.data.folder={folder}', f'--config.model.weights={weights}',
           '--config.image_size=24', '--config.batch_size=4',
           '--config.phases.feature_extraction.epochs=1',
           '--config.phases.feature_extraction.learning_rate=0.001',
           '--config.phases.fine_tune.epochs=1']

  code, output = run_main(workdir, flags, config_file=config_file)
  assert code == 0, output[-3000:]
  stored = json.loads((workdir / 'config.json').read_text())
  assert stored['model']['backbone'] == 'tiny_resnet'
  assert stored['model']['backbone_args'] == {'width': 8}
  assert stored['phases']['fine_tune']['fine_tune_at'] == 4  # 'default': block_conv1

  longer = [*flags[:-1], '--config.phases.fine_tune.epochs=2']
  code, output = run_main(workdir, longer, '--allow_config_change', config_file=config_file)
  assert code == 0, output[-3000:]
  assert 'after epoch 2' in output, output[-3000:]  # 'Resuming from WORKDIR after epoch 2'
  history = json.loads((workdir / 'history.json').read_text())
  assert [e['phase'] for e in history['epochs']] == ['feature_extraction', 'fine_tune',
                                                     'fine_tune']

  for mode in (['--mode=evaluate'], ['--mode=predict', f'--inputs={folder}'],
               ['--mode=export', '--formats=saved_model,keras,tflite']):
    code, output = run_main(workdir, longer, *mode, config_file=config_file)
    assert code == 0, (mode, output[-3000:])
  exported = json.loads((workdir / 'export' / 'export.json').read_text())
  assert exported, exported
  another = [*longer, '--config.model.backbone=mobilenet_v2', '--config.image_size=32']
  code, output = run_main(workdir, another, '--mode=evaluate', config_file=config_file)
  assert code == 1 and 'model.backbone=tiny_resnet' in output, output[-3000:]
