"""The two-phase transfer-learning recipe: config in, trained model and reports in the workdir.

`train_and_evaluate(config, workdir)` builds data, model, per-phase optimizers and checkpoints from
the config, evaluates before training, trains phase after phase (a new phase starts from the previous
phase's parameters with a fresh optimizer), evaluates on the test split and writes:

    config.json, history.json, test_metrics.json, learning_curves.png, predictions.png,
    final_variables.msgpack, checkpoints/<epoch>/, phases/<phase name>/

Started again on the same workdir, it resumes after the last saved epoch (same phase, optimizer
state, step, data order and dropout keys) and ends with the parameters of an uninterrupted run.
"""
import dataclasses
import glob
import json
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import serialization
from tqdm import tqdm

from tlflax import checkpoints as checkpoints_lib
from tlflax import config as config_lib
from tlflax import optim, plots
from tlflax.classifier import Classifier, backbone_layers, init_variables
from tlflax.data import sources, transforms
from tlflax.data.folders import DataError, IMAGE_EXTENSIONS
from tlflax.data.pipeline import PipelineConfig, eval_dataset, train_dataset
from tlflax.steps import TrainState, make_eval_step, make_train_step


def make_model(config) -> Classifier:
  return Classifier(alpha=config.model.alpha, dropout=config.model.dropout,
                    depthwise_implementation=config.model.depthwise_implementation)


def check_config(config):
  """Fails with `ConfigError` naming the key, before any work, if `config` cannot run."""
  config_lib.validate(config, len(backbone_layers(make_model(config))))


def load_splits(config) -> dict:
  if config.data.folder:
    return sources.folder_splits(config.data.folder, seed=config.seed)
  return sources.tfds_splits(config.data.tfds_name, config.data.split_scheme,
                             config.data.data_dir or None)


def pipeline_config(config) -> PipelineConfig:
  return PipelineConfig(image_size=config.image_size, batch_size=config.batch_size,
                        shuffle_buffer=config.data.shuffle_buffer, flip=config.data.flip,
                        rotation_factor=config.data.rotation_factor, seed=config.seed)


class _MetricSums:
  """Running sums of the steps' {'loss', 'correct', 'count'}, and their means."""

  def __init__(self):
    self.sums = {'loss': 0.0, 'correct': 0.0, 'count': 0.0}

  def add(self, metrics):
    for key, value in metrics.items():
      self.sums[key] += float(value)

  def means(self) -> dict:
    count = max(self.sums['count'], 1)
    return {'loss': self.sums['loss'] / count, 'accuracy': self.sums['correct'] / count}


def evaluate(eval_step, variables: dict, source, config: PipelineConfig) -> dict:
  """Loss and accuracy over every example of `source` exactly once."""
  sums = _MetricSums()
  for batch in eval_dataset(source, config).as_numpy_iterator():
    sums.add(eval_step(variables['params'], variables['batch_stats'], batch))
  return sums.means()


def _train_epoch(train_step, state, source, config: PipelineConfig, epoch: int, description: str):
  """One epoch with a progress bar; returns the state and mean training loss and accuracy."""
  sums = _MetricSums()
  steps = source.num_examples // config.batch_size
  start = time.perf_counter()
  with tqdm(total=steps, desc=description, unit='batch', leave=False, disable=None) as bar:
    for batch in train_dataset(source, config, epoch).as_numpy_iterator():
      state, metrics = train_step(state, batch)
      sums.add(metrics)
      images_per_second = sums.sums['count'] / (time.perf_counter() - start)
      bar.update(1)
      bar.set_postfix({**{k: f'{v:.4f}' for k, v in sums.means().items()},
                       'images_per_s': f'{images_per_second:.1f}'})
  return state, {**sums.means(), 'images_per_second': images_per_second}


def _write_json(path: Path, value):
  path.write_text(json.dumps(value, indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Runs (or resumes) every phase of `config` in `workdir`; returns the history."""
  check_config(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  splits = load_splits(config)
  class_names = list(splits['train'].class_names)
  if len(class_names) != 2:
    raise DataError(f'the classifier is binary; the data has classes {class_names}')
  data_config = pipeline_config(config)
  model = make_model(config)
  layers = backbone_layers(model)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  abstract = jax.eval_shape(lambda: init_variables(model, config.image_size, init_rng, 'none'))
  eval_step = make_eval_step(model.apply)
  checkpoints = checkpoints_lib.Checkpoints(workdir, config.checkpoints_to_keep)
  resume_epoch = checkpoints.latest_epoch()
  if resume_epoch is None:
    carried = init_variables(model, config.image_size, init_rng, config.model.weights)
    meta = {'phase': 0, 'phase_epochs_done': 0, 'epoch': 0, 'step': 0,
            'class_names': class_names, 'history': {'epochs': []}}
  else:
    meta = checkpoints.restore_meta(resume_epoch)
    logging.info('Resuming from %s after epoch %d', workdir, resume_epoch)
  history = meta['history']

  for phase_index, (phase_name, phase) in enumerate(config.phases.items()):
    if phase_index < meta['phase']:
      continue
    labels = optim.param_labels(abstract['params'], layers, phase.fine_tune_at)
    tx = optim.make_optimizer(phase.optimizer, phase.learning_rate, labels)
    train_step = make_train_step(model.apply, tx, labels, dropout_rng)
    done, state = 0, None
    if resume_epoch is not None:  # the phase of the last saved epoch
      done = meta['phase_epochs_done']
      if done < phase.epochs:
        state = checkpoints.restore_state(
            resume_epoch, jax.eval_shape(lambda: TrainState.create(abstract, tx)))
      else:
        carried = checkpoints.restore_model(resume_epoch, abstract)
      resume_epoch = None
    if state is None:
      state = TrainState.create(carried, tx, meta['step'])
    counts = optim.count_params(state.params, labels)
    logging.info('Phase %s: %s epochs, %s at %g, fine_tune_at %s; trainable params %s, frozen %s',
                 phase_name, phase.epochs, phase.optimizer, phase.learning_rate,
                 phase.fine_tune_at, f"{counts['trainable']:,}", f"{counts['frozen']:,}")
    if 'initial' not in history:  # the tutorial's loss0 / accuracy0
      initial = evaluate(eval_step, carried, splits['validation'], data_config)
      history['initial'] = {'val_loss': initial['loss'], 'val_accuracy': initial['accuracy']}
      logging.info('Before training: val_loss %.4f, val_accuracy %.4f',
                   initial['loss'], initial['accuracy'])
    for phase_epoch in range(done, phase.epochs):
      epoch = meta['epoch'] + 1
      description = f'{phase_name} {phase_epoch + 1}/{phase.epochs}'
      state, train_metrics = _train_epoch(train_step, state, splits['train'], data_config,
                                          epoch - 1, description)
      validation = evaluate(eval_step, {'params': state.params, 'batch_stats': state.batch_stats},
                            splits['validation'], data_config)
      record = {'phase': phase_name, 'epoch': epoch, **train_metrics,
                'val_loss': validation['loss'], 'val_accuracy': validation['accuracy']}
      history['epochs'].append(record)
      logging.info('Epoch %d (%s %d/%d): loss %.4f, accuracy %.4f, val_loss %.4f, '
                   'val_accuracy %.4f, %.1f images/s', epoch, phase_name, phase_epoch + 1,
                   phase.epochs, record['loss'], record['accuracy'], record['val_loss'],
                   record['val_accuracy'], record['images_per_second'])
      meta.update(phase=phase_index, phase_epochs_done=phase_epoch + 1, epoch=epoch,
                  step=int(state.step), history=history)
      checkpoints.save(epoch, state, meta)
      _write_json(workdir / 'history.json', history)
    checkpoints.save_phase(phase_name, state)
    carried = {'params': state.params, 'batch_stats': state.batch_stats}
    meta.update(phase=phase_index + 1, phase_epochs_done=0)
  if resume_epoch is not None:  # every phase had finished: only the reports were left
    carried = checkpoints.restore_model(resume_epoch, abstract)
  checkpoints.close()

  history['test'] = evaluate(eval_step, carried, splits['test'], data_config)
  logging.info('Test: loss %.4f, accuracy %.4f', history['test']['loss'],
               history['test']['accuracy'])
  _write_json(workdir / 'history.json', history)
  _write_json(workdir / 'test_metrics.json', history['test'])
  (workdir / 'final_variables.msgpack').write_bytes(serialization.to_bytes(carried))
  if history['epochs']:
    plots.learning_curves(history, workdir / 'learning_curves.png')
  _plot_test_predictions(model, carried, splits['test'], data_config, class_names,
                         workdir / 'predictions.png')
  return history


def _plot_test_predictions(model, variables, source, config, class_names, path):
  """The tutorial's 3x3 grid, from a seeded shuffle of the test split (which is in class order)."""
  shuffled = dataclasses.replace(source, dataset=source.dataset.shuffle(1000, seed=config.seed))
  batch = next(eval_dataset(shuffled, config).as_numpy_iterator())
  logits = jax.jit(model.apply)(variables, batch['image'][:9])
  names, probabilities = _classes_and_probabilities(logits, class_names)
  plots.prediction_grid(batch['image'][:9], names, probabilities, path)


def _classes_and_probabilities(logits, class_names):
  """Predicted class names and the probability of each predicted class."""
  p = np.asarray(jax.nn.sigmoid(logits))
  return [class_names[int(q > 0.5)] for q in p], np.where(p > 0.5, p, 1 - p)


def _restore_latest_model(config, workdir):
  model = make_model(config)
  checkpoints = checkpoints_lib.Checkpoints(workdir)
  epoch = checkpoints.latest_epoch()
  if epoch is None:
    raise DataError(f'{workdir} has no checkpoint to use; train first')
  abstract = jax.eval_shape(lambda: init_variables(
      model, config.image_size, jax.random.key(0), 'none'))
  variables = checkpoints.restore_model(epoch, abstract)
  class_names = checkpoints.restore_meta(epoch)['class_names']
  checkpoints.close()
  return model, variables, class_names


def evaluate_checkpoint(config, workdir) -> dict:
  """Test loss and accuracy of the workdir's latest checkpoint."""
  check_config(config)
  model, variables, _ = _restore_latest_model(config, workdir)
  return evaluate(make_eval_step(model.apply), variables, load_splits(config)['test'],
                  pipeline_config(config))


def list_images(inputs: str) -> list[Path]:
  """A file, a folder (searched recursively) or a glob pattern -> image paths, sorted."""
  path = Path(inputs).expanduser()
  if path.is_file():
    return [path]
  candidates = path.rglob('*') if path.is_dir() else map(Path, glob.glob(str(path), recursive=True))
  images = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
  if not images:
    raise DataError(f'no images found at {inputs}')
  return images


def predict(config, workdir, inputs: str) -> list[tuple[str, str, float]]:
  """Classifies images with the latest checkpoint; writes WORKDIR/predictions.csv."""
  check_config(config)
  model, variables, class_names = _restore_latest_model(config, workdir)
  apply = jax.jit(model.apply)
  rows = []
  for path in list_images(inputs):
    try:
      image = transforms.preprocess(Path(path).read_bytes(), config.image_size)
    except Exception as e:  # TF raises assorted errors for files that are not images
      logging.warning('skipped %s: not a readable image (%s)', path, type(e).__name__)
      continue
    names, probabilities = _classes_and_probabilities(apply(variables, image.numpy()[None]),
                                                      class_names)
    rows.append((str(path), names[0], float(probabilities[0])))
  with open(Path(workdir) / 'predictions.csv', 'w') as f:
    f.write('path,label,probability\n')
    f.writelines(f'{p},{label},{prob:.6f}\n' for p, label, prob in rows)
  return rows
