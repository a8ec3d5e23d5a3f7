"""Checking a run's config before any work: unknown keys, wrong types and bad values, by name.

`ml_collections.ConfigDict` iterates its keys in sorted order, not in the order they were written,
so the order of `config.phases` is the explicit `config.phase_order`; `ordered_phases` is the one
place that reads it.
"""
from typing import Callable

import ml_collections

from tlflax.data.sources import SPLIT_SCHEMES
from tlflax.errors import ConfigError
from tlflax.models.depthwise import IMPLEMENTATIONS
from tlflax.optim import OPTIMIZERS
from tlflax.weights.download import KERAS_ALPHAS

PHASE_FIELDS = {'epochs': int, 'optimizer': str, 'learning_rate': float, 'fine_tune_at': int}
# The keys a run's config may have (besides `phases`, whose names are free), with their types.
SCHEMA = {
    'seed': int, 'image_size': int, 'batch_size': int, 'checkpoints_to_keep': int,
    'phase_order': tuple,
    'model': {'alpha': float, 'weights': str, 'dropout': float, 'depthwise_implementation': str},
    'data': {'folder': str, 'tfds_name': str, 'split_scheme': str, 'data_dir': str,
             'shuffle_buffer': int, 'flip': bool, 'rotation_factor': float, 'max_pixels': int},
    'compute': {'dtype': str, 'cache_frozen': bool, 'cache_limit_gb': float, 'prefetch': int},
}
DTYPES = ('float32', 'bfloat16')




def _check_against(config, schema, prefix=''):
  """Every key of `config` is in `schema`, with its type (an int where a float goes is fine), and
  every key of `schema` is in `config`."""
  missing = [key for key in schema if key not in config]
  if missing:
    raise ConfigError(f'config has no {prefix}{missing[0]} (expected keys: {sorted(schema)})')
  for key, value in config.items():
    name = f'{prefix}{key}'
    if key not in schema:
      raise ConfigError(f'unknown config key {name!r}; known: {sorted(schema)}')
    expected = schema[key]
    if isinstance(expected, dict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'config key {name!r} must be a group of settings')
      _check_against(value, expected, name + '.')
    elif not _has_type(value, expected):
      raise ConfigError(f'config key {name!r} must be {expected.__name__}, got {value!r}')


def _has_type(value, expected) -> bool:
  if isinstance(value, bool) != (expected is bool):
    return False
  if expected is tuple:  # a config read back from JSON holds a list
    return isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)
  return isinstance(value, expected) or (expected is float and isinstance(value, int))


def ordered_phases(config: ml_collections.ConfigDict) -> list:
  """[(name, phase)] in `config.phase_order`, which must name every phase of `config.phases` once.
  A name list given as one comma-separated string (`--config.phase_order=a,b`) is split."""
  names = [name.strip() for item in config.phase_order for name in item.split(',') if name.strip()]
  defined = sorted(config.phases.keys())
  repeated = sorted({name for name in names if names.count(name) > 1})
  unknown = [name for name in names if name not in config.phases]
  missing = [name for name in defined if name not in names]
  if repeated or unknown or missing:
    problems = [f'{what} {which}' for what, which in (('names twice', repeated),
                ('names undefined phases', unknown), ('leaves out', missing)) if which]
    raise ConfigError(f"phase_order {tuple(names)} {'; '.join(problems)}: it must list each of "
                      f'config.phases {defined} once, in the order they run')
  return [(name, config.phases[name]) for name in names]


def validate(config: ml_collections.ConfigDict, backbone_layer_count: Callable[[], int]):
  """Raises `ConfigError` naming the first unknown or missing key, wrong type or bad value.
  `backbone_layer_count()` is asked once the model settings are known to be valid."""
  _check_against({k: v for k, v in config.items() if k != 'phases'}, SCHEMA)
  if 'phases' not in config:
    raise ConfigError('config has no phases')
  if not config.phases:
    raise ConfigError('config.phases is empty: give at least one training phase')
  checks = [
      (config.image_size >= 32, f'image_size must be >= 32, got {config.image_size}'),
      (config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}'),
      (config.checkpoints_to_keep >= 1,
       f'checkpoints_to_keep must be >= 1, got {config.checkpoints_to_keep}'),
      (config.model.alpha > 0, f'model.alpha must be > 0, got {config.model.alpha}'),
      (config.model.weights != 'imagenet' or config.model.alpha in KERAS_ALPHAS,
       f'model.alpha={config.model.alpha} has no published ImageNet weights '
       f'(model.weights=imagenet); Keras publishes alpha in {KERAS_ALPHAS}'),
      (config.data.shuffle_buffer >= 1,
       f'data.shuffle_buffer must be >= 1, got {config.data.shuffle_buffer}'),
      (config.data.max_pixels >= config.image_size ** 2,
       f'data.max_pixels must be >= image_size**2, got {config.data.max_pixels}'),
      (config.data.split_scheme in SPLIT_SCHEMES,
       f'data.split_scheme must be one of {sorted(SPLIT_SCHEMES)}'),
      (config.model.depthwise_implementation in IMPLEMENTATIONS,
       f'model.depthwise_implementation must be one of {IMPLEMENTATIONS}'),
      (0 <= config.model.dropout < 1, 'model.dropout must be in [0, 1)'),
      (config.compute.dtype in DTYPES, f'compute.dtype must be one of {DTYPES}'),
      (config.compute.prefetch >= 1, 'compute.prefetch must be >= 1'),
      (not config.compute.cache_frozen or (not config.data.flip and not
      config.data.rotation_factor),
       'compute.cache_frozen needs data.flip=False and data.rotation_factor=0: cached activations '
       'cannot be augmented'),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)

  for phase_name, phase in ordered_phases(config):
    prefix = f'phases.{phase_name}'
    fields = set(phase.keys())
    if fields != set(PHASE_FIELDS):
      raise ConfigError(f'{prefix} must have exactly {sorted(PHASE_FIELDS)}, has {sorted(fields)}')
    for key, kind in PHASE_FIELDS.items():
      value = phase[key]
      if not (_has_type(value, kind) or (key == 'fine_tune_at' and value is None)):
        raise ConfigError(f'{prefix}.{key} must be {kind.__name__}, got {value!r}')
    if phase.epochs < 0 or phase.learning_rate <= 0:
      raise ConfigError(f'{prefix}: epochs must be >= 0 and learning_rate > 0')
    if phase.optimizer not in OPTIMIZERS:
      raise ConfigError(f'{prefix}.optimizer must be one of {sorted(OPTIMIZERS)}, '
                        f'got {phase.optimizer!r}')
    if phase.fine_tune_at is not None and not 0 <= phase.fine_tune_at <= backbone_layer_count():
      raise ConfigError(f'{prefix}.fine_tune_at must be a Keras layer index in '
                        f'0..{backbone_layer_count()} (or None), got {phase.fine_tune_at}')

# Settings a resumed run may change without --allow_config_change: they do not change what it
# computes from here on (the weights file is read only at the start; cached activations give
# the result of training on images).
RESUME_SAFE = ('checkpoints_to_keep', 'compute.prefetch', 'compute.cache_limit_gb',
               'compute.cache_frozen', 'model.weights')


def _flat(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def differences(stored: dict, current: dict) -> dict:
  """{dotted key: (stored value, current value)} of two configs as JSON, a key missing on one
  side as None."""
  old, new = _flat(stored), _flat(current)
  return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
          if old.get(key) != new.get(key)}
