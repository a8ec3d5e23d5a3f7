"""The transfer-learning recipe: config in, trained model and reports in the workdir.

`train_and_evaluate(config, workdir)` builds data, model, per-phase optimizers and checkpoints from
the config, evaluates before training, runs the phases in `config.phase_order` (a new phase starts
from the previous phase's parameters with a fresh optimizer), evaluates on the test split and writes:

    config.json, history.json, test_metrics.json, learning_curves.png, predictions.png,
    final_variables.msgpack, checkpoints/<epoch>/, phases/<phase name>/

Started again on the same workdir, it resumes after the newest checkpoint that restores: the
checkpoint's global epoch and the config's phase lengths give the phase and the epoch inside it,
and the run ends with the parameters of an uninterrupted one. The workdir's run must have been made
with the same config (else `ConfigError` lists what differs; `allow_config_change` continues with
the new values where that is possible). A NaN or infinite loss stops the run (`TrainingDiverged`)
before the diverged state is checkpointed.
"""
import dataclasses
import functools
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import serialization
from tqdm import tqdm

from tlflax import checkpoints as checkpoints_lib
from tlflax import config as config_lib
from tlflax import feeds, optim, parallel, plots
from tlflax.classifier import Classifier, backbone_layers, class_probabilities, init_variables
from tlflax.data import sources
from tlflax.data.pipeline import PipelineConfig, eval_dataset, train_steps
from tlflax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from tlflax.steps import TrainState, make_eval_step, make_train_step


def make_model(config) -> Classifier:
  return Classifier(alpha=config.model.alpha, dropout=config.model.dropout,
                    depthwise_implementation=config.model.depthwise_implementation,
                    dtype=jnp.dtype(config.compute.dtype))


def check_config(config):
  """Fails with `ConfigError` naming the key, before any work, if `config` cannot run."""
  config_lib.validate(config, lambda: len(backbone_layers(make_model(config))))


def load_splits(config) -> dict:
  if config.data.folder:
    return sources.folder_splits(config.data.folder, seed=config.seed,
                                 max_pixels=config.data.max_pixels)
  return sources.tfds_splits(config.data.tfds_name, config.data.split_scheme,
                             config.data.data_dir or None)


def pipeline_config(config) -> PipelineConfig:
  return PipelineConfig(image_size=config.image_size, batch_size=config.batch_size,
                        shuffle_buffer=config.data.shuffle_buffer, flip=config.data.flip,
                        rotation_factor=config.data.rotation_factor, seed=config.seed,
                        max_pixels=config.data.max_pixels)


def config_as_json(config) -> dict:
  """The resolved config as plain JSON values (what `config.json` and checkpoints record), with
  `phase_order` as the list of names it resolves to."""
  values = json.loads(config.to_json_best_effort())
  values['phase_order'] = [name for name, _ in config_lib.ordered_phases(config)]
  return values


def write_atomically(path: Path, content: bytes):
  """Writes a temporary file and renames it into place: a crash never leaves a truncated file."""
  temporary = path.with_name(f'.{path.name}.tmp')
  temporary.write_bytes(content)
  os.replace(temporary, path)


def write_json(path: Path, value):
  """Strict JSON (no NaN or Infinity), written atomically."""
  write_atomically(path, json.dumps(value, indent=2, allow_nan=False).encode())


class _MetricSums:
  """Running sums of the steps' {'loss', 'correct', 'count'}, kept on the device, and their means
  (reading those waits for the steps)."""

  def __init__(self):
    self.sums = None

  def add(self, metrics):
    self.sums = metrics if self.sums is None else jax.tree.map(jnp.add, self.sums, metrics)

  def means(self) -> dict:
    sums = {k: float(v) for k, v in self.sums.items()}
    count = max(sums['count'], 1)
    return {'loss': sums['loss'] / count, 'accuracy': sums['correct'] / count}


def evaluate(eval_step, variables: dict, batches) -> dict:
  """Loss and accuracy over `batches` (every example of a split once)."""
  sums = _MetricSums()
  for batch in batches:
    sums.add(eval_step(variables['params'], variables['batch_stats'], batch))
  return sums.means()


@dataclasses.dataclass(frozen=True)
class Phase:
  """A phase of the run, placed on the run's global epoch count."""
  name: str
  settings: ml_collections.ConfigDict  # epochs, optimizer, learning_rate, fine_tune_at
  first_epoch: int  # global epochs before it

  @property
  def last_epoch(self) -> int:
    return self.first_epoch + self.settings.epochs


def phase_plan(config) -> list[Phase]:
  """The phases in `config.phase_order`, each with the global epochs that precede it."""
  plan, first = [], 0
  for name, settings in config_lib.ordered_phases(config):
    plan.append(Phase(name, settings, first))
    first += settings.epochs
  return plan


def locate(plan: list[Phase], epoch: int) -> tuple[Phase, int]:
  """The phase that trains global epoch `epoch` (>= 1), and its epochs done after it."""
  for phase in plan:
    if phase.first_epoch < epoch <= phase.last_epoch:
      return phase, epoch - phase.first_epoch
  raise ConfigError(f'the config has {plan[-1].last_epoch} epochs in all; the workdir has a '
                    f'checkpoint of epoch {epoch}')


@dataclasses.dataclass
class Run:
  """What the phases of one run share, built from the config."""
  config: ml_collections.ConfigDict
  workdir: Path
  allow_config_change: bool
  mesh: jax.sharding.Mesh
  splits: dict
  class_names: list
  model: Classifier
  image_feed: feeds.ImageFeed
  abstract: dict  # shapes of {'params', 'batch_stats'}
  eval_step: object
  checkpoints: checkpoints_lib.Checkpoints
  primary: bool = dataclasses.field(default_factory=lambda: jax.process_index() == 0)

  @classmethod
  def create(cls, config, workdir, allow_config_change: bool) -> 'Run':
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    logging.info('Data parallel over %d devices (%d processes): %d images per device per step',
                 mesh.size, jax.process_count(), config.batch_size // mesh.size)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    splits = load_splits(config)
    class_names = list(splits['train'].class_names)
    if len(class_names) != 2:
      raise DataError(f'the classifier is binary; the data has classes {class_names}')
    model = make_model(config)
    abstract = jax.eval_shape(lambda: init_variables(model, config.image_size, jax.random.key(0),
                                                     'none'))
    return cls(config, workdir, allow_config_change, mesh, splits, class_names, model,
               feeds.ImageFeed(splits, pipeline_config(config), mesh, config.compute.prefetch),
               abstract, make_eval_step(model.apply, mesh),
               checkpoints_lib.Checkpoints(workdir, config.checkpoints_to_keep,
                                           parallel.replicated(mesh)))

  def rngs(self):
    """(initialization key, dropout key) from the config's seed."""
    return jax.random.split(jax.random.key(self.config.seed))

  def optimizer(self, phase: Phase):
    """(labels, optax transformation) of a phase: its frozen and trainable parameters."""
    labels = optim.param_labels(self.abstract['params'], backbone_layers(self.model),
                                phase.settings.fine_tune_at)
    return labels, optim.make_optimizer(phase.settings.optimizer, phase.settings.learning_rate,
                                        labels)


@dataclasses.dataclass
class Position:
  """Where training stands: after global epoch `epoch` and step `step`."""
  epoch: int
  step: int
  variables: dict  # {'params', 'batch_stats'} on the mesh
  history: dict  # what history.json holds
  state: Optional[TrainState] = None  # mid-phase: the phase's train state, optimizer included


def train_and_evaluate(config: ml_collections.ConfigDict, workdir,
                       allow_config_change: bool = False) -> 'TrainResult':
  """Runs (or resumes) every phase of `config` in `workdir`; returns history and final model."""
  check_config(config)
  run = Run.create(config, workdir, allow_config_change)
  position = _restore_or_initialize(run)
  if 'initial' not in position.history:  # the tutorial's loss0 / accuracy0
    initial = _checked(evaluate(run.eval_step, position.variables,
                                run.image_feed.evaluation('validation')), 'before training')
    position.history['initial'] = {'val_loss': initial['loss'],
                                   'val_accuracy': initial['accuracy']}
    logging.info('Before training: val_loss %.4f, val_accuracy %.4f', initial['loss'],
                 initial['accuracy'])
  for phase in phase_plan(config):
    if position.epoch < phase.last_epoch:
      position = _run_phase(run, phase, position)
  run.checkpoints.close()
  history = position.history
  history['test'] = _checked(evaluate(run.eval_step, position.variables,
                                      run.image_feed.evaluation('test')), 'test split')
  logging.info('Test: loss %.4f, accuracy %.4f', history['test']['loss'],
               history['test']['accuracy'])
  variables = parallel.to_host(position.variables)
  if run.primary:
    _write_reports(run, history, variables)
  return TrainResult(history, variables)


@dataclasses.dataclass
class TrainResult:
  history: dict  # what history.json holds
  variables: dict  # the final {'params', 'batch_stats'} as host NumPy arrays


def _restore_or_initialize(run: Run) -> Position:
  """The newest checkpoint that restores, checked against the config; else a fresh start."""
  def restore(epoch):
    meta = _checkpoint_meta(run.checkpoints, epoch)
    changed = _config_changes(run, meta['config'])
    phase, done = _check_resume(run, meta, epoch, changed)
    if done < phase.settings.epochs:  # mid-phase: the optimizer state too
      _, tx = run.optimizer(phase)
      state = run.checkpoints.restore_state(
          epoch, jax.eval_shape(lambda: TrainState.create(run.abstract, tx)))
      return Position(epoch, meta['step'], state.variables, meta['history'], state), changed
    return Position(epoch, meta['step'], run.checkpoints.restore_model(epoch, run.abstract),
                    meta['history']), changed

  restored = run.checkpoints.restore_newest(restore, set_aside=True)
  if restored is not None:
    epoch, (position, changed) = restored
    logging.info('Resuming from %s after epoch %d', run.workdir, epoch)
    _write_config(run, changed, epoch)
    return position
  config_path = run.workdir / 'config.json'
  stored = json.loads(config_path.read_text()) if config_path.is_file() else None
  _write_config(run, _config_changes(run, stored), 0)
  init_rng, _ = run.rngs()
  variables = init_variables(run.model, run.config.image_size, init_rng, run.config.model.weights)
  return Position(0, 0, parallel.replicate(variables, run.mesh), {'epochs': [], 'phases': {}})


META_KEYS = ('phase', 'phase_epoch', 'epoch', 'step', 'class_names', 'config', 'history')


def _checkpoint_meta(checkpoints, epoch: int) -> dict:
  meta = checkpoints.restore_meta(epoch)
  missing = [key for key in META_KEYS if key not in meta]
  if missing:
    raise CheckpointError(f'the checkpoint of epoch {epoch} in {checkpoints.workdir} lacks '
                          f'{missing}: it was written by an older tlflax. Use another workdir.')
  return meta


def _check_resume(run: Run, meta: dict, epoch: int, changed: dict) -> tuple[Phase, int]:
  """The phase and epochs done that checkpoint `epoch` stands for under the run's config, which
  may differ from the checkpoint's (`changed`) only where the run can still continue."""
  if meta['class_names'] != run.class_names:
    raise DataError(f'{run.workdir} holds a run on classes {meta["class_names"]}; the data now has '
                    f'{run.class_names}. Use another workdir.')
  phase, done = locate(phase_plan(run.config), epoch)
  if (phase.name, done) != (meta['phase'], meta['phase_epoch']):
    raise ConfigError(f'cannot continue {run.workdir}: its epoch {epoch} was epoch '
                      f'{meta["phase_epoch"]} of phase {meta["phase"]!r}, and the config now makes '
                      f'it epoch {done} of phase {phase.name!r}. Use another workdir.')
  structural = {'model.alpha'}
  if done < phase.settings.epochs:  # the optimizer state carries on
    structural |= {f'phases.{phase.name}.{key}' for key in ('fine_tune_at', 'optimizer')}
  blocking = sorted(structural & set(changed))
  if blocking:
    raise ConfigError(f'cannot continue {run.workdir} with a new {", ".join(blocking)}: the '
                      'checkpoint holds parameters or optimizer state of another shape. Use '
                      'another workdir.')
  return phase, done


def _config_changes(run: Run, stored: Optional[dict]) -> dict:
  """{key: (stored, now)} where the run's config differs from the `stored` one of the workdir's
  run; a difference outside `config_lib.RESUME_SAFE` is a `ConfigError` unless
  `allow_config_change`."""
  changed = config_lib.differences(stored, config_as_json(run.config)) if stored else {}
  unsafe = {k: v for k, v in changed.items() if k not in config_lib.RESUME_SAFE}
  if unsafe and not run.allow_config_change:
    raise ConfigError(f'{run.workdir} holds a run made with another config '
                      f'({_listing(unsafe)}). Use another workdir, or pass '
                      '--allow_config_change to continue this run with the new values.')
  return changed


def _listing(changed: dict) -> str:
  return '; '.join(f'{key}: {old!r} -> {new!r}' for key, (old, new) in changed.items())


def _write_config(run: Run, changed: dict, epoch: int):
  """config.json := the run's config. A config it replaces (`changed`) is kept as
  config.before_epoch_<epoch>.json."""
  if not run.primary:
    return
  config_path = run.workdir / 'config.json'
  if changed:
    logging.warning('Continuing %s with a changed config: %s', run.workdir, _listing(changed))
    if config_path.exists():
      kept = run.workdir / f'config.before_epoch_{epoch}.json'
      for again in itertools.count(2):
        if not kept.exists():
          break
        kept = run.workdir / f'config.before_epoch_{epoch}_{again}.json'
      os.replace(config_path, kept)
  write_json(config_path, config_as_json(run.config))


def _run_phase(run: Run, phase: Phase, position: Position) -> Position:
  """Trains `phase` from `position` to its last epoch, checkpointing after every epoch."""
  labels, tx = run.optimizer(phase)
  state = position.state or TrainState.create(position.variables, tx, position.step)
  settings, history = phase.settings, position.history
  counts = optim.count_params(state.params, labels)
  logging.info('Phase %s: %s epochs, %s at %g, fine_tune_at %s; trainable params %s, frozen %s',
               phase.name, settings.epochs, settings.optimizer, settings.learning_rate,
               settings.fine_tune_at, f"{counts['trainable']:,}", f"{counts['frozen']:,}")
  phase_start = time.perf_counter()  # from here: caches, compilation, epochs and validation
  feed = _phase_feed(run, state.variables, feeds.cache_boundary(
      settings.fine_tune_at, len(backbone_layers(run.model))))
  apply_fn = functools.partial(run.model.apply, start=feed.start)
  _, dropout_rng = run.rngs()
  train_step = make_train_step(apply_fn, tx, labels, dropout_rng, run.mesh)
  eval_step = make_eval_step(apply_fn, run.mesh) if feed.start else run.eval_step
  for epoch in range(position.epoch + 1, phase.last_epoch + 1):
    state, record = _run_epoch(run, phase, epoch, state, train_step, eval_step, feed)
    history['epochs'].append(record)
    history['phases'][phase.name] = {
        'seconds': time.perf_counter() - phase_start, 'cached_from_layer': feed.start or None,
        'cache_seconds': feed.cache_seconds}
    if epoch == phase.last_epoch:  # before the epoch's checkpoint, which marks the phase done
      run.checkpoints.save_phase(phase.name, state.variables)
    run.checkpoints.save(epoch, state, {
        'phase': phase.name, 'phase_epoch': epoch - phase.first_epoch, 'epoch': epoch,
        'step': int(state.step), 'class_names': run.class_names,
        'config': config_as_json(run.config), 'history': history})
    if run.primary:
      write_json(run.workdir / 'history.json', history)
  return Position(phase.last_epoch, int(state.step), state.variables, history)


def _run_epoch(run: Run, phase: Phase, epoch: int, state, train_step, eval_step, feed):
  """One epoch of `phase` and its validation; (state, the epoch's history record)."""
  phase_epoch = epoch - phase.first_epoch
  where = f'phase {phase.name!r}, epoch {phase_epoch}/{phase.settings.epochs} (global {epoch})'
  state, train_metrics = _train_epoch(
      train_step, state, feed.train(epoch - 1),
      train_steps(run.splits['train'], run.image_feed.config), where)
  validation_start = time.perf_counter()
  validation = _checked(evaluate(eval_step, state.variables, feed.evaluation('validation')),
                        f'validation after {where}')
  record = {'phase': phase.name, 'epoch': epoch, **train_metrics,
            'val_loss': validation['loss'], 'val_accuracy': validation['accuracy'],
            'val_images_per_second': run.splits['validation'].num_examples
                                     / (time.perf_counter() - validation_start)}
  logging.info('Epoch %d (%s %d/%d): loss %.4f, accuracy %.4f, val_loss %.4f, val_accuracy %.4f, '
               '%s images/s', epoch, phase.name, phase_epoch, phase.settings.epochs,
               record['loss'], record['accuracy'], record['val_loss'], record['val_accuracy'],
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


def _train_epoch(train_step, state, batches, total_steps: int, where: str):
  """One epoch with a progress bar; returns the state and the epoch's mean training loss and
  accuracy, first step's time (compilation included on a phase's first epoch) and images/s after
  it (None for a one-step epoch). Every `PROGRESS_EVERY` steps and at the end, a non-finite loss
  raises `TrainingDiverged` naming the first step that had one."""
  sums, unread = _MetricSums(), []
  start = time.perf_counter()
  with tqdm(total=total_steps, desc=where, unit='batch', leave=False, disable=None) as bar:
    for steps, batch in enumerate(batches, 1):
      state, metrics = train_step(state, batch)
      sums.add(metrics)
      unread.append(metrics)
      if steps == 1:
        jax.block_until_ready(metrics)
        first_step_end = time.perf_counter()
      if steps % PROGRESS_EVERY == 0:
        means = _finite_training_means(sums, unread, steps, where)
        bar.set_postfix({k: f'{v:.4f}' for k, v in means.items()})
        unread = []
      bar.update(1)
  means = _finite_training_means(sums, unread, steps, where)  # waits for the last step
  end = time.perf_counter()
  rate = (float(sums.sums['count']) * (steps - 1) / steps / (end - first_step_end)
          if steps > 1 else None)
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


def _phase_feed(run: Run, variables, boundary: int):
  """Cached activations at `boundary` when the config asks and they fit; else the image feed."""
  compute = run.config.compute
  if not compute.cache_frozen:
    return run.image_feed
  examples = sum(run.splits[name].num_examples for name in ('train', 'validation'))
  size = feeds.cache_bytes(run.model, variables, run.config.image_size, boundary,
                          examples // jax.process_count())
  if size > compute.cache_limit_gb * 1e9:
    logging.warning('Not caching: activations at backbone layer %d take %.1f GB, over '
                    'compute.cache_limit_gb=%g; training on images', boundary, size / 1e9,
                    compute.cache_limit_gb)
    return run.image_feed
  return feeds.CachedFeed(run.model, variables, run.image_feed, boundary)


def _write_reports(run: Run, history: dict, variables: dict):
  """history.json, test_metrics.json, final_variables.msgpack and the two figures."""
  write_json(run.workdir / 'history.json', history)
  write_json(run.workdir / 'test_metrics.json', history['test'])
  write_atomically(run.workdir / 'final_variables.msgpack', serialization.to_bytes(variables))
  if history['epochs']:
    plots.learning_curves(history, run.workdir / 'learning_curves.png')
  # the tutorial's 3x3 grid, from a seeded shuffle of the test split (which is in class order)
  test = run.splits['test']
  shuffled = dataclasses.replace(test, dataset=test.dataset.shuffle(1000, seed=run.config.seed))
  batch = next(eval_dataset(shuffled, run.image_feed.config).as_numpy_iterator())
  logits = jax.jit(run.model.apply)(variables, batch['image'][:9])
  names, probabilities = class_probabilities(logits, run.class_names)
  plots.prediction_grid(batch['image'][:9], names, probabilities,
                        run.workdir / 'predictions.png')


def restore_for_inference(config, workdir, mesh) -> tuple[Classifier, dict, list]:
  """(model, variables, class names) of the workdir's newest checkpoint that restores."""
  model = make_model(config)
  checkpoints = checkpoints_lib.Checkpoints(workdir, sharding=parallel.replicated(mesh))
  abstract = jax.eval_shape(lambda: init_variables(
      model, config.image_size, jax.random.key(0), 'none'))

  def restore(epoch):
    meta = _checkpoint_meta(checkpoints, epoch)
    trained_alpha = meta['config']['model']['alpha']
    if trained_alpha != config.model.alpha:
      raise ConfigError(f'{workdir} holds a model with model.alpha={trained_alpha}; the config '
                        f'has {config.model.alpha}')
    return checkpoints.restore_model(epoch, abstract), meta['class_names']

  restored = checkpoints.restore_newest(restore)
  checkpoints.close()
  if restored is None:
    raise DataError(f'{workdir} has no checkpoint to use; train first')
  variables, class_names = restored[1]
  return model, variables, class_names


def evaluate_checkpoint(config, workdir) -> dict:
  """Test loss and accuracy of the workdir's newest checkpoint."""
  check_config(config)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  model, variables, _ = restore_for_inference(config, workdir, mesh)
  feed = feeds.ImageFeed(load_splits(config), pipeline_config(config), mesh,
                         config.compute.prefetch)
  return evaluate(make_eval_step(model.apply, mesh), variables, feed.evaluation('test'))
