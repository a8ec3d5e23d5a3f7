"""A sweep's trials: override dicts from a sweep file, their names, configs and shared phases.

A sweep file (`configs/sweeps/*.py`, given as `PATH[:variant]`) defines `get_trials(variant)`
(or `get_trials()`), returning a list of override dicts
(`{'phases.fine_tune.fine_tune_at': 120, 'seed': 1}`) built with `tlflax.sweep.axes`, as
big_vision's sweep files are. Each trial is the base config with its overrides.

Trials whose configs agree on everything the first phase depends on
(`tlflax.config.first_phase_settings`) can share it: it is trained once, and each of them starts
its later phases from its result.
"""
import hashlib
import json
import re

import ml_collections

from tlflax import config as config_lib
from tlflax import user_files
from tlflax.errors import ConfigError
from tlflax.resume import config_as_json


def load_trials(spec: str) -> list[dict]:
  """The trials of the sweep file `PATH[:variant]` (its `get_trials(variant)`, or
  `get_trials()` without a variant), checked to be a list of distinct override dicts."""
  path, trials, _ = user_files.call(spec, 'sweep file', 'get_trials')
  if not isinstance(trials, list) or not trials or not all(
      isinstance(t, dict) and all(isinstance(k, str) for k in t) for t in trials):
    raise ConfigError(f'{path}: get_trials() must return a non-empty list of dicts from dotted '
                      'config keys (strings) to values')
  seen = {}
  for index, overrides in enumerate(trials):
    key = json.dumps(overrides, sort_keys=True, default=str)
    if key in seen:
      raise ConfigError(f'{path}: trials {seen[key]} and {index} have the same overrides {key}')
    seen[key] = index
  return trials


MAX_NAME = 120  # characters of a trial's folder name; a longer one is cut and ends in a hash


def names(trials: list[dict]) -> list[str]:
  """Readable, distinct folder names: 'fine_tune_at=50,seed=1' (the last part of each key; whole
  keys where that is ambiguous), cut to `MAX_NAME` with a hash of the whole where longer; names
  that would still be equal get their trial index appended."""
  keys = sorted({key for overrides in trials for key in overrides})
  short = {key: key.rsplit('.', 1)[-1] for key in keys}
  if len(set(short.values())) < len(keys):
    short = {key: key for key in keys}

  def name(overrides):
    text = ','.join(f'{short[k]}={overrides[k]}' for k in keys if k in overrides) or 'base'
    text = re.sub(r'[^A-Za-z0-9_.=,+-]', '_', text)
    if len(text) <= MAX_NAME:
      return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]  # folder names end at 255 bytes
    return f'{text[:MAX_NAME - 13]}-{digest}'

  plain = [name(overrides) for overrides in trials]
  unique = [f'{n}-{i}' if plain.count(n) > 1 else n for i, n in enumerate(plain)]
  repeated = sorted({n for n in unique if unique.count(n) > 1})
  if repeated:
    raise ConfigError(f'trials would share the folders {repeated}: make their values distinct')
  return unique


def with_overrides(base: ml_collections.ConfigDict, overrides: dict, name: str):
  """A copy of the base config with `overrides` (dotted keys) set: an unknown key or a value of
  the wrong type is a `ConfigError` naming `name` (the trial)."""
  config = base.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    try:
      for parent in parents:
        node = node[parent]
      if leaf not in node:
        raise KeyError(leaf)
    except (KeyError, TypeError, AttributeError) as e:
      raise ConfigError(f'{name}: unknown config key {key!r}') from e
    try:
      node[leaf] = value
    except TypeError as e:  # ConfigDict's own type check
      raise ConfigError(f'{name}: {key}={value!r} has the wrong type ({e}); use plain '
                        'Python values (int, float, str, bool, None, tuples of str)') from e
  return config


def trial_config(base: ml_collections.ConfigDict, overrides: dict, name: str):
  """The base config with the trial's overrides (dotted keys), checked like a run's config."""
  from tlflax.run_parts import check_config  # the run's own check (it imports TensorFlow)
  config = with_overrides(base, overrides, f'trial {name}')
  try:
    check_config(config)
  except ConfigError as e:
    raise ConfigError(f'trial {name}: {e}') from e
  return config


def first_phase_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of a run of the first phase alone."""
  first, settings = config_lib.ordered_phases(config)[0]
  alone = config.copy_and_resolve_references()
  alone.phases = ml_collections.ConfigDict({first: settings.copy_and_resolve_references()})
  alone.phase_order = (first,)
  return alone


def shared_name(config: ml_collections.ConfigDict, process_count: int) -> str:
  """The folder of the config's first phase, shared by trials that agree on it. The process
  count is part of it: each process shuffles its own shard, so the data order depends on it."""
  first = config_lib.ordered_phases(config)[0][0]
  settings = config_lib.first_phase_settings(config_as_json(config))
  text = json.dumps({**settings, 'process_count': process_count}, sort_keys=True)
  return f'{first}-{hashlib.sha256(text.encode()).hexdigest()[:12]}'
