"""A phase's optimizer: learning-rate schedule, optimizer options and parameter groups, in optax.

The labels of `tlflax.param_groups` pick each leaf's transformation inside one
`optax.multi_transform`: frozen leaves go through `optax.set_to_zero()` (no optimizer state, no
update; the train step also skips their gradients, see `tlflax.steps`), trainable ones through the
phase's optimizer at its scheduled learning rate times the group's multiplier. The schedule counts
the phase's own steps (each phase starts a fresh optimizer, so it restarts per phase); its count is
part of the optimizer state, so a resumed run carries on where it stopped. Clipping by global
norm, when asked for, sees the gradients of all groups together.
"""
import re
from typing import Optional

import jax
import numpy as np
import optax

from tlflax.param_groups import FROZEN, multiplier_of

OPTIMIZERS = ('adam', 'adamw', 'rmsprop', 'sgd')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'step', 'exponential')
# Phase settings that shape the optimizer state (a schedule's count is part of it) or the steps a
# schedule counts: a run cannot change them mid-phase.
STATE_SHAPING = ('optimizer', 'fine_tune_at', 'param_groups', 'clip_norm', 'momentum', 'schedule')


def warmup_steps(settings, steps_per_epoch: int) -> int:
  """The phase's warmup in steps (`schedule.warmup_steps`, or `warmup_epochs` converted)."""
  schedule = settings.schedule
  return schedule.warmup_steps or round(schedule.warmup_epochs * steps_per_epoch)


def make_schedule(settings, steps_per_epoch: int) -> optax.Schedule:
  """The phase's learning rate at each of its steps (0-based):

  constant                `learning_rate`
  cosine, warmup_cosine   cosine decay, reaching `end_factor * learning_rate` after the last step
  step                    times `decay_rate` every `decay_epochs` epochs
  exponential             the same, continuously (`decay_rate ** (steps / decay steps)`)

  after a linear warmup from 0 over `warmup_epochs` (or `warmup_steps`), which decay schedules
  do not count ('warmup_cosine' is `optax.warmup_cosine_decay_schedule`)."""
  schedule, peak = settings.schedule, settings.learning_rate
  warmup = warmup_steps(settings, steps_per_epoch)
  decay_steps = settings.epochs * steps_per_epoch - warmup
  if schedule.name == 'constant':
    decay = optax.constant_schedule(peak)
  elif schedule.name in ('cosine', 'warmup_cosine'):
    decay = optax.cosine_decay_schedule(peak, max(decay_steps, 1), alpha=schedule.end_factor)
  else:
    decay = optax.exponential_decay(
        peak, transition_steps=max(round(schedule.decay_epochs * steps_per_epoch), 1),
        decay_rate=schedule.decay_rate, staircase=schedule.name == 'step')
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _path_name(path) -> str:
  return '/'.join(str(getattr(key, 'key', key)) for key in path)


def weight_decay_mask(exclude: str):
  """adamw's mask: decay every leaf whose path 'layer/variable' (e.g. 'block_3_expand_BN/scale')
  the `exclude` regex does not match in whole."""
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: not re.fullmatch(exclude, _path_name(path[-2:])), params)


def base_optimizer(settings, learning_rate) -> optax.GradientTransformation:
  """The phase's `optimizer` with its options, at `learning_rate` (a number or schedule). Adam,
  AdamW and RMSprop take Keras's defaults (epsilon 1e-7; RMSprop rho 0.9)."""
  momentum = settings.momentum or None
  if settings.optimizer == 'adam':
    return optax.adam(learning_rate, eps=1e-7)
  if settings.optimizer == 'adamw':
    return optax.adamw(learning_rate, eps=1e-7, weight_decay=settings.weight_decay,
                       mask=weight_decay_mask(settings.weight_decay_exclude))
  if settings.optimizer == 'rmsprop':
    return optax.rmsprop(learning_rate, decay=0.9, eps=1e-7, momentum=momentum,
                         nesterov=settings.nesterov)
  return optax.sgd(learning_rate, momentum=momentum, nesterov=settings.nesterov)


def make_optimizer(settings, groups: dict, steps_per_epoch: int, accumulate_steps: int = 1,
                   schedule: Optional[optax.Schedule] = None) -> optax.GradientTransformation:
  """The phase's transformation for parameters labelled by `groups` (`tlflax.param_groups`). A
  constant rate without warmup is passed as a number, so the optimizer keeps no step count for
  it (the tutorial's optimizer state, exactly). With `accumulate_steps` > 1 it is wrapped in
  `optax.MultiSteps`, which updates with the mean gradient of that many steps; the schedule
  still counts steps (an update takes the rate of its first step, `update_learning_rates`). A
  `schedule` given replaces the phase's (`tlflax.lr_find`)."""
  constant = (schedule is None and settings.schedule.name == 'constant'
              and not warmup_steps(settings, steps_per_epoch))
  by_step = schedule or make_schedule(settings, steps_per_epoch)
  schedule = by_step if accumulate_steps == 1 else (
      lambda updates: by_step(updates * accumulate_steps))

  def rate(multiplier):
    if constant:
      return settings.learning_rate * multiplier
    return schedule if multiplier == 1 else lambda count: schedule(count) * multiplier

  transforms = {label: base_optimizer(settings, rate(multiplier_of(label)))
                for label in set(jax.tree.leaves(groups)) - {FROZEN}}
  tx = optax.multi_transform({**transforms, FROZEN: optax.set_to_zero()}, groups)
  if settings.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(settings.clip_norm), tx)
  if accumulate_steps > 1:
    tx = optax.MultiSteps(tx, accumulate_steps).gradient_transformation()
  return tx


def update_learning_rates(schedule: optax.Schedule, steps: np.ndarray,
                          accumulate_steps: int = 1) -> np.ndarray:
  """The rate of `schedule` at which each of a phase's `steps` (0-based) contributes to an
  update."""
  first = (steps // accumulate_steps) * accumulate_steps
  return np.broadcast_to(schedule(first), steps.shape)
