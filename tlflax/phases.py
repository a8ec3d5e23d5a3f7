"""A run's phases placed on its global epoch count, and the arithmetic of resuming.

The phases run in `config.phase_order`; phase k covers the global epochs after the epochs of the
phases before it. A checkpoint after global epoch e therefore belongs to exactly one phase, at a
known epoch inside it (`locate`): that is all a resumed run needs to know where it stands.
"""
import dataclasses

import ml_collections

from tlflax import config as config_lib
from tlflax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Phase:
  """A phase of the run, placed on the run's global epoch count."""
  name: str
  index: int  # its place in the run's phase order
  settings: ml_collections.ConfigDict  # `tlflax.config.phase`
  first_epoch: int  # global epochs before it

  @property
  def last_epoch(self) -> int:
    return self.first_epoch + self.settings.epochs


def phase_plan(config) -> list[Phase]:
  """The phases in `config.phase_order`, each with the global epochs that precede it."""
  plan, first = [], 0
  for index, (name, settings) in enumerate(config_lib.ordered_phases(config)):
    plan.append(Phase(name, index, settings, first))
    first += settings.epochs
  return plan


def locate(plan: list[Phase], epoch: int) -> tuple[Phase, int]:
  """The phase that trains global epoch `epoch` (>= 1), and its epochs done after it."""
  for phase in plan:
    if phase.first_epoch < epoch <= phase.last_epoch:
      return phase, epoch - phase.first_epoch
  raise ConfigError(f'the config has {plan[-1].last_epoch} epochs in all; the workdir has a '
                    f'checkpoint of epoch {epoch}')


def stops_early(records: list, settings, best_metric: str, mode: str) -> bool:
  """Whether a phase's epoch `records` so far (history records, in order) end it under its
  `early_stopping` settings: `patience` epochs in a row without improving `best_metric` by more
  than `min_delta` on the phase's best so far (Keras's `EarlyStopping`; `mode`: 'min' or 'max')."""
  patience, min_delta = settings.early_stopping.patience, settings.early_stopping.min_delta
  if not patience:
    return False
  best, waited = None, 0
  for record in records:
    value = record[best_metric] if mode == 'max' else -record[best_metric]
    if best is None or value - min_delta > best:
      best, waited = value, 0
    else:
      waited += 1
  return waited >= patience


def ended_early(history: dict, phase: Phase) -> bool:
  """Whether the run's `history` says early stopping ended `phase`."""
  return history['phases'].get(phase.name, {}).get('stopped_early_after') is not None
