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
