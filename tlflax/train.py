"""The transfer-learning recipe: config in, trained model and reports in the workdir.

`train_and_evaluate(config, workdir)` builds data, model, per-phase optimizers and checkpoints from
the config, evaluates before training, runs the phases in `config.phase_order` (a new phase starts
from the previous phase's parameters with a fresh optimizer), evaluates on the test split and
writes:

    config.json, environment.json, history.json, test_metrics.json, learning_curves.png,
    predictions.png, evaluation/{validation,test}{.json,_confusion.png,_mistakes.png} (per-class
    evaluation), final_variables.msgpack, checkpoints/<epoch>/ (the latest and the best),
    phases/<phase name>/, tensorboard/ (`tlflax.tracking`)

A phase's parameter groups, schedule and optimizer come from `tlflax.param_groups` and
`tlflax.optim`; early stopping (`tlflax.phases.stops_early`) can end it before its last epoch,
and the next phase then starts where its epochs would have.

The class count comes from the data, the head's width and loss from the class count
(`tlflax.objectives`).

Started again on the same workdir, it resumes after the newest checkpoint that restores: the
checkpoint's global epoch and the config's phase lengths give the phase and the epoch inside it,
and the run ends with the parameters of an uninterrupted one. The workdir's run must have been made
with the same config (else `ConfigError` lists what differs; `allow_config_change` continues with
the new values where that is possible). A NaN or infinite loss stops the run (`TrainingDiverged`)
before the diverged state is checkpointed.
"""
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from tlflax import checkpoints as checkpoints_lib
from tlflax import config as config_lib
from tlflax import devices, evaluation, feeds, objectives, optim, parallel, reports
from tlflax import interrupts, resume, tracking
from tlflax import workdir as workdir_lib
from tlflax import param_groups as param_groups_lib
from tlflax.classifier import Classifier, abstract_variables, backbone_layers
from tlflax.data.image_cache import ImageCache
from tlflax.errors import ConfigError, DataError, TrainingDiverged
from tlflax.objectives import Objective
from tlflax.report import recipe, run_page
from tlflax.phases import Phase, phase_plan, stops_early
from tlflax.resume import Position
from tlflax.run_parts import (Trained, check_config, data_differences, image_feed,
                              load_splits, make_model, make_objective, mixing_of,
                              restore_for_inference, rngs, temperature_for)
from tlflax.steps import TrainState, make_train_step

IMAGE_CACHE_FOLDER = 'image_cache'  # in the workdir: decoded images above the memory limit


class _MetricSums:
  """Running sums of the steps' {'loss', 'correct', 'count'[, 'correct_top_k']}, kept on the
  device, and their means (reading those waits for the steps)."""

  def __init__(self):
    self.sums = None

  def add(self, metrics):
    self.sums = metrics if self.sums is None else jax.tree.map(jnp.add, self.sums, metrics)

  def means(self) -> dict:
    sums = {k: float(v) for k, v in self.sums.items()}
    count = max(sums['count'], 1)
    means = {'loss': sums['loss'] / count, 'accuracy': sums['correct'] / count}
    if 'correct_top_k' in sums:
      means[f'top{objectives.TOP_K}_accuracy'] = sums['correct_top_k'] / count
    return means


def evaluate(eval_step, variables: dict, batches) -> dict:
  """Loss, accuracy (top-5 too above 5 classes) and count of the examples in `batches` (every
  example of a split once)."""
  sums = _MetricSums()
  for batch in batches:
    sums.add(eval_step(variables['params'], variables['batch_stats'], batch))
  return {**sums.means(), 'count': int(sums.sums['count'])}


@dataclasses.dataclass
class Run:
  """What the phases of one run share, built from the config."""
  config: ml_collections.ConfigDict
  workdir: Path
  allow_config_change: bool
  mesh: jax.sharding.Mesh
  splits: dict
  class_names: list
  objective: Objective
  model: Classifier
  image_feed: object  # the run's feed (`run_parts.image_feed`); serves the evaluations
  abstract: dict  # shapes of {'params', 'batch_stats'}
  checkpoints: checkpoints_lib.Checkpoints
  tracker: tracking.Tracker
  primary: bool = dataclasses.field(default_factory=lambda: jax.process_index() == 0)

  @classmethod
  def create(cls, config, workdir, allow_config_change: bool) -> 'Run':
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    devices.prepare(config.compute, config.batch_size)
    workdir = Path(workdir)
    primary = jax.process_index() == 0
    splits = load_splits(config)
    class_names = list(splits['train'].class_names)
    objective = make_objective(config, class_names, splits['train'].class_counts)
    model = make_model(config, objective)
    logging.info('%d classes %s: %s head, %d outputs', len(class_names), class_names,
                 'sigmoid' if objective.sigmoid else 'softmax', objective.outputs)
    # with cached activations, training needs no images: 'auto' keeps none
    mode = ('none' if config.compute.cache_frozen and config.compute.image_cache == 'auto'
            else config.compute.image_cache)
    image_cache = ImageCache(mode, config.compute.image_cache_limit_gb,
                             workdir / IMAGE_CACHE_FOLDER)
    image_cache.remove_files()  # a crashed run's
    return cls(config, workdir, allow_config_change, mesh, splits, class_names, objective, model,
               image_feed(config, model, objective, splits, mesh, image_cache),
               abstract_variables(model, config.image_size),
               checkpoints_lib.Checkpoints(workdir, config.checkpoints_to_keep,
                                           parallel.replicated(mesh), config.best_metric),
               tracking.Tracker(workdir, primary), primary)

  def rngs(self):
    """(initialization key, dropout key) from the config's seed (`run_parts.rngs`)."""
    return rngs(self.config)

  def optimizer(self, phase: Phase):
    """(parameter groups, optax transformation) of a phase: which parameters train, and how."""
    layers = backbone_layers(self.model)
    groups = param_groups_lib.param_groups(
        self.abstract['params'], layers,
        config_lib.fine_tune_index(phase.settings, self.model.spec, layers),
        phase.settings.param_groups)
    return groups, optim.make_optimizer(phase.settings, groups, self.image_feed.steps_per_epoch,
                                        self.config.train.accumulate_steps)

  def new_state(self, variables: dict, tx, step: int) -> TrainState:
    """A phase's first state (with the weights' average if `train.ema_decay` asks for one)."""
    return TrainState.create(variables, tx, step, ema=self.config.train.ema_decay > 0)

  def check_steps(self):
    """`ConfigError` if a phase's warmup is longer than the phase, or a phase with epochs has
    fewer steps than `train.accumulate_steps` (no update at all); a warning where a phase's last
    steps make no whole update (which needs the data's steps per epoch, so the config check
    cannot tell)."""
    steps = self.image_feed.steps_per_epoch
    accumulate = self.config.train.accumulate_steps
    for phase in phase_plan(self.config):
      total = phase.settings.epochs * steps
      if optim.warmup_steps(phase.settings, steps) > total:
        raise ConfigError(f'phases.{phase.name}.schedule: the warmup is longer than the phase '
                          f'({phase.settings.epochs} epochs of {steps} steps)')
      if 0 < total < accumulate:
        raise ConfigError(f'train.accumulate_steps={accumulate} is more than the {total} steps '
                          f'of phase {phase.name}: it would make no update')
      if total % accumulate:
        logging.warning('Phase %s has %d steps: its last %d add to no update '
                        '(train.accumulate_steps=%d)', phase.name, total, total % accumulate,
                        accumulate)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir,
                       allow_config_change: bool = False, first_phase_from=None,
                       after_epoch: Optional[Callable[[dict, bool], None]] = None
                       ) -> 'TrainResult':
  """Runs (or resumes) every phase of `config` in `workdir`; returns history and final model.
  `first_phase_from`: a workdir that trained this run's first phase alone (`tlflax.sweep`); a
  fresh run starts after it. `after_epoch(record, stopping)` is called with each epoch's
  history record once the epoch is saved, `stopping` if early stopping ends its phase there
  (`tlflax.tune` reports it to its pruner, which may raise to stop the run there). A start
  that fails or is interrupted before it saves an epoch leaves nothing in the workdir
  (`workdir.removed_unless_saved`); an interrupted run's `interrupts.Interrupted` says where it
  can resume."""
  check_config(config)
  run = None

  def wait_for_checkpoints():
    if run is not None:
      run.checkpoints.close()

  try:
    with workdir_lib.removed_unless_saved(workdir, wait_for_checkpoints) as path:
      with interrupts.during('the start of the run'):
        run = Run.create(config, path, allow_config_change)
      try:
        return _train_and_evaluate(run, first_phase_from, after_epoch)
      finally:  # decoded images on disk go and checkpoints being written finish, also when the
        run.image_feed.release()  # run fails (a process that goes on, as the tuner's, needs both)
        run.checkpoints.close()
        run.tracker.close()
  except interrupts.Interrupted as e:
    e.outcome = resume_hint(workdir, trained=e.during == FINAL_EVALUATION)
    raise


FINAL_EVALUATION = 'the final evaluation and reports'


def resume_hint(workdir, trained: bool = False) -> str:
  """What an interrupted run kept in `workdir`, and how to go on (`trained`: every epoch ran)."""
  saved = workdir_lib.saved_epochs(workdir)
  if not saved:
    return 'no epoch was saved, so nothing was kept: the same command starts the run again'
  if trained:
    return (f'every epoch is saved in {workdir}: run the same command again for the final '
            'evaluation')
  return (f'epochs up to {saved[-1]} are saved in {workdir}: run the same command again to '
          f'resume after epoch {saved[-1]}')


def _train_and_evaluate(run: 'Run', first_phase_from, after_epoch) -> 'TrainResult':
  run.check_steps()
  with interrupts.during('the start of the run'):
    position = resume.restore_or_initialize(run, first_phase_from)
  if run.primary:  # a start that the workdir's run accepted
    tracking.record_environment(run.workdir)
    recipe.record(run.workdir)
  if 'initial' not in position.history:  # the tutorial's loss0 / accuracy0
    with interrupts.during('the evaluation before training'):
      initial = _checked(evaluate(run.image_feed.eval_step, position.variables,
                                  run.image_feed.evaluation('validation')), 'before training')
    position.history['initial'] = {'val_loss': initial['loss'],
                                   'val_accuracy': initial['accuracy']}
    logging.info('Before training: val_loss %.4f, val_accuracy %.4f', initial['loss'],
                 initial['accuracy'])
  for phase in phase_plan(run.config):
    if position.epoch < phase.last_epoch:
      position = _run_phase(run, phase, position, after_epoch)
  run.checkpoints.close()
  history = position.history
  with interrupts.during(FINAL_EVALUATION):
    temperature = None
    if history['epochs']:  # the weights of the last checkpoint
      temperature = temperature_for(run.config, run.workdir, Trained(
          run.model, position.variables, run.class_names, run.objective,
          resume.config_as_json(run.config), history['epochs'][-1]['epoch']), run.mesh,
          run.image_feed)
    about = ({'checkpoint_epoch': history['epochs'][-1]['epoch'], 'weights': 'trained'}
             if history['epochs'] else {})
    final = {split: evaluate_per_class(run.image_feed, position.variables, split, run.workdir,
                                       run.primary, about, tta=run.config.eval.tta,
                                       temperature=temperature)
             for split in ('validation', 'test')}
    history['test'] = evaluation.summary(final['test'])
    variables = parallel.to_host(position.variables)
    if run.primary:
      reports.write_reports(run, history, variables)
      run_page.write_after(run.workdir, 'Training')
      run.tracker.images(position.step, {name: run.workdir / f'{name}.png'
                                         for name in ('learning_curves', 'predictions')})
  return TrainResult(history, variables)


@dataclasses.dataclass
class TrainResult:
  history: dict  # what history.json holds
  variables: dict  # the final {'params', 'batch_stats'} as host NumPy arrays


def _run_phase(run: Run, phase: Phase, position: Position, after_epoch) -> Position:
  """Trains `phase` from `position` to its last epoch (or until early stopping ends it),
  checkpointing after every epoch."""
  groups, tx = run.optimizer(phase)
  # replicated over the mesh as the step's outputs are, so that its second call reuses the
  # program its first compiled
  state = position.state or parallel.replicate(
      run.new_state(position.variables, tx, position.step), run.mesh)
  settings, history = phase.settings, position.history
  counts = param_groups_lib.count_params(state.params, groups)
  layers = backbone_layers(run.model)
  logging.info('Phase %s: %s epochs, %s at %g (%s schedule), %s; trainable params %s, frozen %s',
               phase.name, settings.epochs, settings.optimizer, settings.learning_rate,
               settings.schedule.name,
               f'param_groups {list(settings.param_groups)}' if settings.param_groups
               else f'fine_tune_at {config_lib.fine_tune_index(settings, run.model.spec, layers)}',
               f"{counts['trainable']:,}", f"{counts['frozen']:,}")
  # from here: caches, compilation, epochs and validation (and those before a resume mid-phase)
  phase_start = time.perf_counter() - (history['phases'].get(phase.name, {}).get('seconds', 0.0)
                                       if position.state is not None else 0.0)
  with interrupts.during(f'the set-up of phase {phase.name!r}'):
    feed = feeds.for_phase(run.config.compute, run.model, state.variables, run.image_feed,
                           param_groups_lib.first_trained_layer(groups, layers))
  _, dropout_rng = run.rngs()
  train_step = make_train_step(feed.apply_fn, tx, groups, run.objective, dropout_rng, run.mesh,
                               feed.input_key, mixing_of(run.config), run.config.train.ema_decay)
  schedule = optim.make_schedule(settings, feed.steps_per_epoch)
  config_json = resume.config_as_json(run.config)  # what each checkpoint records
  mode = checkpoints_lib.BEST_METRICS[run.config.best_metric]
  for epoch in range(position.epoch + 1, phase.last_epoch + 1):
    with interrupts.during(f'epoch {epoch} (phase {phase.name!r})'):
      phase_steps = np.arange((epoch - phase.first_epoch - 1) * feed.steps_per_epoch,
                              (epoch - phase.first_epoch) * feed.steps_per_epoch)
      # the rate of each of the epoch's steps (a constant schedule gives one number for all)
      learning_rates = optim.update_learning_rates(schedule, phase_steps,
                                                   run.config.train.accumulate_steps)
      state, record = _run_epoch(phase, epoch, state, train_step, feed, learning_rates[-1],
                                 compiles=epoch == position.epoch + 1)
      history['epochs'].append(record)
      history['phases'][phase.name] = {'seconds': time.perf_counter() - phase_start,
                                       **feed.record()}
      step = int(state.step)
      run.tracker.learning_rates(step - len(learning_rates) + 1, learning_rates)
      run.tracker.epoch(step, record, phase.index)
      stop = epoch < phase.last_epoch and stops_early(
          [r for r in history['epochs'] if r['phase'] == phase.name], settings,
          run.config.best_metric, mode)
      if stop:
        history['phases'][phase.name]['stopped_early_after'] = epoch - phase.first_epoch
      with interrupts.during(f'the saving of epoch {epoch}'), \
          interrupts.held(f'the saving of epoch {epoch}'):
        if epoch == phase.last_epoch or stop:  # before the epoch's checkpoint, which marks it done
          run.checkpoints.save_phase(phase.name, state.variables)
        run.checkpoints.save(epoch, state, {
            'phase': phase.name, 'phase_epoch': epoch - phase.first_epoch, 'epoch': epoch,
            'step': step, 'class_names': run.class_names,
            'config': config_json, 'history': history}, record)
        if run.primary:
          reports.write_json(run.workdir / 'history.json', history)
      if after_epoch is not None:
        after_epoch(record, stop)
      if stop:
        logging.info('Early stopping: %s did not improve by more than %g for %d epochs; phase %s '
                     'ends after epoch %d of %d', run.config.best_metric,
                     settings.early_stopping.min_delta, settings.early_stopping.patience,
                     phase.name, epoch - phase.first_epoch, settings.epochs)
        break
  return Position(phase.last_epoch, int(state.step), state.variables, history)


def _run_epoch(phase: Phase, epoch: int, state, train_step, feed, learning_rate: float,
               compiles: bool):
  """One epoch of `phase` and its validation; (state, the epoch's history record, with the
  `learning_rate` of its last step). `compiles`: the epoch's first step compiles the step."""
  phase_epoch = epoch - phase.first_epoch
  where = f'phase {phase.name!r}, epoch {phase_epoch}/{phase.settings.epochs} (global {epoch})'
  state, train_metrics = _train_epoch(train_step, state, feed.train(epoch - 1),
                                      feed.steps_per_epoch, where, compiles)
  validation_start = time.perf_counter()
  with interrupts.during(f'the validation after {where}'):
    validation = _checked(evaluate(feed.eval_step, state.variables,
                                   feed.evaluation('validation')), f'validation after {where}')
  record = {'phase': phase.name, 'epoch': epoch, **train_metrics,
            'learning_rate': float(learning_rate),
            **{f'val_{key}': value for key, value in validation.items() if key != 'count'},
            'val_images_per_second': validation['count']
                                     / (time.perf_counter() - validation_start)}
  if state.ema_variables is not None:
    with interrupts.during(f'the validation of the weights\' average after {where}'):
      average = _checked(evaluate(feed.eval_step, state.ema_variables,
                                  feed.evaluation('validation')),
                         f'validation of the weights\' average after {where}')
    record.update({f'ema_val_{key}': value for key, value in average.items() if key != 'count'})
    logging.info('Weights\' average: val_loss %.4f, val_accuracy %.4f', average['loss'],
                 average['accuracy'])
  logging.info('Epoch %d (%s %d/%d): loss %.4f, accuracy %.4f, val_loss %.4f, val_accuracy %.4f, '
               'learning rate %.3g, %s images/s', epoch, phase.name, phase_epoch,
               phase.settings.epochs, record['loss'], record['accuracy'], record['val_loss'],
               record['val_accuracy'], learning_rate,
               'n/a' if record['images_per_second'] is None
               else f"{record['images_per_second']:.1f}")
  return state, record


def _checked(metrics: dict, where: str) -> dict:
  """Evaluation `metrics`, if their loss is finite; else `TrainingDiverged` saying `where`."""
  if not math.isfinite(metrics['loss']):
    raise TrainingDiverged(f'the evaluation loss is {metrics["loss"]} ({where}): the model '
                           'diverged or its weights are broken. The last checkpoint is the last '
                           'good state.')
  return metrics


PROGRESS_EVERY = 10  # steps between progress-bar metrics (each read waits for the device)


def _train_epoch(train_step, state, batches, total_steps: int, where: str, compiles: bool):
  """One epoch with a progress bar; returns the state and the epoch's mean training loss and
  accuracy, first step's time (compilation included where it `compiles`: then it is logged on its
  own line, and the bar starts after it) and images/s after it (None for a one-step epoch). Every
  `PROGRESS_EVERY` steps and at the end, a non-finite loss raises `TrainingDiverged` naming the
  first step that had one."""
  sums, unread = _MetricSums(), []
  done = 0
  with interrupts.during(lambda: f'{where}, after {done} of {total_steps} steps'):
    batches = iter(batches)
    start = time.perf_counter()
    if compiles:
      logging.info('Compiling the training step of %s ...', where)
    state, metrics = train_step(state, next(batches))
    jax.block_until_ready(metrics)
    first_step_end = time.perf_counter()
    if compiles:
      logging.info('Compiled and ran the first step in %.1f s', first_step_end - start)
    sums.add(metrics)
    unread.append(metrics)
    done = 1
    with tqdm(total=total_steps, initial=1, desc=where, unit='batch', leave=False,
              disable=None) as bar:
      for batch in batches:
        state, metrics = train_step(state, batch)
        sums.add(metrics)
        unread.append(metrics)
        done += 1
        if done % PROGRESS_EVERY == 0:
          means = _finite_training_means(sums, unread, done, where)
          bar.set_postfix({k: f'{v:.4f}' for k, v in means.items()})
          unread = []
        bar.update(1)
    means = _finite_training_means(sums, unread, done, where)  # waits for the last step
  end = time.perf_counter()
  rate = (float(sums.sums['count']) * (done - 1) / done / (end - first_step_end)
          if done > 1 else None)
  return state, {**means, 'images_per_second': rate,
                 'first_step_seconds': first_step_end - start}


def _finite_training_means(sums: _MetricSums, unread: list, steps: int, where: str) -> dict:
  """`sums.means()` after `steps` steps, checking that none of the `unread` last steps' losses
  (the sums were finite before them) is NaN or infinite."""
  means = sums.means()
  if not math.isfinite(means['loss']):
    losses = [float(m['loss']) for m in unread]
    bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
    what = (f'the training loss is {losses[bad]} at step {steps - len(unread) + 1 + bad}'
            if bad is not None else f'the training loss summed over steps 1-{steps} overflows')
    raise TrainingDiverged(f'{what} of {where}: training diverged (try a lower learning rate). '
                           'Nothing of this epoch was saved; the last checkpoint is the last '
                           'good state.')
  return means


def evaluate_per_class(feed, variables: dict, split: str, workdir, write: bool,
                       about: Optional[dict] = None, tta: str = 'none',
                       temperature: Optional[float] = None) -> dict:
  """`evaluation.evaluate_split` of `split` (with `tta` and `temperature`) and the entries of
  `about`, written to WORKDIR/evaluation/ if `write`; a non-finite loss is `TrainingDiverged`."""
  report = {**_checked(evaluation.evaluate_split(feed, variables, split, tta, temperature),
                       f'{split} split'), **(about or {})}
  if write:
    evaluation.write_report(report, feed, split, Path(workdir) / 'evaluation', variables)
  logging.info('%s: loss %.4f, accuracy %.4f, macro F1 %.4f (%d examples)', split.title(),
               report['loss'], report['accuracy'], report['macro_average']['f1'],
               report['count'])
  if 'tta' in report:
    logging.info('%s with test-time augmentation (%s): loss %.4f, accuracy %.4f', split.title(),
                 tta, report['tta']['loss'], report['tta']['accuracy'])
  if 'calibration' in report:
    logging.info('%s calibration (temperature %.3f): ECE %.4f -> %.4f, NLL %.4f -> %.4f',
                 split.title(), temperature, report['calibration']['ece_before'],
                 report['calibration']['ece_after'], report['calibration']['nll_before'],
                 report['calibration']['nll_after'])
  return report


def evaluate_checkpoint(config, workdir, split: str = 'test', other_data: bool = False,
                        checkpoint: str = 'latest') -> dict:
  """The per-class report (`tlflax.evaluation`) of a checkpoint of the workdir (`checkpoint`, see
  `restore_for_inference`) on a split of the config's data, written to WORKDIR/evaluation/; its
  'checkpoint_epoch' says which. Data settings that differ from the training
  run's (`SPLIT_KEYS`: a test split carved with another seed may hold training images) are a
  `ConfigError` unless `other_data`."""
  check_config(config)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  trained = restore_for_inference(config, workdir, mesh, checkpoint)
  workdir_lib.writable(workdir)  # the report goes to WORKDIR/evaluation/
  changed = data_differences(trained.config, config)
  if changed and not other_data:
    raise ConfigError(f'{workdir} was trained with other data settings '
                      f'({resume.listing(changed)}): its splits may overlap the training data. '
                      'Use the training config, or pass --allow_config_change to evaluate on '
                      'this data anyway.')
  splits = load_splits(config)
  data_classes = list(splits['train'].class_names)
  if data_classes != trained.class_names:
    raise DataError(f'{workdir} holds a model of classes {trained.class_names}; the config\'s '
                    f'data has {data_classes}')
  feed = image_feed(config, trained.model, trained.objective, splits, mesh)
  temperature = temperature_for(config, workdir, trained, mesh, feed)
  primary = jax.process_index() == 0
  report = evaluate_per_class(feed, trained.variables, split, workdir, primary,
                              {'checkpoint_epoch': trained.epoch,
                               'weights': 'average' if trained.average else 'trained'},
                              config.eval.tta, temperature)
  if primary:
    run_page.write_after(workdir, 'The evaluation')
  return report
