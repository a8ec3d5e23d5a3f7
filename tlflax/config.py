"""Checking a run's config before any work: unknown keys, wrong types and bad values, by name."""
import ml_collections

from tlflax.data.sources import SPLIT_SCHEMES
from tlflax.models.depthwise import IMPLEMENTATIONS
from tlflax.optim import OPTIMIZERS

PHASE_FIELDS = {'epochs': int, 'optimizer': str, 'learning_rate': float, 'fine_tune_at': int}
# The keys a run's config may have (besides `phases`, whose names are free), with their types.
SCHEMA = {
    'seed': int, 'image_size': int, 'batch_size': int, 'checkpoints_to_keep': int,
    'model': {'alpha': float, 'weights': str, 'dropout': float, 'depthwise_implementation': str},
    'data': {'folder': str, 'tfds_name': str, 'split_scheme': str, 'data_dir': str,
             'shuffle_buffer': int, 'flip': bool, 'rotation_factor': float},
    'compute': {'dtype': str, 'cache_frozen': bool, 'cache_limit_gb': float, 'prefetch': int},
}
DTYPES = ('float32', 'bfloat16')


class ConfigError(ValueError):
  """A config that cannot run."""


def _check_against(config, schema, prefix=''):
  """Every key of `config` is in `schema`, with its type (an int where a float goes is fine)."""
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
  return isinstance(value, expected) or (expected is float and isinstance(value, int))


def validate(config: ml_collections.ConfigDict, backbone_layer_count: int):
  """Raises `ConfigError` naming the first unknown key, wrong type or bad value."""
  _check_against({k: v for k, v in config.items() if k != 'phases'}, SCHEMA)
  if 'phases' not in config:
    raise ConfigError('config has no phases')
  if not config.phases:
    raise ConfigError('config.phases is empty: give at least one training phase')
  for phase_name, phase in config.phases.items():
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
    if phase.fine_tune_at is not None and not 0 <= phase.fine_tune_at <= backbone_layer_count:
      raise ConfigError(f'{prefix}.fine_tune_at must be a Keras layer index in '
                        f'0..{backbone_layer_count} (or None), got {phase.fine_tune_at}')
  checks = [
      (config.image_size >= 32, f'image_size must be >= 32, got {config.image_size}'),
      (config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}'),
      (config.data.split_scheme in SPLIT_SCHEMES,
       f'data.split_scheme must be one of {sorted(SPLIT_SCHEMES)}'),
      (config.model.depthwise_implementation in IMPLEMENTATIONS,
       f'model.depthwise_implementation must be one of {IMPLEMENTATIONS}'),
      (0 <= config.model.dropout < 1, 'model.dropout must be in [0, 1)'),
      (config.compute.dtype in DTYPES, f'compute.dtype must be one of {DTYPES}'),
      (config.compute.prefetch >= 1, 'compute.prefetch must be >= 1'),
      (not config.compute.cache_frozen or (not config.data.flip and not config.data.rotation_factor),
       'compute.cache_frozen needs data.flip=False and data.rotation_factor=0: cached activations '
       'cannot be augmented'),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
