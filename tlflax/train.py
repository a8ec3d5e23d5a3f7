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
import functools
import glob
import itertools
import json
import time
from pathlib import Path

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
from tlflax.classifier import Classifier, backbone_layers, init_variables
from tlflax.data import sources, transforms
from tlflax.data.folders import DataError, IMAGE_EXTENSIONS
from tlflax.data.pipeline import PipelineConfig, eval_dataset, train_steps
from tlflax.steps import TrainState, make_eval_step, make_train_step


def make_model(config) -> Classifier:
  return Classifier(alpha=config.model.alpha, dropout=config.model.dropout,
                    depthwise_implementation=config.model.depthwise_implementation,
                    dtype=jnp.dtype(config.compute.dtype))


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


PROGRESS_EVERY = 10  # steps between progress-bar metrics (each read waits for the device)


def _train_epoch(train_step, state, batches, total_steps: int, description: str):
  """One epoch with a progress bar; returns the state, mean training loss and accuracy, the
  first step's time (compilation included on a phase's first epoch) and images/s after it."""
  sums = _MetricSums()
  start = time.perf_counter()
  with tqdm(total=total_steps, desc=description, unit='batch', leave=False, disable=None) as bar:
    for steps, batch in enumerate(batches, 1):
      state, metrics = train_step(state, batch)
      sums.add(metrics)
      if steps == 1:
        jax.block_until_ready(metrics)
        first_step_end = time.perf_counter()
      elif steps % PROGRESS_EVERY == 0:
        bar.set_postfix({k: f'{v:.4f}' for k, v in sums.means().items()})
      bar.update(1)
  means = sums.means()  # waits for the last step
  end = time.perf_counter()
  rate = (float(sums.sums['count']) * (steps - 1) / steps / (end - first_step_end)
          if steps > 1 else float('nan'))
  return state, {**means, 'images_per_second': rate,
                 'first_step_seconds': first_step_end - start}


def _write_json(path: Path, value):
  path.write_text(json.dumps(value, indent=2))


def _phase_feed(config, model, variables, image_feed, boundary: int):
  """Cached activations at `boundary` when the config asks and they fit; else the image feed."""
  if not config.compute.cache_frozen:
    return image_feed
  examples = sum(image_feed.splits[name].num_examples for name in ('train', 'validation'))
  size = feeds.cache_bytes(model, variables, config.image_size, boundary,
                          examples // jax.process_count())
  if size > config.compute.cache_limit_gb * 1e9:
    logging.warning('Not caching: activations at backbone layer %d take %.1f GB, over '
                    'compute.cache_limit_gb=%g; training on images', boundary, size / 1e9,
                    config.compute.cache_limit_gb)
    return image_feed
  return feeds.CachedFeed(model, variables, image_feed, boundary)


@dataclasses.dataclass
class TrainResult:
  history: dict  # what history.json holds
  variables: dict  # the final {'params', 'batch_stats'} as host NumPy arrays


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> TrainResult:
  """Runs (or resumes) every phase of `config` in `workdir`; returns history and final model."""
  check_config(config)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  logging.info('Data parallel over %d devices (%d processes): %d images per device per step',
               mesh.size, jax.process_count(), config.batch_size // mesh.size)
  primary = jax.process_index() == 0  # writes the reports; every process checkpoints (orbax)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if primary:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  splits = load_splits(config)
  class_names = list(splits['train'].class_names)
  if len(class_names) != 2:
    raise DataError(f'the classifier is binary; the data has classes {class_names}')
  data_config = pipeline_config(config)
  image_feed = feeds.ImageFeed(splits, data_config, mesh, config.compute.prefetch)
  model = make_model(config)
  layers = backbone_layers(model)
  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  abstract = jax.eval_shape(lambda: init_variables(model, config.image_size, init_rng, 'none'))
  eval_step = make_eval_step(model.apply, mesh)
  checkpoints = checkpoints_lib.Checkpoints(workdir, config.checkpoints_to_keep,
                                            parallel.replicated(mesh))
  resume_epoch = checkpoints.latest_epoch()
  if resume_epoch is None:
    carried = parallel.replicate(
        init_variables(model, config.image_size, init_rng, config.model.weights), mesh)
    meta = {'phase': 0, 'phase_epochs_done': 0, 'epoch': 0, 'step': 0,
            'class_names': class_names, 'history': {'epochs': [], 'phases': {}}}
  else:
    meta = checkpoints.restore_meta(resume_epoch)
    logging.info('Resuming from %s after epoch %d', workdir, resume_epoch)
  history = meta['history']

  for phase_index, (phase_name, phase) in enumerate(config.phases.items()):
    if phase_index < meta['phase']:
      continue
    labels = optim.param_labels(abstract['params'], layers, phase.fine_tune_at)
    tx = optim.make_optimizer(phase.optimizer, phase.learning_rate, labels)
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
      initial = evaluate(eval_step, carried, image_feed.evaluation('validation'))
      history['initial'] = {'val_loss': initial['loss'], 'val_accuracy': initial['accuracy']}
      logging.info('Before training: val_loss %.4f, val_accuracy %.4f',
                   initial['loss'], initial['accuracy'])
    phase_start = time.perf_counter()  # from here: caches, compilation, epochs and validation
    if done == phase.epochs:
      feed = image_feed
    else:
      feed = _phase_feed(config, model, {'params': state.params, 'batch_stats': state.batch_stats},
                         image_feed, feeds.cache_boundary(phase.fine_tune_at, len(layers)))
    apply_fn = functools.partial(model.apply, start=feed.start)
    train_step = make_train_step(apply_fn, tx, labels, dropout_rng, mesh)
    phase_eval_step = make_eval_step(apply_fn, mesh) if feed.start else eval_step
    steps = train_steps(splits['train'], data_config)
    for phase_epoch in range(done, phase.epochs):
      epoch = meta['epoch'] + 1
      description = f'{phase_name} {phase_epoch + 1}/{phase.epochs}'
      state, train_metrics = _train_epoch(train_step, state, feed.train(epoch - 1), steps,
                                          description)
      validation_start = time.perf_counter()
      validation = evaluate(phase_eval_step,
                            {'params': state.params, 'batch_stats': state.batch_stats},
                            feed.evaluation('validation'))
      record = {'phase': phase_name, 'epoch': epoch, **train_metrics,
                'val_loss': validation['loss'], 'val_accuracy': validation['accuracy'],
                'val_images_per_second': splits['validation'].num_examples
                                         / (time.perf_counter() - validation_start)}
      history['epochs'].append(record)
      logging.info('Epoch %d (%s %d/%d): loss %.4f, accuracy %.4f, val_loss %.4f, '
                   'val_accuracy %.4f, %.1f images/s', epoch, phase_name, phase_epoch + 1,
                   phase.epochs, record['loss'], record['accuracy'], record['val_loss'],
                   record['val_accuracy'], record['images_per_second'])
      history['phases'][phase_name] = {
          'seconds': time.perf_counter() - phase_start, 'cached_from_layer': feed.start or None,
          'cache_seconds': feed.cache_seconds}
      meta.update(phase=phase_index, phase_epochs_done=phase_epoch + 1, epoch=epoch,
                  step=int(state.step), history=history)
      checkpoints.save(epoch, state, meta)
      if primary:
        _write_json(workdir / 'history.json', history)
    checkpoints.save_phase(phase_name, state)
    carried = {'params': state.params, 'batch_stats': state.batch_stats}
    meta.update(phase=phase_index + 1, phase_epochs_done=0)
  if resume_epoch is not None:  # every phase had finished: only the reports were left
    carried = checkpoints.restore_model(resume_epoch, abstract)
  checkpoints.close()

  history['test'] = evaluate(eval_step, carried, image_feed.evaluation('test'))
  logging.info('Test: loss %.4f, accuracy %.4f', history['test']['loss'],
               history['test']['accuracy'])
  carried = parallel.to_host(carried)
  if primary:
    _write_json(workdir / 'history.json', history)
    _write_json(workdir / 'test_metrics.json', history['test'])
    (workdir / 'final_variables.msgpack').write_bytes(serialization.to_bytes(carried))
    if history['epochs']:
      plots.learning_curves(history, workdir / 'learning_curves.png')
    _plot_test_predictions(model, carried, splits['test'], data_config, class_names,
                           workdir / 'predictions.png')
  return TrainResult(history, carried)


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


def _restore_latest_model(config, workdir, mesh):
  model = make_model(config)
  checkpoints = checkpoints_lib.Checkpoints(workdir, sharding=parallel.replicated(mesh))
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
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  model, variables, _ = _restore_latest_model(config, workdir, mesh)
  feed = feeds.ImageFeed(load_splits(config), pipeline_config(config), mesh,
                         config.compute.prefetch)
  return evaluate(make_eval_step(model.apply, mesh), variables, feed.evaluation('test'))


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


def _readable_images(paths: list[Path], image_size: int):
  """(path, preprocessed image) for each path that decodes; warns about the others."""
  for path in paths:
    try:
      yield path, transforms.preprocess(path.read_bytes(), image_size).numpy()
    except Exception as e:  # TF raises assorted errors for files that are not images
      logging.warning('skipped %s: not a readable image (%s)', path, type(e).__name__)


def predict(config, workdir, inputs: str) -> list[tuple[str, str, float]]:
  """Classifies images with the latest checkpoint, `batch_size` at a time (the last batch is
  padded, so one compilation serves all); writes WORKDIR/predictions.csv."""
  check_config(config)
  model, variables, class_names = _restore_latest_model(config, workdir, parallel.data_mesh())
  apply = jax.jit(model.apply)
  images = _readable_images(list_images(inputs), config.image_size)
  rows = []
  while chunk := list(itertools.islice(images, config.batch_size)):
    paths, arrays = zip(*chunk)
    batch = np.zeros((config.batch_size, *arrays[0].shape), np.float32)
    batch[:len(arrays)] = arrays
    names, probabilities = _classes_and_probabilities(apply(variables, batch)[:len(paths)],
                                                      class_names)
    rows.extend(zip(map(str, paths), names, map(float, probabilities)))
  with open(Path(workdir) / 'predictions.csv', 'w') as f:
    f.write('path,label,probability\n')
    f.writelines(f'{p},{label},{prob:.6f}\n' for p, label, prob in rows)
  return rows
