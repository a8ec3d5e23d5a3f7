"""Starting or resuming a run in its workdir, checked against the config that made it.

`restore_or_initialize(run)` returns where training stands (`Position`): after the newest
checkpoint that restores (`Checkpoints.restore_newest`), or at the start with the initial
variables. A checkpoint records the resolved config; a run whose config differs stops, listing
the keys, unless the run allows the change and the checkpoint can take it. A workdir without
checkpoints or a finished run's results holds no run: it starts afresh, whatever its
config.json says.
"""
import dataclasses
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Optional

import jax
from absl import logging

from tlflax import config as config_lib
from tlflax import objectives, parallel
from tlflax.checkpoints import Checkpoints
from tlflax.classifier import init_variables
from tlflax.errors import CheckpointError, ConfigError, DataError
from tlflax.optim import STATE_SHAPING
from tlflax.phases import Phase, ended_early, locate, phase_plan
from tlflax.reports import write_json
from tlflax.steps import TrainState
from tlflax.workdir import holds_a_run


@dataclasses.dataclass
class Position:
  """Where training stands: after global epoch `epoch` and step `step`."""
  epoch: int
  step: int
  variables: dict  # {'params', 'batch_stats'} on the mesh
  history: dict  # what history.json holds
  state: Optional[TrainState] = None  # mid-phase: the phase's train state, optimizer included


def restore_or_initialize(run, first_phase_from=None) -> Position:
  """The newest checkpoint that restores, checked against the config; else a fresh start, or
  the end of the first phase trained in the workdir `first_phase_from` (`after_shared_phase`)."""
  def restore(epoch):
    meta = checkpoint_meta(run.checkpoints, epoch)
    changed = _config_changes(run, meta['config'])
    phase, done = _check_resume(run, meta, epoch, changed)
    if ended_early(meta['history'], phase):  # the next phase starts where this one would end
      return Position(phase.last_epoch, meta['step'],
                      run.checkpoints.restore_model(epoch, run.abstract), meta['history']), changed
    if done < phase.settings.epochs:  # mid-phase: the optimizer state too
      _, tx = run.optimizer(phase)
      state = run.checkpoints.restore_state(
          epoch, jax.eval_shape(lambda abstract: run.new_state(abstract, tx, 0), run.abstract))
      return Position(epoch, meta['step'], state.variables, meta['history'], state), changed
    return Position(epoch, meta['step'], run.checkpoints.restore_model(epoch, run.abstract),
                    meta['history']), changed

  restored = run.checkpoints.restore_newest(restore, set_aside=True)
  if restored is not None:
    epoch, (position, changed) = restored
    logging.info('Resuming from %s after epoch %d', run.workdir, epoch)
    _write_config(run, changed, epoch)
    return position
  if holds_a_run(run.workdir):
    raise ConfigError(f'{run.workdir} holds the results of a finished run but none of its '
                      'checkpoints: use another workdir (or move its files away to start afresh '
                      'there)')
  # no run to protect (a config.json alone is a failed start's, or an older tlflax's)
  _write_config(run, {}, 0)
  if first_phase_from is not None:
    return after_shared_phase(run, Path(first_phase_from))
  init_rng, _ = run.rngs()
  variables = init_variables(run.model, run.config.image_size, init_rng, run.config.model.weights)
  return Position(0, 0, parallel.replicate(variables, run.mesh), {'epochs': [], 'phases': {}})


def after_shared_phase(run, source: Path) -> Position:
  """Where the run stands after its first phase, taken from `source`: a finished run of that
  phase alone (`tlflax.sweep`) whose config agrees with the run's on everything the phase depends
  on (`config.first_phase_settings`); else `ConfigError` lists what differs."""
  first = phase_plan(run.config)[0]
  if not (source / 'checkpoints').is_dir():
    raise ConfigError(f'{source} holds no checkpoints of a phase {first.name!r} to start from')
  checkpoints = Checkpoints(source, sharding=parallel.replicated(run.mesh))

  def restore(epoch):
    meta = checkpoint_meta(checkpoints, epoch)
    if meta['phase'] != first.name or not (
        meta['phase_epoch'] == first.settings.epochs or ended_early(meta['history'], first)):
      raise ConfigError(f'{source} holds no finished phase {first.name!r} to start from')
    changed = config_lib.differences(config_lib.first_phase_settings(meta['config']),
                                     config_lib.first_phase_settings(config_as_json(run.config)))
    if changed:
      raise ConfigError(f'{source} trained phase {first.name!r} with another config '
                        f'({listing(changed)})')
    if meta['class_names'] != run.class_names:
      raise DataError(f'{source} trained on classes {meta["class_names"]}; the data now has '
                      f'{run.class_names}')
    return meta, checkpoints.restore_model(epoch, run.abstract)

  try:
    epochs = checkpoints.epochs()
    if not epochs:
      raise ConfigError(f'{source} holds no finished phase {first.name!r} to start from')
    meta, variables = checkpoints.restore_epoch(epochs[-1], restore,
                                                'move the shared phase away to train it again')
  finally:
    checkpoints.close()
  history = meta['history']
  history['phases'][first.name]['shared_from'] = str(source)
  if run.primary and (source / 'phases' / first.name).is_dir():
    shutil.copytree(source / 'phases' / first.name, run.workdir / 'phases' / first.name,
                    dirs_exist_ok=True)
  logging.info('Starting after phase %s, trained in %s', first.name, source)
  return Position(first.last_epoch, meta['step'], variables, history)


def config_as_json(config) -> dict:
  """The resolved config as plain JSON values (what `config.json` and checkpoints record), with
  `phase_order` as the list of names it resolves to."""
  values = json.loads(config.to_json_best_effort())
  values['phase_order'] = [name for name, _ in config_lib.ordered_phases(config)]
  return config_lib.completed(values)


META_KEYS = ('phase', 'phase_epoch', 'epoch', 'step', 'class_names', 'config', 'history')


def checkpoint_meta(checkpoints, epoch: int) -> dict:
  meta = checkpoints.restore_meta(epoch)
  missing = [key for key in META_KEYS if key not in meta]
  if missing:
    raise CheckpointError(f'the checkpoint of epoch {epoch} in {checkpoints.workdir} lacks '
                          f'{missing}: it was written by an older tlflax. Use another workdir.')
  return {**meta, 'config': config_lib.upgrade_stored(meta['config'])}


def trained_with_sigmoid(meta: dict) -> bool:
  """Whether a checkpoint's model has the one-logit sigmoid head (`meta` from `checkpoint_meta`;
  configs from before `model.head` existed meant 'auto')."""
  return objectives.uses_sigmoid(meta['config']['model'].get('head', 'auto'),
                                 len(meta['class_names']))


def _check_resume(run, meta: dict, epoch: int, changed: dict) -> tuple[Phase, int]:
  """The phase and epochs done that checkpoint `epoch` stands for under the run's config, which
  may differ from the checkpoint's (`changed`) only where the run can still continue."""
  if meta['class_names'] != run.class_names:
    raise DataError(f'{run.workdir} holds a run on classes {meta["class_names"]}; the data now has '
                    f'{run.class_names}. Use another workdir.')
  phase, done = locate(phase_plan(run.config), epoch)
  if (phase.name, done) != (meta['phase'], meta['phase_epoch']):
    raise ConfigError(f'cannot continue {run.workdir}: its epoch {epoch} was epoch '
                      f'{meta["phase_epoch"]} of phase {meta["phase"]!r}, and the config now makes '
                      f'it epoch {done} of phase {phase.name!r}. Use another workdir.')
  structural = {'model.backbone', 'model.backbone_args'}
  if trained_with_sigmoid(meta) != run.objective.sigmoid:
    structural.add('model.head')
  if done < phase.settings.epochs and not ended_early(meta['history'], phase):
    # mid-phase, the optimizer state and the schedule's step count carry on
    structural |= {'batch_size', 'train.accumulate_steps',
                   *(f'phases.{phase.name}.{key}' for key in STATE_SHAPING)}
    old_decay, new_decay = changed.get('train.ema_decay', (0.0, 0.0))
    if bool(old_decay) != bool(new_decay):  # the state holds an average, or not
      structural.add('train.ema_decay')
  blocking = sorted(key for key in changed
                    if key in structural or key.rsplit('.', 1)[0] in structural)
  if blocking:
    raise ConfigError(f'cannot continue {run.workdir} with a new {", ".join(blocking)}: the '
                      'checkpoint holds parameters, optimizer state or a schedule made for the '
                      'old value. Use another workdir.')
  return phase, done


def _config_changes(run, stored: Optional[dict]) -> dict:
  """{key: (stored, now)} where the run's config differs from the `stored` one of the workdir's
  run; a difference outside `config_lib.RESUME_SAFE` is a `ConfigError` unless
  `allow_config_change`."""
  changed = config_lib.differences(stored, config_as_json(run.config)) if stored else {}
  unsafe = {k: v for k, v in changed.items() if k not in config_lib.RESUME_SAFE}
  if unsafe and not run.allow_config_change:
    raise ConfigError(f'{run.workdir} holds a run made with another config '
                      f'({listing(unsafe)}). Use another workdir, or pass '
                      '--allow_config_change to continue this run with the new values.')
  return changed


def listing(changed: dict) -> str:
  """`{key: (old, new)}` as one line: `key: old -> new; ...`."""
  return '; '.join(f'{key}: {old!r} -> {new!r}' for key, (old, new) in changed.items())


def _write_config(run, changed: dict, epoch: int):
  """config.json := the run's config. A config it replaces (`changed`) is kept as
  config.before_epoch_<epoch>.json."""
  if not run.primary:
    return
  config_path = run.workdir / 'config.json'
  if changed:
    logging.warning('Continuing %s with a changed config: %s', run.workdir, listing(changed))
    if config_path.exists():
      kept = run.workdir / f'config.before_epoch_{epoch}.json'
      for again in itertools.count(2):
        if not kept.exists():
          break
        kept = run.workdir / f'config.before_epoch_{epoch}_{again}.json'
      os.replace(config_path, kept)
  write_json(config_path, config_as_json(run.config))
