"""A run's parts, built from its config: the model, the data splits and their feed, the objective,
and a trained model restored for inference. Training (`tlflax.train`), prediction
(`tlflax.predict`) and export (`tlflax.export`) build them here, so that the last two never import
the training loop.
"""
import dataclasses
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
from absl import logging

from tlflax import checkpoints as checkpoints_lib
from tlflax import config as config_lib
from tlflax import backbones, calibration, chunking, devices, evaluation, feeds, objectives
from tlflax import parallel, resume
from tlflax import workdir as workdir_lib
from tlflax.classifier import Classifier, abstract_variables
from tlflax.data import augment, decoders, resident, sources
from tlflax.data.image_cache import ImageCache
from tlflax.data.batching import PipelineConfig
from tlflax.errors import ConfigError, DataError
from tlflax.mixing import Mixing
from tlflax.objectives import Objective
from tlflax.resident_feed import ResidentFeed


# Settings that decide which examples each split holds (of an image folder: its path and the
# seed, which carves the splits it lacks).
SPLIT_KEYS = ('seed', 'data.folder', 'data.tfds_name', 'data.split_scheme', 'data.image_feature',
              'data.label_feature')
FOLDER_SPLIT_KEYS = ('seed', 'data.folder')


def data_differences(trained: dict, config) -> dict:
  """{key: (trained, now)} of the split-deciding settings (`SPLIT_KEYS`) where the config
  differs from a run's config as JSON `trained`."""
  now = resume.config_as_json(config)
  keys = (FOLDER_SPLIT_KEYS if trained.get('data', {}).get('folder') and now['data']['folder']
          else SPLIT_KEYS)
  return {key: values for key, values in config_lib.differences(trained, now).items()
          if key in keys}


def rngs(config):
  """(initialization key, dropout key) from the config's seed: training's and lr_find's."""
  return jax.random.split(jax.random.key(config.seed))


def make_model(config, objective: Objective) -> Classifier:
  return Classifier(backbone=config.model.backbone, backbone_args=config_lib.backbone_args(config),
                    outputs=objective.outputs,
                    dropout=config.model.dropout,
                    depthwise_implementation=config.model.depthwise_implementation,
                    dtype=jnp.dtype(config.compute.dtype))


def check_config(config):
  """Fails with `ConfigError` naming the key, before any work, if `config` cannot run."""
  config_lib.validate(config)


def load_splits(config) -> dict:
  """The config's train/validation/test `Source`s, their class counts logged and checked."""
  if not config.data.folder and not decoders.tensorflow_installed():
    raise ConfigError(f'data.tfds_name={config.data.tfds_name!r}: TFDS datasets need TensorFlow '
                      'and tensorflow-datasets, which are not installed; install them, or train '
                      'on a folder of images (--config.data.folder=PATH)')
  if config.data.folder:
    splits = sources.folder_splits(config.data.folder, seed=config.seed,
                                   max_pixels=config.data.max_pixels)
  else:
    splits = sources.tfds_splits(config.data.tfds_name, config.data.split_scheme,
                                 config.data.data_dir or None, config.seed,
                                 config.data.image_feature, config.data.label_feature)
  sources.check_class_counts(splits)
  return splits


def make_objective(config, class_names, train_counts=None) -> Objective:
  """The loss and predictions for data with `class_names` under the config's `model.head` and
  `loss` settings. Class weights come from the training split's `train_counts`; without them
  (inference, whose losses are unweighted) there are none."""
  try:
    sigmoid = objectives.uses_sigmoid(config.model.head, len(class_names))
  except ValueError as e:
    raise ConfigError(f'model.head: {e}') from e
  try:
    weights = (objectives.class_weights(config.loss.class_weights, train_counts)
               if train_counts is not None else None)
  except ValueError as e:
    raise ConfigError(f'loss.class_weights for classes {list(class_names)}: {e}') from e
  if weights is not None:
    logging.info('Class weights: %s', ', '.join(f'{n} {w:.4g}'
                                                for n, w in zip(class_names, weights)))
  return Objective(len(class_names), sigmoid, config.loss.label_smoothing, weights)


def mixing_of(config) -> Mixing:
  """The config's mixup and cutmix (`tlflax.mixing`), which the train step applies."""
  return Mixing(config.data.mixup_alpha, config.data.cutmix_alpha)


def pipeline_config(config) -> PipelineConfig:
  return PipelineConfig(image_size=config.image_size, batch_size=config.batch_size,
                        shuffle_buffer=config.data.shuffle_buffer, flip=config.data.flip,
                        rotation_factor=config.data.rotation_factor, seed=config.seed,
                        max_pixels=config.data.max_pixels, augment_ops=config.data.augment_ops,
                        preprocessing=backbones.get(config.model.backbone).preprocessing)


def image_feed(config, model: Classifier, objective: Objective, splits: dict, mesh,
               image_cache: Optional[ImageCache] = None):
  """The feed of `config`'s pipeline, prefetch and frozen chunks: a `ResidentFeed` where
  `data.residency` keeps the splits in memory, else the streamed `feeds.ImageFeed` (with
  `image_cache`)."""
  choice = resident.choose(
      config.data.residency, sum(source.num_examples for source in splits.values()),
      config.image_size, mesh.size, config.data.memory_share,
      streamable=decoders.tensorflow_installed(),
      device_form=not augment.missing(config.data.augment_ops, 'jax'),
      stream_form=not augment.missing(config.data.augment_ops, 'tensorflow'))
  logging.info('Data: %s (%s)', {'device': 'kept in device memory', 'host': 'kept in host memory',
                                 'stream': 'streamed by tf.data'}[choice.where], choice.reason)
  chunk = chunking.resolve(config.compute.frozen_chunk)
  if choice.where == 'stream':
    return feeds.ImageFeed(model, objective, splits, pipeline_config(config), mesh,
                           config.compute.prefetch, image_cache, chunk)
  return ResidentFeed(model, objective, splits, pipeline_config(config), mesh, choice.where,
                      chunk, config.compute.prefetch, config.data.memory_share)


@dataclasses.dataclass
class Trained:
  """A trained model restored for inference."""
  model: Classifier
  variables: dict  # {'params', 'batch_stats'}, replicated over the mesh
  class_names: list
  objective: Objective
  config: dict  # the config it was trained with, as JSON
  epoch: int  # the global epoch of its checkpoint
  average: bool = False  # the checkpoint's average of the weights (`train.ema_decay`)

  @property
  def calibration_key(self) -> str:
    return calibration.source_key(self.epoch, self.average)


def restore_for_inference(config, workdir, mesh, checkpoint: str = 'latest') -> Trained:
  """A checkpoint of the workdir, with the class names it was trained on: `checkpoint` is
  'latest' (the newest that restores), 'ema' (the newest one's average of the weights,
  `train.ema_decay`), 'best' (by the `best_metric` the run was trained with, which chose the
  checkpoint it kept; the average's weights where that metric is the average's) or an epoch."""
  devices.prepare(config.compute, config.batch_size, enforce_platform=False)
  if not Path(workdir).is_dir():
    what = 'is a file' if Path(workdir).exists() else 'does not exist'
    raise DataError(f'--workdir {workdir} {what}: name the workdir of a trained run')
  if not workdir_lib.saved_epochs(workdir):
    raise DataError(f'{workdir} has no checkpoint to use; train first')
  checkpoints = checkpoints_lib.Checkpoints(workdir, sharding=parallel.replicated(mesh),
                                            best_metric=config.best_metric)
  try:
    trained = _restore_trained(config, workdir, checkpoints, checkpoint)
  finally:
    checkpoints.close()
  logging.info('Using the checkpoint of epoch %d (--checkpoint=%s)', trained.epoch, checkpoint)
  return trained


def _restore_trained(config, workdir, checkpoints, checkpoint: str) -> Trained:
  average = checkpoint == 'ema'  # the newest checkpoint's average of the weights
  if checkpoint == 'best':
    _, trained_metric = checkpoints.restore_newest(lambda epoch: resume.checkpoint_meta(
        checkpoints, epoch)['config'].get('best_metric', 'val_loss'))
    if trained_metric != config.best_metric:
      logging.warning('The best checkpoint is the best by %s, the run\'s best_metric (the config '
                      'says %s)', trained_metric, config.best_metric)
    checkpoints.best_metric = trained_metric
    average = trained_metric.startswith('ema_')  # the best average: its weights
  chosen = checkpoints.select('latest' if checkpoint == 'ema' else checkpoint)

  def restore(epoch):
    meta = resume.checkpoint_meta(checkpoints, epoch)
    trained = meta['config']['model']
    objective = make_objective(config, meta['class_names'])
    for key, stored, now in (
        ('backbone', trained['backbone'], config.model.backbone),
        ('backbone_args', trained['backbone_args'], config_lib.backbone_args(config)),
        ('head', resume.trained_with_sigmoid(meta), objective.sigmoid)):
      if stored != now:
        raise ConfigError(f"{workdir} holds a model made with model.{key}="
                          f"{trained.get(key, 'auto')}; the config has "
                          f'{config.model[key]}')
    model = make_model(config, objective)
    variables = checkpoints.restore_model(epoch, abstract_variables(model, config.image_size),
                                          average)
    return Trained(model, variables, list(meta['class_names']), objective, meta['config'], epoch,
                   average)

  if chosen is None:
    return checkpoints.restore_newest(restore)[1]
  return checkpoints.restore_epoch(chosen, restore,
                                   '--checkpoint=latest uses the newest that does')


def temperature_for(config, workdir, trained: Trained, mesh, feed=None) -> Optional[float]:
  """The calibration temperature of `trained`'s weights: the one the workdir keeps for them
  (`tlflax.calibration`), or one fitted now on the validation split of the training run's data
  (through `feed`, or a feed made here) and kept. None, with a warning saying why, where none can
  be fitted: the config's data is not the training run's, cannot be read, or its validation split
  cannot be fitted on."""
  entry = calibration.stored(workdir, trained.calibration_key, trained.variables)
  if entry is not None:
    return entry['temperature']
  other = data_differences(trained.config, config)
  try:
    if other:
      raise DataError(f'the config\'s data differs from the training run\'s '
                      f'({resume.listing(other)}), so its validation split cannot be fitted on')
    feed = feed or image_feed(config, trained.model, trained.objective, load_splits(config),
                              mesh)
    logits, labels = evaluation.collect_logits(feed.logits_step, trained.variables,
                                               feed.evaluation('validation'))
    temperature = calibration.fit_temperature(trained.objective, logits, labels)
  except (DataError, ConfigError) as e:
    logging.warning('The probabilities of the weights of epoch %d%s are not calibrated: %s',
                    trained.epoch, ' (average)' if trained.average else '', e)
    return None
  report = calibration.calibration_report(trained.objective, logits, labels, temperature)
  calibration.store(workdir, trained.calibration_key, {
      'fitted_on': 'validation', 'examples': int(len(labels)),
      'weights': calibration.fingerprint(trained.variables),
      **{key: value for key, value in report.items() if not key.startswith('bins')}})
  logging.info('Calibration: temperature %.3f fitted on the validation split (NLL %.4f -> %.4f, '
               'ECE %.4f -> %.4f)', temperature, report['nll_before'], report['nll_after'],
               report['ece_before'], report['ece_after'])
  return temperature
