"""Search spaces as data: a space file (`configs/spaces/*.py`, given as `PATH[:variant]`) defines
`get_space()` (or `get_space(variant)`), a dict from dotted config keys to distributions made
with this module's `log_uniform`, `uniform`, `integer` and `choice`, and may define
`get_objective()`, a dict `{'metric': 'accuracy' | 'loss', 'split': 'validation' | 'test'}`
(default: the best validation accuracy over the last phase's epochs; a loss is minimized, an
accuracy maximized).

Light to import (no Optuna): space files import it before the command quiets the libraries.
"""
import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

from tlflax import user_files
from tlflax.errors import ConfigError

PLAIN = (type(None), bool, int, float, str)  # the values Optuna stores for a categorical


@dataclasses.dataclass(frozen=True)
class Distribution:
  """One key's distribution: `kind` is 'float', 'int' or 'choice'."""
  kind: str
  low: Any = None
  high: Any = None
  log: bool = False
  step: Any = None
  choices: tuple = ()

  def describe(self) -> str:
    """As the space file wrote it, for messages and the report."""
    if self.kind == 'choice':
      return f'choice{self.choices!r}'
    what = 'log_uniform' if self.log and self.kind == 'float' else (
        'uniform' if self.kind == 'float' else 'integer')
    extra = (f', step={self.step!r}' if self.step is not None else '') + (
        ', log=True' if self.log and self.kind == 'int' else '')
    return f'{what}({self.low!r}, {self.high!r}{extra})'

  def suggest(self, trial, key: str):
    """The value an Optuna trial samples for `key` (checked by `check` first)."""
    if self.kind == 'choice':
      return trial.suggest_categorical(key, self.choices)
    if self.kind == 'int':
      return trial.suggest_int(key, self.low, self.high, step=self.step or 1, log=self.log)
    return trial.suggest_float(key, self.low, self.high, step=self.step, log=self.log)


def log_uniform(low: float, high: float) -> Distribution:
  """A positive float, uniform in its logarithm (learning rates, weight decay)."""
  return Distribution('float', low, high, log=True)


def uniform(low: float, high: float, step: Optional[float] = None) -> Distribution:
  """A float in [low, high] (on a grid of `step` from `low`, if given)."""
  return Distribution('float', low, high, step=step)


def integer(low: int, high: int, step: int = 1, log: bool = False) -> Distribution:
  """An integer in [low, high] (layer indices, epochs, RandAugment's magnitude)."""
  return Distribution('int', low, high, log=log, step=step)


def choice(*values) -> Distribution:
  """One of `values` (None, bool, int, float or str: optimizers, schedules, augmentation ops)."""
  return Distribution('choice', choices=tuple(values))


def check(key: str, distribution) -> Distribution:
  """`distribution` if it can be sampled, else a `ConfigError` naming `key` and what is wrong."""
  if not isinstance(distribution, Distribution):
    raise ConfigError(f'space key {key!r}: {distribution!r} is not a distribution; use '
                      'log_uniform, uniform, integer or choice from tlflax.tune')
  d = distribution
  if d.kind == 'choice':
    if not d.choices:
      raise ConfigError(f'space key {key!r}: choice() has no values')
    odd = [v for v in d.choices if not isinstance(v, PLAIN)]
    if odd:
      raise ConfigError(f'space key {key!r}: choice values must be None, bool, int, float or '
                        f'str, not {odd[0]!r}')
    if len(set(map(repr, d.choices))) < len(d.choices):
      raise ConfigError(f'space key {key!r}: {d.describe()} repeats a value')
    return d
  number = int if d.kind == 'int' else (int, float)
  for name, value in (('low', d.low), ('high', d.high)) + (
      (('step', d.step),) if d.step is not None else ()):
    if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
      raise ConfigError(f'space key {key!r}: {d.describe()}: {name} must be a finite '
                        f'{"integer" if d.kind == "int" else "number"}')
  if d.low > d.high:
    raise ConfigError(f'space key {key!r}: {d.describe()} is an empty range (low > high)')
  if d.log and d.low <= 0:
    raise ConfigError(f'space key {key!r}: {d.describe()}: a logarithmic range needs low > 0')
  if d.step is not None and d.step <= 0:
    raise ConfigError(f'space key {key!r}: {d.describe()}: step must be positive')
  if d.step is not None and not math.isclose(
      round((d.high - d.low) / d.step) * d.step, d.high - d.low, rel_tol=1e-9, abs_tol=1e-12):
    raise ConfigError(f'space key {key!r}: {d.describe()}: step does not divide the range '
                      '(high - low)')
  if d.log and d.step not in (None, 1):
    raise ConfigError(f'space key {key!r}: {d.describe()}: a logarithmic range takes no step')
  return d


def corners(distribution: Distribution) -> tuple:
  """The values that bound what can be sampled, of the types the samples have (a float
  distribution samples floats, whole or not)."""
  if distribution.kind == 'choice':
    return distribution.choices
  if distribution.kind == 'float':
    return (float(distribution.low), float(distribution.high))
  return (distribution.low, distribution.high)


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a trial is scored by: the best `val_<metric>` of the last phase's epochs
  (split 'validation'), or the final test `metric` (split 'test')."""
  metric: str = 'accuracy'
  split: str = 'validation'

  @property
  def direction(self) -> str:
    return 'minimize' if self.metric == 'loss' else 'maximize'

  def describe(self) -> str:
    return (f'best validation {self.metric} of the last phase' if self.split == 'validation'
            else f'test {self.metric}')

  def epoch_value(self, record: dict) -> float:
    """An epoch's validation value (what the pruner sees each epoch)."""
    return record[f'val_{self.metric}']

  def value(self, history: dict) -> float:
    """A finished run's score, from its `history.json`."""
    if self.split == 'test':
      return history['test'][self.metric]
    last_phase = history['epochs'][-1]['phase']
    values = [self.epoch_value(r) for r in history['epochs'] if r['phase'] == last_phase]
    return min(values) if self.direction == 'minimize' else max(values)


def objective_from(values) -> Objective:
  """The `Objective` of a space file's `get_objective()` dict."""
  if not isinstance(values, dict):
    raise ConfigError(f'get_objective() must return a dict, not {values!r}')
  unknown = sorted(set(values) - {'metric', 'split'})
  if unknown:
    raise ConfigError(f'get_objective(): unknown keys {unknown}; it takes metric and split')
  objective = Objective(**values)
  if objective.metric not in ('accuracy', 'loss'):
    raise ConfigError(f"get_objective(): metric {objective.metric!r}: use 'accuracy' or 'loss'")
  if objective.split not in ('validation', 'test'):
    raise ConfigError(f"get_objective(): split {objective.split!r}: use 'validation' or 'test'")
  return objective


@dataclasses.dataclass(frozen=True)
class Space:
  """A loaded space file: its distributions (in the file's order) and its objective."""
  name: str  # the file's stem, and variant: the default study name
  distributions: dict
  objective: Objective

  def as_json(self) -> dict:
    """What the study records, to refuse a rerun with another space."""
    return {'distributions': {k: d.describe() for k, d in self.distributions.items()},
            'objective': dataclasses.asdict(self.objective)}


def load_space(spec: str) -> Space:
  """The space file `PATH[:variant]`, every distribution and the objective checked."""
  where, space, extra = user_files.call(spec, 'space file', 'get_space', ('get_objective',))
  objective = extra.get('get_objective', {})
  if not isinstance(space, dict) or not space or not all(isinstance(k, str) for k in space):
    raise ConfigError(f'{where}: get_space() must return a non-empty dict from dotted config '
                      'keys (strings) to distributions')
  try:
    distributions = {key: check(key, d) for key, d in space.items()}
    objective = objective_from(objective)
  except (ConfigError, TypeError) as e:
    raise ConfigError(f'{where}: {e}') from e
  path, _, variant = where.partition(':')
  name = Path(path).stem + (f'-{variant}' if variant else '')
  return Space(name, distributions, objective)
