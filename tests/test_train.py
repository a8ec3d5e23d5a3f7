"""The two-phase trainer: freezing, config errors, outputs, resume, and the CLI."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import serialization, traverse_util
import tensorflow as tf
from PIL import Image

from runs import ROOT, cats_dogs, run_main
from tlflax import optim, param_groups, weights
from tlflax.classifier import Classifier, backbone_layers, init_variables
from tlflax.config import ConfigError, ordered_phases, phase
from tlflax.data import transforms
from tlflax.predict import predict
from tlflax.evaluation import summary
from tlflax.objectives import Objective
from tlflax.steps import TrainState, make_train_step
from tlflax import resume
from tlflax.train import check_config, evaluate_checkpoint, train_and_evaluate
from tlflax.backbones.preprocessing import UNIT_RANGE


@pytest.mark.parametrize('fine_tune_at,trainable', [(None, 1_281), (100, 1_862_721)])
def test_parameter_counts_equal_the_tutorials_keras_model(fine_tune_at, trainable):
  """The tutorial's model: MobileNetV2 base + pooling + dropout + Dense(1), frozen like Keras."""
  import keras
  base = keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False,
                                        weights=None)
  base.trainable = fine_tune_at is not None
  for layer in base.layers[:fine_tune_at or 0]:
    layer.trainable = False
  inputs = keras.Input((160, 160, 3))
  outputs = keras.layers.Dense(1)(keras.layers.Dropout(0.2)(
      keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))))
  keras_model = keras.Model(inputs, outputs)
  keras_trainable = sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)

  model = Classifier()
  params = jax.eval_shape(lambda: init_variables(model, 160, jax.random.key(0), 'none'))['params']
  groups = param_groups.param_groups(params, backbone_layers(model), fine_tune_at)
  counts = param_groups.count_params(params, groups)
  assert counts['trainable'] == keras_trainable == trainable


def test_pretrained_init_is_the_file_plus_a_fresh_head(tiny_run):
  """With pretrained weights only the head is initialized, in the tree the checkpoints expect."""
  model = Classifier(backbone_args={'alpha': 0.35})
  variables = init_variables(model, 32, jax.random.key(3), tiny_run.model.weights)
  abstract = jax.eval_shape(lambda: init_variables(model, 32, jax.random.key(3), 'none'))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, abstract)
  backbone = weights.load_pretrained(tiny_run.model.weights, backbone_args={'alpha': 0.35},
                                     include_top=False, input_size=32)
  ported = {'params': variables['params']['backbone'],
            'batch_stats': variables['batch_stats']['backbone']}
  for a, b in zip(jax.tree.leaves(backbone), jax.tree.leaves(ported)):
    np.testing.assert_array_equal(a, b)
  head = variables['params']['head']['kernel']
  assert np.std(head) > 0.01  # initialized, not zeros
  np.testing.assert_array_equal(head, init_variables(
      model, 32, jax.random.key(3), tiny_run.model.weights)['params']['head']['kernel'])


def test_a_phase_moves_only_trainable_parameters():
  """Frozen parameters and all BatchNorm statistics stay bit-identical; trainable ones move."""
  model = Classifier(backbone_args={'alpha': 0.35})
  variables = init_variables(model, 48, jax.random.key(0), 'none')
  groups = param_groups.param_groups(variables['params'], backbone_layers(model), 120)
  tx = optim.make_optimizer(phase(1, 'rmsprop', 1e-3), groups, steps_per_epoch=1)
  step = make_train_step(model.apply, tx, groups, Objective(2, sigmoid=True), jax.random.key(1))
  before = jax.tree.map(np.array, variables)
  state = TrainState.create(variables, tx)
  rng = np.random.default_rng(0)
  for _ in range(3):
    batch = {'image': rng.uniform(-1, 1, (4, 48, 48, 3)).astype(np.float32),
             'label': np.array([0, 1, 0, 1], np.int32), 'mask': np.ones(4, bool)}
    state, _ = step(state, batch)
  flat_before = traverse_util.flatten_dict(before['params'])
  flat_after = traverse_util.flatten_dict(state.params)
  flat_groups = traverse_util.flatten_dict(groups)
  frozen = [k for k in flat_groups if flat_groups[k] == 'frozen']
  trainable = [k for k in flat_groups if flat_groups[k] == 'trainable']
  assert len(frozen) > 100 and len(trainable) > 10
  for key in frozen:
    assert np.array_equal(flat_before[key], flat_after[key]), key
  assert all(not np.array_equal(flat_before[k], flat_after[k]) for k in trainable
             if k[-1] == 'kernel')
  for a, b in zip(jax.tree.leaves(before['batch_stats']), jax.tree.leaves(state.batch_stats)):
    assert np.array_equal(a, b)
  # set_to_zero keeps no state: the optimizer holds one accumulator per trainable leaf only
  state_size = sum(np.size(x) for x in jax.tree.leaves(state.opt_state))
  trainable_size = sum(np.size(flat_after[k]) for k in trainable)
  assert state_size == trainable_size


def config_file_with(change):
  """A config as a user's config file could build it: the tutorial's, changed, built afresh."""
  values = cats_dogs.get_config().to_dict()
  change(values)
  return ml_collections.ConfigDict(values)


@pytest.mark.parametrize('change,message', [
    (lambda c: c['model'].update(widht=1.0), "unknown config key 'model.widht'"),
    (lambda c: c.update(image_size='160'), "'image_size' must be int"),
    (lambda c: c['data'].update(flip=1), "'data.flip' must be bool"),
    (lambda c: c['phases']['fine_tune'].update(optimizer='adamax'), 'phases.fine_tune: optimizer'),
    (lambda c: c['phases']['fine_tune'].update(fine_tune_at=400), 'fine_tune_at must be'),
    (lambda c: c['phases']['fine_tune'].update(epochs=2.5), 'phases.fine_tune.epochs must be int'),
    (lambda c: c['phases']['fine_tune'].update(betas=0.9), 'phases.fine_tune must have'),
    (lambda c: c['phases']['fine_tune']['schedule'].update(name='linear'),
     'phases.fine_tune: schedule.name must be one of'),
    (lambda c: c['phases']['fine_tune']['schedule'].update(name='warmup_cosine'),
     "'warmup_cosine' needs schedule.warmup_epochs"),
    (lambda c: c['phases']['fine_tune']['schedule'].update(warmup_epochs=1.0, warmup_steps=5),
     'warmup_epochs or schedule.warmup_steps, not both'),
    (lambda c: c['phases']['fine_tune']['schedule'].update(warmup_steps=1.5),
     'phases.fine_tune.schedule.warmup_steps must be int'),
    (lambda c: c['phases']['fine_tune'].update(weight_decay=1e-4), "set optimizer='adamw'"),
    (lambda c: c['phases']['fine_tune'].update(optimizer='adam', momentum=0.9),
     'momentum is an option of sgd and rmsprop'),
    (lambda c: c['phases']['fine_tune'].update(nesterov=True), 'nesterov needs momentum'),
    (lambda c: c['phases']['fine_tune'].update(weight_decay_exclude='(bias'), 'not a regex'),
    (lambda c: c['phases']['fine_tune'].update(param_groups=('Conv1=1', '.*=1')),
     r"rule\(s\) \['Conv1=1'\] decide no layer"),  # Conv1 is below fine_tune_at=100
    (lambda c: c['phases']['fine_tune'].update(fine_tune_at=0, param_groups=('head=1',)),
     r'param_groups leaves 104 layer\(s\) uncovered: Conv1, bn_Conv1, expanded_conv_depthwise'),
    (lambda c: c['phases']['fine_tune'].update(param_groups=('.*=freeze', 'head=1')),
     r"rule\(s\) \['head=1'\] decide no layer"),
    (lambda c: c['phases']['fine_tune'].update(param_groups=('.*=fast',)),
     "VALUE must be a multiplier >= 0 or 'freeze'"),
    (lambda c: c['phases']['fine_tune']['early_stopping'].update(patience=-1),
     'early_stopping.patience and min_delta must be >= 0'),
    (lambda c: c.update(best_metric='val_f1'), 'best_metric must be one of'),
    (lambda c: c['data'].update(split_scheme='x'), 'split_scheme'),
    (lambda c: c.update(phases={}), 'phases is empty'),
    (lambda c: c['model'].update(backbone_args={'alpha': 0.0}, weights='none'),
     'alpha must be positive'),
    (lambda c: c['model'].update(backbone_args={'alpha': 0.6}),
     r'model.weights=imagenet: Keras publishes ImageNet MobileNetV2 weights for alpha in'),
    (lambda c: c['model'].update(backbone_args={'width': 1}),
     r'model.backbone_args: mobilenet_v2 takes no width \(its arguments: alpha\)'),
    (lambda c: c['model'].update(backbone_args=0.35), 'model.backbone_args must be a dict'),
    (lambda c: c['model'].update(backbone='mobilenet'),
     "unknown backbone 'mobilenet'; registered: .*mobilenet_v2"),
    (lambda c: c.update(image_size=31), "image_size=31 is below mobilenet_v2's minimum of 32"),
    (lambda c: c['phases']['fine_tune'].update(fine_tune_at='block_11_expnd'),
     "fine_tune_at='block_11_expnd' is not a layer of this backbone; nearest: block_11_expand"),
    (lambda c: c['phases']['fine_tune'].update(fine_tune_at=156),
     r'fine_tune_at must be a Keras layer index in 0..155'),
    (lambda c: c['data'].update(shuffle_buffer=0), 'data.shuffle_buffer must be >= 1'),
    (lambda c: c['data'].update(residency='gpu'), r"data.residency must be one of \('auto'"),
    (lambda c: c['data'].update(memory_share=0.0), r'data.memory_share must be in \(0, 1\]'),
    (lambda c: c.update(seed=-1), r'seed must be in \[0, 2\*\*32\)'),
    (lambda c: c.update(checkpoints_to_keep=0), 'checkpoints_to_keep must be >= 1'),
    (lambda c: c.update(phase_order=('fine_tune',)), r"leaves out \['feature_extraction'\]"),
    (lambda c: c.update(phase_order=('fine_tune', 'fine_tune', 'feature_extraction')),
     r"names twice \['fine_tune'\]"),
    (lambda c: c.update(phase_order=('head', 'fine_tune', 'feature_extraction')),
     r"names undefined phases \['head'\]"),
    (lambda c: c.pop('phase_order'), 'config has no phase_order'),
    (lambda c: c['compute'].update(cache_frozen=True), 'compute.cache_frozen needs data.flip'),
    (lambda c: c['data'].update(flip=False, rotation_factor=0.0, augment_ops='flip_lr') or
     c['compute'].update(cache_frozen=True), 'compute.cache_frozen needs')])
def test_bad_configs_fail_before_any_work_naming_the_key(change, message):
  with pytest.raises(ConfigError, match=message):
    check_config(config_file_with(change))


def test_default_and_local_configs_are_valid():
  check_config(cats_dogs.get_config())
  local = cats_dogs.get_config('local')
  check_config(local)
  assert [name for name, _ in ordered_phases(local)] == ['feature_extraction', 'fine_tune']
  assert local.phases.fine_tune.fine_tune_at == 'default'
  assert resume.config_as_json(local)['phases']['fine_tune']['fine_tune_at'] == 100  # as Keras
  assert local.phases.fine_tune.learning_rate == 1e-5


def test_end_to_end_run_writes_every_output(tiny_run, tmp_path, caplog, monkeypatch):
  from tlflax import plots
  from tlflax.data.sources import folder_splits
  grid = {}
  gallery = plots.image_gallery

  def spied_gallery(images, titles, title, path, columns=4, marked=()):
    grid.update(titles=titles, marked=set(marked))
    gallery(images, titles, title, path, columns, marked)
  monkeypatch.setattr(plots, 'image_gallery', spied_gallery)  # predictions.png is the last
  workdir = tmp_path / 'run'
  history = train_and_evaluate(tiny_run, workdir).history
  test = folder_splits(tiny_run.data.folder)['test']
  chosen = np.random.default_rng(tiny_run.seed).permutation(test.num_examples)[:9]
  shown = [Path(test.locate(i)) for i in chosen]
  assert [t.split('\n')[0] for t in grid['titles']] == [f'true {p.parent.name}' for p in shown]
  predicted = [t.split('\n')[1].split()[1] for t in grid['titles']]
  assert grid['marked'] == {i for i, p in enumerate(shown) if predicted[i] != p.parent.name}
  assert all(('WRONG' in t) == (i in grid['marked']) for i, t in enumerate(grid['titles']))
  for name in ('config.json', 'history.json', 'test_metrics.json', 'final_variables.msgpack',
               'learning_curves.png', 'predictions.png', 'phases/feature_extraction',
               'phases/fine_tune', 'checkpoints', 'report.html'):
    assert (workdir / name).exists(), name
  for split in ('validation', 'test'):  # the calibration's reliability diagrams
    assert Image.open(workdir / 'evaluation' / f'{split}_reliability.png').size == (500, 500)
  assert Image.open(workdir / 'learning_curves.png').size == (800, 800)
  assert Image.open(workdir / 'predictions.png').size[0] == 900  # 3 columns of 3 inches
  saved = json.loads((workdir / 'history.json').read_text())
  assert [e['phase'] for e in saved['epochs']] == ['feature_extraction', 'fine_tune', 'fine_tune']
  assert [e['epoch'] for e in saved['epochs']] == [1, 2, 3]
  assert set(saved['initial']) == {'val_loss', 'val_accuracy'}
  assert saved['epochs'][-1]['loss'] < saved['epochs'][0]['loss']  # it learns
  assert history['test'] == json.loads((workdir / 'test_metrics.json').read_text())

  report = evaluate_checkpoint(tiny_run, workdir)
  assert summary(report) == pytest.approx(history['test'], abs=1e-6)
  rows = list(predict(tiny_run, workdir, str(Path(tiny_run.data.folder) / 'test'),
                      calibrated=False))
  assert len(rows) == 12
  # each row is the final model's own verdict on that file, computed here independently
  final = serialization.msgpack_restore((workdir / 'final_variables.msgpack').read_bytes())
  images = np.stack([  # resized and rounded to uint8, as training and prediction see them
      UNIT_RANGE(tf.round(transforms.decode_and_resize(Path(p).read_bytes(), 32))).numpy()
      for p, _, _, _ in rows])
  logits = Classifier(backbone_args={'alpha': 0.35}).apply(final, images)
  p_dog = np.asarray(jax.nn.sigmoid(logits[:, 0]))
  assert [label for _, label, _, _ in rows] == ['dog' if p > 0.5 else 'cat' for p in p_dog]
  np.testing.assert_allclose([p for _, _, p, _ in rows], np.maximum(p_dog, 1 - p_dog), atol=1e-5)
  assert [[name for name, _ in top] for _, _, _, top in rows] == [
      ['dog', 'cat'] if p > 0.5 else ['cat', 'dog'] for p in p_dog]  # top k = both classes
  np.testing.assert_allclose([top[1][1] for _, _, _, top in rows], np.minimum(p_dog, 1 - p_dog),
                             atol=1e-5)
  # by default, the probabilities of the logits divided by the temperature the run fitted
  temperature = json.loads((workdir / 'calibration.json').read_text())['epoch 3']['temperature']
  assert temperature == history['test']['temperature']
  calibrated = list(predict(tiny_run, workdir, str(Path(tiny_run.data.folder) / 'test')))
  p_calibrated = np.asarray(jax.nn.sigmoid(logits[:, 0] / temperature))
  np.testing.assert_allclose([p for _, _, p, _ in calibrated],
                             np.maximum(p_calibrated, 1 - p_calibrated), atol=1e-5)
  assert [label for _, label, _, _ in calibrated] == [label for _, label, _, _ in rows]
  verdicts = {Path(path).name: label for path, label, _, _ in rows}
  assert predicted == [verdicts[p.name] for p in shown]  # the grid shows the model's verdicts
  correct = sum(label == Path(path).parent.name for path, label, _, _ in rows)
  assert correct == round(history['test']['accuracy'] * 12)  # predict agrees with evaluate
  assert correct >= 9  # the two synthetic classes are easy: it learnt them
  csv = (workdir / 'predictions_checkpoint_latest_2.csv').read_text().splitlines()
  assert csv[0] == 'path,label,probability,class_1,probability_1,class_2,probability_2'
  assert len(csv) == 13
  test_folder = Path(tiny_run.data.folder) / 'test'
  assert len(list(predict(tiny_run, workdir, str(test_folder / '*' / '*.0.jpg')))) == 2  # a glob
  assert len(list(predict(tiny_run, workdir, str(test_folder / 'dog' / 'dog.3.jpg')))) == 1
  broken = tmp_path / 'inputs'
  broken.mkdir()
  for name in ('broken.jpg', 'z_broken.jpg'):  # unreadable in the middle and at the end
    (broken / name).write_bytes(b'not a jpeg')
  for name in ('a_fine.png', 'fine.png'):
    (broken / name).write_bytes((test_folder / 'cat' / 'cat.1.jpg').read_bytes())
  caplog.set_level(logging.WARNING)
  assert [Path(p).name for p, *_ in predict(tiny_run, workdir, str(broken))] == ['a_fine.png',
                                                                                'fine.png']
  warned = [r.getMessage() for r in caplog.records if 'not a readable image' in r.getMessage()]
  assert [Path(m.split()[1].rstrip(':')).name for m in warned] == ['broken.jpg', 'z_broken.jpg']


def one_error_line(output: str) -> str:
  """The output's only `error:` line (failing if there are none or several, or a traceback)."""
  assert 'Traceback' not in output, output[-3000:]
  errors = [line for line in output.splitlines() if 'error' in line.lower()]
  assert len(errors) == 1, output[-3000:]
  return errors[0]


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
  missing = ['--config.data.folder=/no/such/folder', '--config.model.weights=none']
  code, output = run_main(tmp_path / 'w', missing)
  assert code == 1
  assert one_error_line(output) == ('error: image folder /no/such/folder does not exist or is '
                                    'not a folder')
  assert output.count('/no/such/folder') == 1  # printed once, not logged as well
  # the libraries' own lines (TensorFlow's import, JAX's backends) are hidden, unless asked for
  library_lines = ("Unable to initialize backend 'tpu'", 'absl::InitializeLog', 'oneDNN')
  assert not any(line in output for line in library_lines), output[-3000:]
  code, with_libraries = run_main(tmp_path / 'w', [*missing, '--library_logs'])
  assert code == 1 and any(line in with_libraries for line in library_lines), output[-3000:]
  code, output = run_main(tmp_path / 'w', ['--config.phases.fine_tune.betas=0.9'])
  assert code == 2 and "unknown config key 'betas'" in one_error_line(output)
  code, output = run_main(tmp_path / 'w', [], '--mode=evaluate')
  assert code == 1 and f'--workdir {tmp_path}/w does not exist' in one_error_line(output)
  (tmp_path / 'empty').mkdir()
  code, output = run_main(tmp_path / 'empty', [], '--mode=evaluate')
  assert code == 1 and 'no checkpoint' in one_error_line(output)
  # a comma-separated phase_order override is split into names
  code, output = run_main(tmp_path / 'w', ['--config.phase_order=fine_tune,fine_tune'])
  assert code == 1 and "names twice ['fine_tune']" in one_error_line(output)


def test_the_prediction_grid_shows_true_and_predicted_classes_and_marks_the_wrong(monkeypatch,
                                                                                  tmp_path):
  from tlflax import plots
  seen = {}
  monkeypatch.setattr(plots, 'image_gallery', lambda images, titles, title, path, columns,
                      marked: seen.update(titles=titles, marked=marked))
  plots.prediction_grid(np.zeros((3, 8, 8, 3)), ['cat', 'dog', 'cat'], ['cat', 'cat', 'cat'],
                        [0.9, 0.7, 0.6], tmp_path / 'grid.png')
  assert seen['titles'] == ['true cat\npredicted cat (0.90)',
                            'true dog\npredicted cat (0.70) WRONG',
                            'true cat\npredicted cat (0.60)']
  assert seen['marked'] == {1}


def test_a_misspelt_key_and_a_missing_config_file_are_plain_lines(tmp_path):
  code, output = run_main(tmp_path / 'w', ['--config.phases.fine_tune.learning_rat=3'])
  assert code == 2
  assert one_error_line(output).startswith(
      "error: --config.phases.fine_tune.learning_rat: unknown config key 'learning_rat' (did you "
      "mean 'learning_rate' instead of 'learning_rat'?)")
  code, output = run_main(tmp_path / 'w', [], config_file='configs/nope.py')
  assert code == 2
  assert "No such file or directory: 'configs/nope.py'" in one_error_line(output)
  code, output = run_main(tmp_path / 'w', [], config_file='configs/cats_dogs.py:lcoal')
  assert code == 2 and "unknown config variant 'lcoal'" in one_error_line(output)
  no_get_config, syntax_error = tmp_path / 'no_get_config.py', tmp_path / 'syntax_error.py'
  no_get_config.write_text('x = 1\n')
  syntax_error.write_text('def get_config(:\n')
  code, output = run_main(tmp_path / 'w', [], config_file=no_get_config)
  assert code == 2 and one_error_line(output).startswith(
      f'error: --config={no_get_config}: the file defines no get_config()')
  code, output = run_main(tmp_path / 'w', [], config_file=syntax_error)
  assert code == 2 and one_error_line(output).startswith(
      f'error: --config: {syntax_error}, line 1: invalid syntax')
  returns_none = tmp_path / 'returns_none.py'
  returns_none.write_text('def get_config():\n  return None\n')
  code, output = run_main(tmp_path / 'w', [], config_file=returns_none)
  assert code == 2 and one_error_line(output).startswith(
      f'error: --config={returns_none}: get_config() returned None')
  raises = tmp_path / 'raises.py'
  raises.write_text('import math\n\n\ndef get_config():\n  return math.sqr(2)\n')
  code, output = run_main(tmp_path / 'w', [], config_file=raises)
  assert code == 2 and one_error_line(output).startswith(
      f"error: --config: {raises}, line 5: AttributeError: module 'math' has no attribute 'sqr'")
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('flags,message', [
    (['--workdir='], 'error: flag --workdir=: --workdir is empty: it names a folder. Run main.py '
                     '--helpfull for the flags.'),
    (['--workdir=w', '--split=train'], 'error: --split is for --mode=evaluate. Run main.py '
                                       '--helpfull for the flags.'),
    (['--workdir=w', '--mode=predict'], 'error: --mode=predict needs --inputs=PATH. Run main.py '
                                        '--helpfull for the flags.'),
    (['--workdir=w', '--mode=predict', '--inputs=x', '--model='],
     'error: flag --model=: --model is empty: it names a .tflite file. Run main.py --helpfull for '
     'the flags.')])
def test_usage_errors_are_one_line_not_the_help(flags, message):
  """An empty --workdir (an unset shell variable) is not the current folder; flags that do not go
  together say so in one line, with status 2, not with the whole help."""
  done = subprocess.run([sys.executable, str(ROOT / 'main.py'),
                         f'--config={ROOT}/configs/cats_dogs.py', *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2 and one_error_line(done.stdout + done.stderr) == message


def read_only_command(folder: Path, command: list) -> list:
  """`command` run where `folder` cannot be written: a read-only tmpfs mounted over it in a mount
  namespace of its own (as root, whom file permissions do not stop), else permissions 555."""
  if os.geteuid() != 0:
    folder.chmod(0o555)
    return command
  if not shutil.which('unshare') or subprocess.run(['unshare', '--mount', 'true']).returncode:
    pytest.skip('running as root without a mount namespace of its own (unshare --mount: no '
                'CAP_SYS_ADMIN): no way to make a read-only folder')
  return ['unshare', '--mount', 'sh', '-c',
          'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(folder), *command]


def test_a_workdir_that_is_a_file_or_read_only_stops_with_one_line(tmp_path):
  a_file = tmp_path / 'file'
  a_file.write_text('not a folder')
  code, output = run_main(a_file, ['--config.model.weights=none'])
  assert code == 1
  assert one_error_line(output) == f'error: the workdir {a_file} is a file; name a folder'
  read_only = tmp_path / 'read_only'
  read_only.mkdir()
  command = [sys.executable, str(ROOT / 'main.py'), f'--config={ROOT}/configs/cats_dogs.py',
             f'--workdir={read_only}', '--config.model.weights=none']
  done = subprocess.run(read_only_command(read_only, command), cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  output = done.stdout + done.stderr
  assert done.returncode == 1
  assert one_error_line(output) == (f'error: cannot write in the workdir {read_only}: Read-only '
                                    'file system' if os.geteuid() == 0 else
                                    f'error: cannot write in the workdir {read_only}: Permission '
                                    'denied')


def test_recipe_on_real_weights_and_data_reaches_95_percent(real_cats_dogs_run):
  """configs/cats_dogs.py:local,cached: ImageNet weights (shared TFLite), the shared mini set, 2+2
  epochs at 160x160, on cached frozen activations (no augmentation; 3 minutes instead of 5). Keras
  with the same weights and data, augmented: 0.968 after phase 2's first epoch."""
  config, _, result = real_cats_dogs_run
  history = result.history
  # layer 100 is a ReLU: the first layer with trained parameters, where the cache ends, is 101
  assert [history['phases'][p]['cached_from_layer'] for p in config.phase_order] == [155, 101]
  assert history['epochs'][-1]['phase'] == 'fine_tune'
  assert history['epochs'][-1]['val_accuracy'] >= 0.95


def test_a_third_phase_is_a_config_file():
  from configs import gradual_unfreeze
  config = gradual_unfreeze.get_config('local')
  check_config(config)
  assert [name for name, _ in ordered_phases(config)] == ['feature_extraction', 'fine_tune',
                                                          'fine_tune_more']
  assert config.phases.fine_tune_more.fine_tune_at == 50
  assert config.phases.fine_tune_more.epochs == config.phases.fine_tune.epochs == 2
