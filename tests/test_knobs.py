"""Research knobs: schedules, optimizer options, parameter groups, best checkpoint, early stopping,
TensorBoard and the run's environment record."""
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import traverse_util

from runs import ROOT, TINY, run_main
from tlflax import optim, param_groups
from tlflax.classifier import Classifier, backbone_layers, init_variables
from tlflax.config import phase
from tlflax.errors import ConfigError
from tlflax.objectives import Objective
from tlflax.predict import predict
from tlflax.steps import TrainState, make_train_step
from tlflax.train import evaluate_checkpoint, train_and_evaluate

sys.path.insert(0, str(ROOT))
from configs import bn_only, discriminative  # noqa: E402

RNG = np.random.default_rng(0)


def settings(optimizer='sgd', learning_rate=0.1, **options):
  """A phase's settings; `options` may be nested ('schedule': {...})."""
  config = phase(10, optimizer, learning_rate)
  config.update_from_flattened_dict({k: v for k, v in options.items() if k != 'schedule'})
  config.schedule.update(options.get('schedule', {}))
  return config


@pytest.mark.parametrize('name,options,reference', [
    ('constant', {}, lambda lr, n: optax.constant_schedule(lr)),
    ('warmup_cosine', {'warmup_steps': 7, 'end_factor': 0.1},
     lambda lr, n: optax.warmup_cosine_decay_schedule(0.0, lr, 7, n, end_value=0.1 * lr)),
    ('cosine', {}, lambda lr, n: optax.cosine_decay_schedule(lr, n)),
    ('step', {'decay_epochs': 2.0, 'decay_rate': 0.5},
     lambda lr, n: optax.exponential_decay(lr, 2 * 5, 0.5, staircase=True)),
    ('exponential', {'decay_epochs': 2.0, 'decay_rate': 0.5},
     lambda lr, n: optax.exponential_decay(lr, 2 * 5, 0.5)),
    ('constant', {'warmup_epochs': 1.0},
     lambda lr, n: optax.join_schedules([optax.linear_schedule(0.0, lr, 5),
                                         optax.constant_schedule(lr)], [5])),
])
def test_schedules_are_optaxs_over_the_phases_steps(name, options, reference):
  """10 epochs of 5 steps: each schedule is the optax one over the phase's 50 steps."""
  config = settings(learning_rate=0.3, schedule={'name': name, **options})
  steps = np.arange(50)
  np.testing.assert_allclose(np.broadcast_to(optim.make_schedule(config, 5)(steps), (50,)),
                             np.broadcast_to(reference(0.3, 50)(steps), (50,)), rtol=1e-6)


def params_and_grads():
  """A small tree shaped like the classifier's: a conv kernel, a BatchNorm, the head."""
  params = {'backbone': {'Conv1': {'kernel': RNG.normal(size=(3, 3, 3, 4))},
                         'bn_Conv1': {'scale': RNG.normal(size=4), 'bias': RNG.normal(size=4)}},
            'head': {'kernel': RNG.normal(size=(4, 1)), 'bias': RNG.normal(size=1)}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  grads = [jax.tree.map(lambda a: jnp.asarray(RNG.normal(size=a.shape), jnp.float32), params)
           for _ in range(3)]
  return params, grads


def updates_of(tx, params, grads):
  state, updates = tx.init(params), []
  for grad in grads:
    update, state = tx.update(grad, state, params)
    updates.append(update)
    params = optax.apply_updates(params, update)
  return updates


def all_trainable(params):
  return jax.tree.map(lambda _: param_groups.TRAINABLE, params)


@pytest.mark.parametrize('options,reference', [
    ({'optimizer': 'adamw', 'weight_decay': 0.1},
     lambda mask: optax.adamw(0.01, eps=1e-7, weight_decay=0.1, mask=mask)),
    ({'optimizer': 'sgd', 'momentum': 0.9}, lambda mask: optax.sgd(0.01, momentum=0.9)),
    ({'optimizer': 'sgd', 'momentum': 0.9, 'nesterov': True},
     lambda mask: optax.sgd(0.01, momentum=0.9, nesterov=True)),
    ({'optimizer': 'rmsprop', 'momentum': 0.5},
     lambda mask: optax.rmsprop(0.01, decay=0.9, eps=1e-7, momentum=0.5)),
    ({'optimizer': 'rmsprop', 'momentum': 0.5, 'nesterov': True},
     lambda mask: optax.rmsprop(0.01, decay=0.9, eps=1e-7, momentum=0.5, nesterov=True)),
    ({'optimizer': 'sgd', 'clip_norm': 0.5},
     lambda mask: optax.chain(optax.clip_by_global_norm(0.5), optax.sgd(0.01))),
])
def test_optimizer_options_update_as_optax_documents(options, reference):
  """Each option gives optax's own transformation's updates, and changes them (it is used)."""
  params, grads = params_and_grads()
  mask = {'backbone': {'Conv1': {'kernel': True}, 'bn_Conv1': {'scale': False, 'bias': False}},
          'head': {'kernel': True, 'bias': False}}  # kernels decay; biases and BN do not
  config = settings(learning_rate=0.01, **options)
  ours = updates_of(optim.make_optimizer(config, all_trainable(params), 1), params, grads)
  expected = updates_of(reference(mask), params, grads)
  plain = updates_of(optax.adam(0.01, eps=1e-7) if options['optimizer'] == 'adamw'
                     else optax.sgd(0.01) if options['optimizer'] == 'sgd'
                     else optax.rmsprop(0.01, decay=0.9, eps=1e-7), params, grads)
  for a, b, c in zip(jax.tree.leaves(ours), jax.tree.leaves(expected), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert not all(np.allclose(a, c) for a, c in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)))


def test_weight_decay_spares_biases_and_batch_norm_by_default():
  params, grads = params_and_grads()
  zero = jax.tree.map(jnp.zeros_like, grads[0])
  config = settings('adamw', 0.01, weight_decay=0.5)
  update = updates_of(optim.make_optimizer(config, all_trainable(params), 1), params, [zero])[0]
  flat = traverse_util.flatten_dict(update, sep='/')
  assert {k for k, v in flat.items() if np.any(v != 0)} == {'backbone/Conv1/kernel',
                                                             'head/kernel'}
  np.testing.assert_allclose(flat['head/kernel'], -0.01 * 0.5 * params['head']['kernel'],
                             rtol=1e-6)


def test_clipping_sees_the_gradients_of_all_groups_together():
  params, grads = params_and_grads()
  groups = all_trainable(params)
  groups['head'] = {'kernel': 'trainable*0.5', 'bias': 'trainable*0.5'}
  config = settings('sgd', 1.0, clip_norm=0.1)
  update = updates_of(optim.make_optimizer(config, groups, 1), params, grads[:1])[0]
  norm = optax.global_norm(grads[0])
  scale = jax.tree.map(lambda label: 0.5 if label != 'trainable' else 1.0, groups)
  expected = jax.tree.map(lambda g, s: -g * 0.1 / norm * s, grads[0], scale)
  for a, b in zip(jax.tree.leaves(update), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_scheduled_rate_is_the_one_the_optimizer_applies():
  """SGD with a warmup-cosine schedule: the update of step k is -schedule(k) * gradient."""
  params, _ = params_and_grads()
  grad = jax.tree.map(jnp.ones_like, params)
  config = settings('sgd', 0.2, schedule={'name': 'warmup_cosine', 'warmup_steps': 3})
  updates = updates_of(optim.make_optimizer(config, all_trainable(params), 1), params, [grad] * 6)
  expected = optax.warmup_cosine_decay_schedule(0.0, 0.2, 3, 10)
  np.testing.assert_allclose([float(u['head']['bias'][0]) for u in updates],
                             [-float(expected(k)) for k in range(6)], rtol=1e-6)


@pytest.fixture(scope='module')
def tiny_model(tiny_run):
  """The tiny run's model and its calibrated random weights (every layer gets gradients)."""
  model = Classifier(backbone_args={'alpha': 0.35})
  variables = init_variables(model, 32, jax.random.key(0), tiny_run.model.weights)
  return model, jax.tree.map(np.asarray, variables)


def train_steps(model, variables, config, groups, steps=2):
  tx = optim.make_optimizer(config, groups, steps)
  step = make_train_step(model.apply, tx, groups, Objective(2, sigmoid=True), jax.random.key(1))
  state = TrainState.create(jax.tree.map(jnp.array, variables), tx)
  images = np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  batch = {'image': images, 'label': np.array([0, 1, 0, 1], np.int32), 'mask': np.ones(4, bool)}
  for _ in range(steps):
    state, _ = step(state, batch)
  return traverse_util.flatten_dict(jax.tree.map(np.asarray, state.params), sep='/')


def test_regex_groups_freeze_bit_for_bit_and_scale_updates(tiny_model):
  """bn_only's rules: only BatchNorm and the head move, every other leaf is bit-identical; a rule
  at multiplier 0.25 moves its layers by a quarter of the multiplier-1 step (SGD)."""
  model, variables = tiny_model
  layers = backbone_layers(model)
  rules = bn_only.get_config().phases.fine_tune.param_groups
  groups = param_groups.param_groups(variables['params'], layers, 0, rules=rules)
  before = traverse_util.flatten_dict(variables['params'], sep='/')
  after = train_steps(model, variables, settings('adam', 1e-3), groups)
  moved = {k for k in before if not np.array_equal(before[k], after[k])}
  batch_norm = {k for k in before if k.split('/')[1] in ('bn_Conv1', 'Conv_1_bn')
                or k.split('/')[1].endswith('_BN')}
  assert moved == batch_norm | {'head/kernel', 'head/bias'}

  def sgd_step(multiplier):
    rules = (f'block_16_.*={multiplier}', '.*=1')
    groups = param_groups.param_groups(variables['params'], layers, 0, rules=rules)
    return train_steps(model, variables, settings('sgd', 0.1), groups, steps=1)
  full, quarter = sgd_step(1), sgd_step(0.25)
  for key in before:
    if '/block_16_' in key:
      np.testing.assert_allclose(quarter[key] - before[key], 0.25 * (full[key] - before[key]),
                                 rtol=1e-4, atol=1e-7)
    else:
      np.testing.assert_array_equal(quarter[key], full[key])


def test_example_group_configs_cover_every_layer_once(tiny_model):
  model, variables = tiny_model
  layers = backbone_layers(model)
  rules = discriminative.get_config().phases.fine_tune.param_groups
  groups = param_groups.param_groups(variables['params'], layers, 0, rules=rules)
  flat = traverse_util.flatten_dict(groups, sep='/')
  assert flat['head/kernel'] == 'trainable'
  assert flat['backbone/Conv_1/kernel'] == 'trainable*0.8'
  assert flat['backbone/block_16_project/kernel'] == 'trainable*0.64'
  assert flat['backbone/Conv1/kernel'] == f'trainable*{0.8 ** 19:.6g}'
  assert param_groups.FROZEN not in flat.values()
  assert param_groups.first_trained_layer(groups, layers) == 1  # Conv1: nothing to cache
  bn_groups = param_groups.param_groups(variables['params'], layers,
                                        0, rules=bn_only.get_config().phases.fine_tune.param_groups)
  assert param_groups.first_trained_layer(bn_groups, layers) == 2  # bn_Conv1
  with pytest.raises(ValueError, match='uncovered: Conv1, bn_Conv1'):
    param_groups.param_groups(variables['params'], layers, 0, rules=('block_.*=1', 'head=1'))
  zero = param_groups.param_groups(variables['params'], layers, None, rules=('head=0',))
  assert set(jax.tree.leaves(zero)) == {param_groups.FROZEN}  # a multiplier of 0 freezes
  # with fine_tune_at, the rules decide only the layers it leaves trainable
  above = traverse_util.flatten_dict(param_groups.param_groups(
      variables['params'], layers, 100, rules=('block_16_.*=0.5', '.*=1')), sep='/')
  index = {layer.name: layer.index for layer in layers}
  for key, label in above.items():
    part, layer = key.split('/')[:2]
    expected = ('trainable' if part == 'head' else param_groups.FROZEN if index[layer] < 100
                else 'trainable*0.5' if layer.startswith('block_16_') else 'trainable')
    assert label == expected, key


# The tracked tiny run: phase 2 warms up for one epoch, then cosine. It keeps every epoch's
# checkpoint, so that the tests below find phase 2's second epoch (3) whatever the CPU's rounding
# made of the losses; the best-checkpoint test decides the best epoch itself.
TRACKED = {'phases.fine_tune.epochs': 3, 'phases.fine_tune.optimizer': 'adam',
           'phases.fine_tune.learning_rate': 0.01, 'phases.fine_tune.fine_tune_at': 0,
           'phases.fine_tune.schedule.name': 'warmup_cosine',
           'phases.fine_tune.schedule.warmup_epochs': 1.0, 'checkpoints_to_keep': 4}
STEPS_PER_EPOCH = 6  # 24 training images in batches of 4


@pytest.fixture(scope='module')
def tracked_run(tiny_run, tmp_path_factory):
  config = tiny_run.copy_and_resolve_references()
  config.update_from_flattened_dict(TRACKED)
  workdir = tmp_path_factory.mktemp('tracked') / 'run'
  result = train_and_evaluate(config, workdir)
  return config, workdir, result


def summaries(workdir: Path, plugin: str) -> dict:
  """{tag: {step: value}} of the run's TensorBoard summaries of `plugin` ('scalars': numbers;
  'images': the tensors)."""
  values = {}
  for path in sorted((workdir / 'tensorboard').glob('events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == plugin:
          tensor = tf.make_ndarray(value.tensor)
          values.setdefault(value.tag, {})[event.step] = (float(tensor) if plugin == 'scalars'
                                                          else tensor)
  return values


def test_tensorboard_has_every_scalar_of_every_epoch_and_the_learning_rate_of_every_step(
    tracked_run):
  config, workdir, result = tracked_run
  events = summaries(workdir, 'scalars')
  epochs = result.history['epochs']
  ends = [STEPS_PER_EPOCH * e['epoch'] for e in epochs]
  for key, tag in (('loss', 'train/loss'), ('accuracy', 'train/accuracy'),
                   ('val_loss', 'val/loss'), ('val_accuracy', 'val/accuracy'),
                   ('images_per_second', 'train/images_per_second'),
                   ('val_images_per_second', 'val/images_per_second'), ('epoch', 'epoch')):
    assert sorted(events[tag]) == ends, tag
    np.testing.assert_allclose([events[tag][s] for s in ends], [e[key] for e in epochs],
                               rtol=1e-6, err_msg=tag)
  assert [events['phase'][s] for s in ends] == [0, 1, 1, 1]
  rates = events['train/learning_rate']
  assert sorted(rates) == list(range(1, 4 * STEPS_PER_EPOCH + 1))
  phase_two = optax.warmup_cosine_decay_schedule(0.0, 0.01, STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH)
  phase_two_steps = range(STEPS_PER_EPOCH + 1, 4 * STEPS_PER_EPOCH + 1)
  np.testing.assert_allclose([rates[s] for s in phase_two_steps],
                             [phase_two(k) for k in range(3 * STEPS_PER_EPOCH)], rtol=1e-5)
  phase_one = [rates[s] for s in range(1, STEPS_PER_EPOCH + 1)]
  assert phase_one == pytest.approx([1e-3] * STEPS_PER_EPOCH)  # phase 1: constant
  assert [e['learning_rate'] for e in epochs[1:]] == pytest.approx(
      [float(phase_two(STEPS_PER_EPOCH * k - 1)) for k in (1, 2, 3)], rel=1e-5)
  images = summaries(workdir, 'images')
  assert {tag: sorted(steps) for tag, steps in images.items()} == {
      'learning_curves': [4 * STEPS_PER_EPOCH], 'predictions': [4 * STEPS_PER_EPOCH]}
  environment = json.loads((workdir / 'environment.json').read_text())
  assert len(environment) == 1 and environment[0]['device_count'] == jax.device_count()
  assert {'jax', 'flax', 'optax', 'orbax-checkpoint', 'clu'} <= set(environment[0]['packages'])
  assert len(environment[0]['code']['commit']) == 40  # the tests run from a git checkout


def test_resumed_mid_schedule_it_ends_with_the_uninterrupted_parameters(tracked_run, tmp_path):
  """The run "killed" after phase 2's second epoch (its later checkpoint and outputs removed):
  the restart restores the optimizer's step count and ends where the uninterrupted run did."""
  config, workdir, result = tracked_run
  resumed = tmp_path / 'run'
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '4')
  assert kept_epochs(resumed) == [1, 2, 3]  # epoch 3: phase 2's second of three
  (resumed / 'final_variables.msgpack').unlink()
  again = train_and_evaluate(config, resumed)
  assert kept_epochs(resumed) == [1, 2, 3, 4]
  assert [e['epoch'] for e in again.history['epochs']] == [1, 2, 3, 4]
  for a, b in zip(jax.tree.leaves(result.variables), jax.tree.leaves(again.variables)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  assert len(json.loads((resumed / 'environment.json').read_text())) == 2


def kept_epochs(workdir: Path) -> list:
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir())


def kept_metrics(workdir: Path, epoch: int) -> Path:
  """The file where orbax keeps a checkpoint's validation metrics (which rank the best)."""
  return workdir / 'checkpoints' / str(epoch) / 'metrics' / 'metrics'


def test_best_checkpoint_is_kept_beside_the_latest_and_evaluate_reports_it(tracked_run, tmp_path):
  """Checkpoints carry the epoch's validation metrics. Which epoch is the best is then made
  certain rather than left to the CPU's rounding: on a copy, epoch 3's kept val_loss is set to
  -1 (no real loss is below 0) and epoch 4's val_accuracy to 2. `--checkpoint=best` then uses
  epoch 3, by the run's best_metric, and evaluates its real loss; one more epoch with
  checkpoints_to_keep=1 keeps epoch 3 beside the latest."""
  config, workdir, result = tracked_run
  history = {e['epoch']: e for e in result.history['epochs']}
  for epoch in kept_epochs(workdir):
    kept = json.loads(kept_metrics(workdir, epoch).read_text())
    assert kept == pytest.approx({'val_loss': history[epoch]['val_loss'], 'epoch': epoch,
                                  'val_accuracy': history[epoch]['val_accuracy']}, rel=1e-6)
  best = 3
  made = tmp_path / 'made'
  shutil.copytree(workdir, made)
  for epoch, key, value in ((best, 'val_loss', -1.0), (4, 'val_accuracy', 2.0)):
    metrics_file = kept_metrics(made, epoch)
    metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), key: value}))
  report = evaluate_checkpoint(config, made, 'validation', checkpoint='best')
  assert report['checkpoint_epoch'] == best
  assert report['loss'] == pytest.approx(history[best]['val_loss'], rel=1e-5)  # evaluated
  # Evaluated with best_metric=val_accuracy, the best is still the run's (by val_loss)
  other_metric = config.copy_and_resolve_references()
  other_metric.best_metric = 'val_accuracy'
  assert evaluate_checkpoint(other_metric, made, 'validation',
                             checkpoint='best')['checkpoint_epoch'] == best
  from tlflax.checkpoints import Checkpoints
  assert Checkpoints(made, best_metric='val_accuracy').best_epoch() == 4  # were it the config's
  image = str(Path(config.data.folder) / 'test' / 'cat' / 'cat.0.jpg')
  probabilities = {which: next(predict(config, made, image, checkpoint=which,
                                       output=tmp_path / f'{which}.csv'))[2]
                   for which in ('best', str(best), 'latest')}
  assert probabilities['best'] == probabilities[str(best)] != probabilities['latest']
  flags = [f'--config.{key}={value}' for key, value in {
      **TINY, **TRACKED, 'data.folder': config.data.folder,
      'model.weights': config.model.weights}.items()]
  code, output = run_main(made, flags, '--mode=evaluate', '--split=validation',
                          '--checkpoint=best')
  assert code == 0, output[-3000:]
  assert f'checkpoint of epoch {best}' in output
  assert f'loss {history[best]["val_loss"]:.4f}' in output
  code, output = run_main(made, flags, '--mode=evaluate', '--checkpoint=7')
  assert code == 1 and 'kept epochs: [1, 2, 3, 4]' in output and 'Traceback' not in output
  more = config.copy_and_resolve_references()
  more.phases.fine_tune.epochs = 4
  more.checkpoints_to_keep = 1
  train_and_evaluate(more, made, allow_config_change=True)
  assert kept_epochs(made) == [best, 5]  # the best, whose metrics orbax read back, and the latest


def test_early_stopping_ends_the_phase_and_the_next_one_starts_resumably(tiny_run, tmp_path):
  """Phase 1 of 3 epochs with patience 1 and a minimum improvement no epoch makes: it ends after
  its second epoch, phase 2 runs in full; a restart from the stopping checkpoint goes on with
  phase 2 and ends with the same parameters."""
  config = tiny_run.copy_and_resolve_references()
  config.update_from_flattened_dict({'phases.feature_extraction.epochs': 3,
                                     'phases.feature_extraction.early_stopping.patience': 1,
                                     'phases.feature_extraction.early_stopping.min_delta': 100.0})
  result = train_and_evaluate(config, tmp_path / 'run')
  history = result.history
  assert [(e['phase'], e['epoch']) for e in history['epochs']] == [
      ('feature_extraction', 1), ('feature_extraction', 2), ('fine_tune', 4), ('fine_tune', 5)]
  assert history['phases']['feature_extraction']['stopped_early_after'] == 2
  assert (tmp_path / 'run' / 'phases' / 'feature_extraction').is_dir()
  resumed = tmp_path / 'resumed'
  shutil.copytree(tmp_path / 'run', resumed)
  for later in [p for p in (resumed / 'checkpoints').iterdir() if int(p.name) > 2]:
    shutil.rmtree(later)
  again = train_and_evaluate(config, resumed)
  assert [e['epoch'] for e in again.history['epochs']] == [1, 2, 4, 5]
  for a, b in zip(jax.tree.leaves(result.variables), jax.tree.leaves(again.variables)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)


def test_a_mid_phase_resume_refuses_new_parameter_groups(tracked_run, tmp_path):
  config, workdir, _ = tracked_run
  resumed = tmp_path / 'run'
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '4')
  assert kept_epochs(resumed) == [1, 2, 3]  # epoch 3: mid phase 2
  changed = config.copy_and_resolve_references()
  changed.phases.fine_tune.param_groups = ('head=1', '.*=freeze')
  with pytest.raises(ConfigError, match='param_groups'):
    train_and_evaluate(changed, resumed, allow_config_change=True)
  changed = config.copy_and_resolve_references()
  changed.phases.fine_tune.schedule.name = 'cosine'  # its step count is in the optimizer state
  with pytest.raises(ConfigError, match=r'new phases.fine_tune.schedule.name'):
    train_and_evaluate(changed, resumed, allow_config_change=True)
  changed = config.copy_and_resolve_references()
  changed.batch_size = 8  # another number of steps per epoch: the schedule's steps would shift
  with pytest.raises(ConfigError, match=r'new batch_size'):
    train_and_evaluate(changed, resumed, allow_config_change=True)
  assert kept_epochs(resumed) == [1, 2, 3]  # nothing was taken for damage and moved aside


def test_param_groups_parse_from_the_command_line(tmp_path):
  """docs/training.md's override syntax reaches the config check as a tuple of rules (here one that
  leaves the stem uncovered, so the run stops at once)."""
  code, output = run_main(tmp_path / 'w', [
      '--config.phases.fine_tune.fine_tune_at=0',
      "--config.phases.fine_tune.param_groups=('block_1[3-6]_.*=1', 'Conv_1.*=1', 'head=1')"])
  assert code == 1 and 'Traceback' not in output, output[-3000:]
  assert 'phases.fine_tune.param_groups leaves 78 layer(s) uncovered: Conv1, bn_Conv1' in output


def test_the_best_of_equal_checkpoints_is_the_earliest_and_survives(tmp_path):
  """Equal validation losses: the earliest epoch is the best, and orbax keeps it beside the
  latest one; `select` names what is kept when asked for another epoch."""
  from tlflax.checkpoints import Checkpoints
  state = TrainState.create({'params': {'w': np.ones(3, np.float32)}, 'batch_stats': {}},
                            optax.sgd(0.1))
  checkpoints = Checkpoints(tmp_path, keep=1)
  for epoch, loss in ((1, 0.5), (2, 0.4), (3, 0.4), (4, 0.9)):
    checkpoints.save(epoch, state, {}, {'val_loss': loss, 'val_accuracy': 0.5})
  checkpoints.close()
  again = Checkpoints(tmp_path, keep=1)
  assert again.epochs() == [2, 4] and again.best_epoch() == 2 == again.select('best')
  assert again.select('latest') is None and again.select('4') == 4
  with pytest.raises(ConfigError, match=r'kept epochs: \[2, 4\]'):
    again.select('3')
