"""Checking a run's config before any work: unknown keys, wrong types and bad values, by name.

`ml_collections.ConfigDict` iterates its keys in sorted order, not in the order they were written,
so the order of `config.phases` is the explicit `config.phase_order`; `ordered_phases` is the one
place that reads it.
"""
import json
import re
from typing import Optional
import ml_collections
from ml_collections import config_dict

from tlflax import backbones, chunking, devices, objectives, optim, param_groups, tta
from tlflax.checkpoints import BEST_METRICS
from tlflax.data import augment, image_cache, resident, sources
from tlflax.errors import ConfigError
from tlflax.models.depthwise import check_implementation

DTYPES = ('float32', 'bfloat16')


def phase(epochs: int, optimizer: str, learning_rate: float, fine_tune_at=None):
  """One training phase. `fine_tune_at`: the first Keras layer of the backbone to train (the
  tutorial's `base_model.layers[fine_tune_at:]`), by index or name, or 'default' (where the
  backbone's spec puts the tutorial's layer 100); None keeps the whole backbone frozen. The other
  options (`tlflax.optim`, `tlflax.param_groups`) have the tutorial's values: set them on the
  returned `ConfigDict`."""
  return ml_collections.ConfigDict({
      'epochs': epochs,
      'optimizer': optimizer,  # adam | adamw | rmsprop | sgd
      'learning_rate': learning_rate,  # the peak of the schedule
      'fine_tune_at': config_dict.FieldReference(fine_tune_at, field_type=object),
      # 'REGEX=MULTIPLIER' or 'REGEX=freeze' on the names of the layers fine_tune_at leaves
      # trainable ('head': the head); the first match decides, every such layer must match one.
      'param_groups': (),
      'schedule': {
          'name': 'constant',  # constant | cosine | warmup_cosine | step | exponential
          'warmup_epochs': 0.0,  # linear warmup from 0 (or give warmup_steps)
          'warmup_steps': 0,
          'end_factor': 0.0,  # cosine: the final rate, as a fraction of learning_rate
          'decay_epochs': 1.0,  # step / exponential: multiply by decay_rate every decay_epochs
          'decay_rate': 0.1,
      },
      'weight_decay': 0.0,  # adamw's decoupled weight decay
      'weight_decay_exclude': '.*/(bias|scale)',  # 'layer/variable' paths not decayed
      'clip_norm': 0.0,  # clip gradients to this global norm (0: no clipping)
      'momentum': 0.0,  # sgd and rmsprop
      'nesterov': False,  # sgd and rmsprop, with momentum
      'early_stopping': {
          'patience': 0,  # end the phase after this many epochs without improving best_metric
          'min_delta': 0.0,  # the least change that counts as an improvement
      },
  }, type_safe=False)  # fine_tune_at: an index or a name, also in resolved copies


def defaults() -> ml_collections.ConfigDict:
  """Every setting a run reads, with the tutorial's values. It is also the definition a config is
  checked against: a key it lacks is unknown, and each value must have the type of its default
  (a `placeholder` default may also be None). `configs/cats_dogs.py` builds on it."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.image_size = 160
  config.batch_size = 32

  config.model = ml_collections.ConfigDict()
  config.model.backbone = backbones.DEFAULT_BACKBONE  # a name of `tlflax.backbones.names()`
  # The backbone's arguments as a dict, e.g. {'alpha': 0.35} (MobileNets' width); None: its
  # defaults. A run completes it with the defaults (config.json holds them all).
  config.model.backbone_args = config_dict.FieldReference(None, field_type=object)
  # 'imagenet' (the Keras download), a .h5/.weights.h5/.tflite/.msgpack path, or 'none' (random).
  config.model.weights = 'imagenet'
  config.model.dropout = 0.2
  config.model.depthwise_implementation = 'auto'
  # 'auto': one logit and sigmoid cross-entropy for two classes (the tutorial), one logit per
  # class and softmax cross-entropy for more; 'softmax' also for two; 'sigmoid' for two only.
  config.model.head = 'auto'

  config.loss = ml_collections.ConfigDict()
  config.loss.label_smoothing = 0.0  # Keras's label_smoothing=
  # Training-loss weight per class: '' (none), 'balanced' (n / (classes * count) from the
  # training split) or one number per class in class order, e.g. '1,3.5,1'.
  config.loss.class_weights = ''

  config.data = ml_collections.ConfigDict()
  config.data.folder = ''  # an ImageFolder root; empty: TFDS
  config.data.tfds_name = 'cats_vs_dogs'  # any TFDS image classification dataset
  # original: train[:80%] / [80%:90%] / [90%:] | later: test from validation (the tutorials' slices
  # of cats_vs_dogs) | auto: the dataset's own splits, missing ones carved out per class by seed.
  config.data.split_scheme = 'original'
  config.data.image_feature = ''  # TFDS feature names; empty: from the dataset's info
  config.data.label_feature = ''
  config.data.data_dir = ''  # empty: $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.data.shuffle_buffer = 1000  # TFDS: records permuted in runs of this many (folders: all)
  config.data.flip = True
  config.data.rotation_factor = 0.2
  # More augmentation: registered ops run after flip and rotation (`tlflax.data.augment`).
  config.data.augment_ops = ''
  # Images larger than this (decoded pixels) are skipped with a warning; JPEGs are decoded at 1/2,
  # 1/4 or 1/8 scale first where that brings them under it.
  config.data.max_pixels = 50_000_000
  # Where the decoded splits live (`tlflax.data.resident`): 'auto' keeps them in device memory
  # if they fit in `memory_share` of its free memory, else in host memory (the same share of
  # what is available), else streams them; or 'device', 'host', 'stream' (tf.data decodes
  # every epoch).
  config.data.residency = 'auto'
  config.data.memory_share = 0.5
  # Mixed pairs of training images with soft targets (`tlflax.mixing`), each example with the
  # batch's reverse: Beta(alpha, alpha) mixup and cutmix; 0 is off, both on picks one per example.
  config.data.mixup_alpha = 0.0
  config.data.cutmix_alpha = 0.0

  config.train = ml_collections.ConfigDict()
  # Each micro-batch of batch_size adds to the gradient; every accumulate_steps of them make one
  # optimizer update of their mean (`optax.MultiSteps`): a batch accumulate_steps times larger.
  config.train.accumulate_steps = 1
  # An exponential moving average of the trained weights, updated after every optimizer update
  # (0: none); evaluated each epoch beside them, kept in checkpoints (`--checkpoint=ema`).
  config.train.ema_decay = 0.0

  config.eval = ml_collections.ConfigDict()
  # Test-time augmentation in evaluation and prediction (`tlflax.tta`): 'none', 'flip' (2
  # views) or 'crops' (12); evaluation reports it beside the plain numbers.
  config.eval.tta = 'none'

  config.compute = ml_collections.ConfigDict()
  config.compute.dtype = 'float32'  # or 'bfloat16': mixed precision (parameters stay float32)
  # Without augmentation, run each phase's frozen layers once and train on their cached outputs.
  config.compute.cache_frozen = False
  config.compute.cache_limit_gb = 8.0  # per process; above it a phase trains on images instead
  config.compute.prefetch = 2  # batches put on the devices ahead of the step
  # Training and validation images decoded and resized once, so that later epochs only augment:
  # 'auto' keeps them in memory up to image_cache_limit_gb (per process), then in files in
  # WORKDIR/image_cache; or 'memory', 'disk', 'none' (decode every epoch).
  config.compute.image_cache = 'auto'
  config.compute.image_cache_limit_gb = 4.0
  # '' runs on whatever JAX has; 'cpu', 'gpu' or 'tpu' refuses to run anywhere else.
  config.compute.platform = ''
  # float32 matmuls and convolutions: 'default' lets GPUs use TF32 (on an H200 it moved the real
  # backbone's pooled features by up to 3.5e-2) and TPUs bfloat16 passes; 'highest' computes in
  # full float32 ('high': 3 bfloat16 passes on TPUs).
  config.compute.matmul_precision = 'default'
  # JAX's persistent compilation cache: a later run of the same programs skips their compilation.
  # 'auto': $JAX_COMPILATION_CACHE_DIR, else ~/.cache/tlflax/jax; 'none': off; or a folder.
  config.compute.compilation_cache_dir = 'auto'
  # Images per device that the frozen layers run at a time (`tlflax.chunking`): None is 4 on CPUs
  # (faster there) and the whole batch elsewhere; 0 is always the whole batch.
  config.compute.frozen_chunk = config_dict.placeholder(int)

  config.phases = ml_collections.ConfigDict()
  config.phases.feature_extraction = phase(10, 'adam', 1e-4)
  config.phases.fine_tune = phase(10, 'rmsprop', 1e-5, fine_tune_at='default')  # base rate / 10
  config.phase_order = ('feature_extraction', 'fine_tune')

  config.checkpoints_to_keep = 3  # the latest N, besides the best
  # The validation metric that picks the best checkpoint and that early stopping watches.
  config.best_metric = 'val_loss'  # or 'val_accuracy'; 'ema_val_loss', 'ema_val_accuracy'
  return config


def _check_against(config, reference, prefix=''):
  """Every key of `config` is in `reference`, with the type of its value there (an int where a
  float goes is fine; None where the reference holds a placeholder), and every key of `reference`
  is in `config`. Top-level `phases`, whose names are free, is left to `validate`."""
  known = sorted(key for key in reference.keys() if prefix or key != 'phases')
  missing = [key for key in known if key not in config]
  if missing:
    raise ConfigError(f'config has no {prefix}{missing[0]} (expected keys: {known})')
  for key, value in config.items():
    name = f'{prefix}{key}'
    if key == 'phases' and not prefix:
      continue
    if key not in reference:
      raise ConfigError(f'unknown config key {name!r}; known: {known}')
    expected = reference[key]
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'config key {name!r} must be a group of settings')
      _check_against(value, expected, name + '.')
    elif not (_has_type(value, reference.get_type(key)) or (value is None and expected is None)):
      label = name if prefix.startswith('phases.') else f'config key {name!r}'
      raise ConfigError(f'{label} must be {reference.get_type(key).__name__}, got {value!r}')


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


def check_types(config: ml_collections.ConfigDict):
  """Raises `ConfigError` naming the first unknown or missing key or wrong type, the phases'
  settings included: the part of `validate` that does not look at values."""
  _check_against(config, defaults())
  if 'phases' not in config:
    raise ConfigError('config has no phases')
  if not config.phases:
    raise ConfigError('config.phases is empty: give at least one training phase')
  template = phase(0, 'adam', 1.0)
  for phase_name, settings in ordered_phases(config):
    prefix = f'phases.{phase_name}'
    if set(settings.keys()) != set(template.keys()):
      raise ConfigError(f'{prefix} must have exactly {sorted(template.keys())}, has '
                        f'{sorted(settings.keys())}')
    _check_against(settings, template, prefix + '.')


def validate(config: ml_collections.ConfigDict):
  """Raises `ConfigError` naming the first unknown or missing key, wrong type or bad value."""
  check_types(config)
  checks = [
      (config.batch_size >= 1, f'batch_size must be >= 1, got {config.batch_size}'),
      (config.checkpoints_to_keep >= 1,
       f'checkpoints_to_keep must be >= 1, got {config.checkpoints_to_keep}'),
      (config.best_metric in BEST_METRICS,
       f'best_metric must be one of {sorted(BEST_METRICS)}, got {config.best_metric!r}'),
      (config.data.shuffle_buffer >= 1,
       f'data.shuffle_buffer must be >= 1, got {config.data.shuffle_buffer}'),
      (0 <= config.seed < 2**32, f'seed must be in [0, 2**32), got {config.seed}'),
      (config.data.residency in resident.RESIDENCIES,
       f'data.residency must be one of {resident.RESIDENCIES}, got {config.data.residency!r}'),
      (0 < config.data.memory_share <= 1,
       f'data.memory_share must be in (0, 1], got {config.data.memory_share}'),
      (config.data.max_pixels >= config.image_size ** 2,
       f'data.max_pixels must be >= image_size**2, got {config.data.max_pixels}'),
      (0 <= config.model.dropout < 1, 'model.dropout must be in [0, 1)'),
      (0 <= config.loss.label_smoothing < 1, 'loss.label_smoothing must be in [0, 1)'),
      (config.compute.dtype in DTYPES, f'compute.dtype must be one of {DTYPES}'),
      (config.compute.prefetch >= 1, 'compute.prefetch must be >= 1'),
      (config.compute.image_cache in image_cache.MODES,
       f'compute.image_cache must be one of {image_cache.MODES}, got '
       f'{config.compute.image_cache!r}'),
      (config.compute.image_cache_limit_gb >= 0, 'compute.image_cache_limit_gb must be >= 0'),
      (bool(config.compute.compilation_cache_dir),
       "compute.compilation_cache_dir must be 'auto', 'none' or a folder"),
      (config.compute.platform in devices.PLATFORMS,
       f'compute.platform must be one of {devices.PLATFORMS}, got {config.compute.platform!r}'),
      (config.compute.matmul_precision in devices.MATMUL_PRECISIONS,
       f'compute.matmul_precision must be one of {devices.MATMUL_PRECISIONS}, got '
       f'{config.compute.matmul_precision!r}'),
      (not config.compute.cache_frozen
       or not (config.data.flip or config.data.rotation_factor
               or augment.parse(config.data.augment_ops)),
       'compute.cache_frozen needs data.flip=False, data.rotation_factor=0 and no '
       'data.augment_ops: cached activations cannot be augmented'),
      (config.data.mixup_alpha >= 0 and config.data.cutmix_alpha >= 0,
       'data.mixup_alpha and data.cutmix_alpha must be >= 0 (0: off)'),
      (not config.compute.cache_frozen
       or not (config.data.mixup_alpha or config.data.cutmix_alpha),
       'compute.cache_frozen cannot go with data.mixup_alpha or data.cutmix_alpha: cached '
       'activations hold no images to mix'),
      (config.eval.tta in tta.MODES,
       f'eval.tta must be one of {tta.MODES}, got {config.eval.tta!r}'),
      (config.train.accumulate_steps >= 1,
       f'train.accumulate_steps must be >= 1, got {config.train.accumulate_steps}'),
      (0 <= config.train.ema_decay < 1,
       f'train.ema_decay must be in [0, 1) (0: no average), got {config.train.ema_decay}'),
      (not config.best_metric.startswith('ema_') or config.train.ema_decay,
       f'best_metric={config.best_metric!r} ranks the weights\' average: set train.ema_decay'),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  for key, value, check in (
      ('data.split_scheme', config.data.split_scheme, sources.check_split_scheme),
      ('model.depthwise_implementation', config.model.depthwise_implementation,
       check_implementation),
      ('compute.frozen_chunk', config.compute.frozen_chunk, chunking.check_setting),
      ('model.head', config.model.head, lambda head: objectives.uses_sigmoid(head, 2)),
      ('loss.class_weights', config.loss.class_weights, objectives.parse_class_weights)):
    try:  # the library's own check, here naming the config key
      check(value)
    except ValueError as e:
      raise ConfigError(f'{key}: {e}') from e
  augment.check(config.data.augment_ops)
  spec, layers = _check_backbone(config)

  for phase_name, settings in ordered_phases(config):
    _check_phase_values(settings, f'phases.{phase_name}', spec, layers)


def backbone_args(config) -> dict:
  """`model.backbone_args` completed with the backbone's defaults (`ConfigError` for one it does
  not take)."""
  args = config.model.backbone_args
  if args is not None and not isinstance(args, (dict, ml_collections.ConfigDict)):
    raise ConfigError(f"model.backbone_args must be a dict such as {{'alpha': 0.35}} or None, "
                      f'got {args!r}')
  return backbones.arguments(backbones.get(config.model.backbone), args)


def fine_tune_index(settings, spec: backbones.Backbone, layers) -> Optional[int]:
  """A phase's `fine_tune_at` as a Keras layer index of `layers` (a name, or 'default': the
  backbone's own), or None (the backbone frozen)."""
  at = settings.fine_tune_at
  if at is None:
    return None
  return backbones.layer_position(layers, spec.fine_tune_at if at == 'default' else at,
                                  'fine_tune_at')


def completed(values: dict) -> dict:
  """A config as JSON (`values`, checked) with what the backbone settings resolve to:
  `model.backbone_args` with the backbone's defaults, each phase's `fine_tune_at` as an index."""
  config = ml_collections.ConfigDict(values)
  spec = backbones.get(config.model.backbone)
  args = backbone_args(config)
  layers = backbones.table(spec, args)
  model = {**values['model'], 'backbone_args': args}
  phases = {name: {**settings, 'fine_tune_at': fine_tune_index(config.phases[name], spec, layers)}
            for name, settings in values['phases'].items()}
  return {**values, 'model': model, 'phases': phases}


def upgrade_stored(stored: dict) -> dict:
  """A config.json of an older tlflax in today's keys: `model.alpha`, from before backbones were
  plug-ins, was the default backbone's width and becomes its `model.backbone_args`."""
  model = stored.get('model', {})
  if 'alpha' not in model or 'backbone' in model:
    return stored
  upgraded = {key: value for key, value in model.items() if key != 'alpha'}
  upgraded.update(backbone=backbones.DEFAULT_BACKBONE, backbone_args={'alpha': model['alpha']})
  return {**stored, 'model': upgraded}


def _check_backbone(config) -> tuple[backbones.Backbone, tuple]:
  """The backbone and its layer table; `model.backbone_args` completed, the image size and the
  weights checked."""
  model = config.model
  spec = backbones.get(model.backbone)
  args = backbone_args(config)
  if config.image_size < spec.min_image_size:
    raise ConfigError(f'image_size={config.image_size} is below {spec.name}\'s minimum of '
                      f'{spec.min_image_size}')
  if model.weights == 'imagenet':
    if spec.imagenet_weights is None:
      raise ConfigError(f'Keras publishes no ImageNet weights for {spec.name}: set model.weights '
                        'to a file or none')
    try:
      spec.imagenet_weights(False, config.image_size, **args)
    except ValueError as e:
      raise ConfigError(f'model.weights=imagenet: {e}') from e
  try:
    return spec, backbones.table(spec, args)
  except (ValueError, TypeError) as e:
    raise ConfigError(f'model.backbone_args {args} for {spec.name}: {e}') from e


def _check_phase_values(settings, prefix: str, spec: backbones.Backbone, layers):
  schedule = settings.schedule
  checks = [
      (settings.epochs >= 0 and settings.learning_rate > 0,
       'epochs must be >= 0 and learning_rate > 0'),
      (settings.optimizer in optim.OPTIMIZERS,
       f'optimizer must be one of {list(optim.OPTIMIZERS)}, got {settings.optimizer!r}'),
      (schedule.name in optim.SCHEDULES,
       f'schedule.name must be one of {list(optim.SCHEDULES)}, got {schedule.name!r}'),
      (schedule.warmup_epochs >= 0 and schedule.warmup_steps >= 0,
       'schedule.warmup_epochs and warmup_steps must be >= 0'),
      (not (schedule.warmup_epochs and schedule.warmup_steps),
       'give schedule.warmup_epochs or schedule.warmup_steps, not both'),
      (schedule.name != 'warmup_cosine' or schedule.warmup_epochs or schedule.warmup_steps,
       "schedule.name='warmup_cosine' needs schedule.warmup_epochs or warmup_steps "
       "('cosine' has no warmup)"),
      (0 <= schedule.end_factor <= 1, 'schedule.end_factor must be in [0, 1]'),
      (schedule.decay_epochs > 0 and 0 < schedule.decay_rate <= 1,
       'schedule.decay_epochs must be > 0 and schedule.decay_rate in (0, 1]'),
      (settings.weight_decay >= 0, 'weight_decay must be >= 0'),
      (not settings.weight_decay or settings.optimizer == 'adamw',
       "weight_decay is adamw's decoupled weight decay: set optimizer='adamw'"),
      (settings.clip_norm >= 0, 'clip_norm must be >= 0 (0: no clipping)'),
      (0 <= settings.momentum < 1, 'momentum must be in [0, 1)'),
      (not settings.momentum or settings.optimizer in ('sgd', 'rmsprop'),
       'momentum is an option of sgd and rmsprop'),
      (not settings.nesterov or settings.momentum, 'nesterov needs momentum > 0'),
      (settings.early_stopping.patience >= 0 and settings.early_stopping.min_delta >= 0,
       'early_stopping.patience and min_delta must be >= 0'),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(f'{prefix}: {message}')
  try:
    re.compile(settings.weight_decay_exclude)
  except re.error as e:
    raise ConfigError(f'{prefix}.weight_decay_exclude is not a regex: {e}') from e
  try:
    fine_tune_at = fine_tune_index(settings, spec, layers)
  except ConfigError as e:
    raise ConfigError(f'{prefix}.{e}') from e
  if settings.param_groups:
    try:
      param_groups.assign(param_groups.trained_layer_names(layers, fine_tune_at),
                          settings.param_groups)
    except ValueError as e:
      raise ConfigError(f'{prefix}.{e}') from e


# Settings a resumed run may change without --allow_config_change: they do not change what it
# computes from here on (the weights file is read only at the start; cached activations and
# frozen layers in chunks give the result of training on images, on whole batches, to float
# rounding, which Adam and RMSprop can turn into a step's worth for gradients near 0; eval.tta
# adds numbers to the final evaluation only).
RESUME_SAFE = ('checkpoints_to_keep', 'compute.prefetch', 'compute.cache_limit_gb',
               'compute.cache_frozen', 'compute.platform', 'compute.compilation_cache_dir',
               'compute.image_cache', 'compute.image_cache_limit_gb', 'compute.frozen_chunk',
               'model.weights', 'eval.tta')


def flat(tree: dict, prefix: str = '') -> dict:
  """A config as JSON, as {dotted key: value}."""
  values = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      values.update(flat(value, f'{prefix}{key}.'))
    else:
      values[f'{prefix}{key}'] = value
  return values


# Settings that do not change what the first phase computes, or that only later phases read.
_NOT_FIRST_PHASE = ('checkpoints_to_keep', 'compute.prefetch', 'compute.compilation_cache_dir',
                    'compute.image_cache', 'eval.', 'phase_order', 'phases.')


def first_phase_settings(config_json: dict) -> dict:
  """What a run's first phase depends on: {dotted key: value} of its config (as JSON) without
  the later phases and the settings that do not change results. Runs with equal ones train the
  same first phase."""
  values = flat(config_json)
  first = config_json['phase_order'][0]
  kept = {key: value for key, value in values.items() if not key.startswith(_NOT_FIRST_PHASE)
          or key.startswith(f'phases.{first}.')}
  return {**kept, 'phase_order': [first]}


def differences(stored: dict, current: dict) -> dict:
  """{dotted key: (stored value, current value)} of two configs as JSON, a key missing on one
  side as None. A key the stored config lacks (a setting added to tlflax since) that holds its
  default now is no difference."""
  old, new = flat(stored), flat(current)
  default = flat(json.loads(defaults().to_json_best_effort()))
  return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
          if old.get(key) != new.get(key)
          and not (key not in old and key in default and new[key] == default[key])}
