"""A tuner worker: asks the study for trials and trains each as `main.py` would, until the study
has its `--trials` (or `--timeout` passes).

Each trial trains in `DIR/trial_NNNN/` (a retry in its failed trial's folder, where the trainer
resumes it) with the base config and its sampled values, checked like any config: a sample the
check refuses fails that trial alone, its error recorded. Every epoch's validation metric is
reported to the trial, and a trial the pruner stops keeps its folder. Trials whose samples leave
the first phase unchanged (a space over later phases' keys) start from one first phase trained
in `DIR/_shared/` (as `tlflax.sweep` shares it), under a file lock so that two workers do not
both train it.

Sampling is reproducible: the sampler of trial N is seeded by `--seed` and N, so one worker with
a seed samples the same values again, and workers never draw the same random start.
"""
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Optional

import ml_collections
import numpy as np
import optuna
from absl import logging
from optuna.trial import TrialState

from tlflax import config as config_lib
from tlflax import interrupts
from tlflax.errors import ConfigError, RunError, TrainingDiverged
from tlflax.resume import config_as_json
from tlflax.sweep import runner as sweep_runner
from tlflax.sweep import trials as trials_lib
from tlflax.tune import study as study_lib
from tlflax.tune.space import Space, corners
from tlflax.workdir import writable

STUDY_FILE = 'study.json'  # which storage and study a tuner workdir belongs to
DEFAULT_STORAGE = 'WORKDIR/study.db'  # how study.json names the default storage
POLL_SECONDS = 5  # how often a worker with no trial to start looks at the study again


@dataclasses.dataclass
class Search:
  """What the workers of one study share."""
  base: ml_collections.ConfigDict
  space: Space
  workdir: Path
  trials: int
  seed: int
  prune_warmup: int = 1  # epochs at the start of each phase that the pruner leaves alone


def check_space(base: ml_collections.ConfigDict, space: Space):
  """Each key of the space exists in the base config and takes the type of what it samples
  (a `ConfigError` before any trial). Whether a sampled combination runs is each trial's check."""
  for key, distribution in space.distributions.items():
    for value in corners(distribution):
      config = trials_lib.with_overrides(base, {key: value}, 'space')
      try:
        config_lib.check_types(config)
      except ConfigError as e:
        raise ConfigError(f'space: {key}: {distribution.describe()} samples {value!r}: {e}') \
            from e
    if distribution.kind == 'float' and declared_type(key) is not float:
      base_value = config_value(base, key)  # a setting of any type (fine_tune_at): as given
      if isinstance(base_value, (int, str)) and not isinstance(base_value, bool):
        raise ConfigError(f'space: {key}: {distribution.describe()} samples floats, and the '
                          f'config holds {base_value!r} there: use integer() or choice()')


def config_value(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def declared_type(key: str):
  """The type tlflax's defaults declare for `key` (a phase's settings: `config.phase`'s)."""
  parts = key.split('.')
  reference, path = ((config_lib.phase(0, 'adam', 1.0), parts[2:]) if parts[0] == 'phases'
                     else (config_lib.defaults(), parts))
  for part in path[:-1]:
    reference = reference[part]
  return reference.get_type(path[-1])


def check_workdir(workdir: Path, storage_url: str, study_name: str):
  """A tuner workdir holds one study: a rerun naming another storage or study is refused."""
  path = writable(workdir) / STUDY_FILE
  if path.is_file():
    stored = json.loads(path.read_text())
    if stored != {'storage': storage_url, 'study': study_name}:
      raise ConfigError(f'{workdir} holds the study {stored["study"]!r} in {stored["storage"]}, '
                        f'not {study_name!r} in {storage_url}: give this search its own '
                        '--workdir')


def record_workdir(workdir: Path, storage_url: str, study_name: str):
  """Records the study the workdir holds, once it has opened."""
  path = workdir / STUDY_FILE
  if not path.is_file():
    path.write_text(json.dumps({'storage': storage_url, 'study': study_name}, indent=2) + '\n')


def make_pruner(name: str, prune_after: int, epochs: int):
  """Optuna's median pruner (after `prune_after` finished trials), Hyperband over the epochs,
  or none."""
  if name == 'median':
    return optuna.pruners.MedianPruner(n_startup_trials=prune_after)
  if name == 'hyperband':
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
  return optuna.pruners.NopPruner()


def sampler_for(seed: int, number: int):
  """TPE (a running trial counted as a bad one, so parallel workers spread out), seeded by the
  study's seed and the trial's number."""
  trial_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
  return optuna.samplers.TPESampler(seed=trial_seed, constant_liar=True)


def open_search(search: Search, storage: Optional[str], study_name: str, pruner: str,
                prune_after: int):
  """The search's study, after the checks that need no trial (the space against the config,
  the workdir against the study, the storage, the study against the search)."""
  check_space(search.base, search.space)
  label = storage or DEFAULT_STORAGE  # the default moves with the workdir
  check_workdir(search.workdir, label, study_name)
  storage_url = storage or study_lib.default_storage(search.workdir)
  epochs = sum(settings.epochs for _, settings in config_lib.ordered_phases(search.base))
  study = study_lib.open_study(
      study_lib.open_storage(storage_url), study_name,
      {'space': search.space.as_json(), 'config': config_as_json(search.base)},
      search.space.objective.direction, sampler_for(search.seed, 0),
      make_pruner(pruner, prune_after, max(epochs, 1)))
  record_workdir(search.workdir, label, study_name)
  return study


def work(search: Search, study, timeout: Optional[float] = None) -> int:
  """Runs trials until the study has `search.trials` finished or `timeout` seconds pass (a
  running trial finishes first); the number this worker ran. When the trials left run in other
  workers, it waits for them: one whose worker died is its to retry."""
  start = time.perf_counter()
  ran, waiting = 0, False
  while True:
    for number, queued in study_lib.reclaim_stale(study):
      print(f'trial {number}: its worker stopped; ' + (
          'it is retried from its last checkpoint' if queued else
          'it was a retry of a trial whose worker stopped too: it stays failed'), flush=True)
    tally = study_lib.tally(study)
    if tally.finished >= search.trials:
      break
    if timeout is not None and time.perf_counter() - start > timeout:
      print(f'--timeout={timeout:g} s passed: no new trial started', flush=True)
      break
    if not tally.waiting and tally.finished + tally.running >= search.trials:
      if not waiting:  # for them to finish, or to retry one whose worker died
        print(f"waiting for the study's last {tally.running} trials, run by other workers",
              flush=True)
      waiting = True
      time.sleep(POLL_SECONDS)
      continue
    waiting = False
    trial = study.ask()
    study_lib.claim(study, trial._trial_id)
    if surplus(study, trial, search.trials):
      continue
    outcome = run_trial(search, study, trial)
    ran += 1
    tally = study_lib.tally(study)
    elapsed = (time.perf_counter() - start) / 60
    print(f'trial {trial.number} {outcome}; {tally.finished} of {search.trials} trials finished, '
          f'{elapsed:.1f} min in this worker', flush=True)
  return ran


def surplus(study, trial, wanted: int) -> bool:
  """Whether `trial` (a new one) was asked when others had already filled the study (two
  workers asking at once): it is then closed as failed, marked surplus, and not counted."""
  frozen = study._storage.get_trial(trial._trial_id)
  if study_lib.retry_history(frozen):
    return False
  before = [t for t in study_lib.counted(study.get_trials(deepcopy=False))
            if t.number < trial.number]
  if len(before) < wanted:
    return False
  study._storage.set_trial_system_attr(trial._trial_id, study_lib.SURPLUS, True)
  study.tell(trial, state=TrialState.FAIL)
  return True


def sample(study, trial, space: Space, seed: int) -> dict:
  """The trial's values for the space's keys: drawn by `sampler_for(seed, trial.number)`, or
  for a retry, its failed trial's."""
  if not study._storage.get_trial(trial._trial_id).params:
    study.sampler = sampler_for(seed, trial.number)
  return {key: d.suggest(trial, key) for key, d in space.distributions.items()}


def trial_folder(frozen) -> str:
  """`trial_NNNN`, numbered by the first trial of its retries."""
  history = study_lib.retry_history(frozen)
  return f'trial_{(history[0] if history else frozen.number):04d}'


def run_trial(search: Search, study, trial) -> str:
  """Samples (or, for a retry, takes) the trial's values, trains it and tells the study how it
  ended; a one-line account of it."""
  frozen = study._storage.get_trial(trial._trial_id)
  params = sample(study, trial, search.space, search.seed)
  name = trial_folder(frozen)
  trial.set_user_attr('folder', name)
  objective = search.space.objective
  logging.info('Trial %d (%s): %s', trial.number, name, params)
  with study_lib.heartbeat(study, trial._trial_id):
    try:
      history = train(search, trial, name, params)
    except TakenOver:
      return 'taken over by another worker, which took it for dead: left to it'
    except optuna.TrialPruned:
      study.tell(trial, state=TrialState.PRUNED)
      reported = study._storage.get_trial(trial._trial_id).intermediate_values
      return f'pruned after epoch {max(reported)}'
    except (ConfigError, TrainingDiverged) as e:  # the sample's own: this trial alone fails
      trial.set_user_attr('error', str(e))
      study.tell(trial, state=TrialState.FAIL)
      return f'failed: {e}'
    except (RunError, interrupts.Interrupted) as e:  # not the sample's: it runs again later
      interrupted = isinstance(e, interrupts.Interrupted)
      trial.set_user_attr('error', f'interrupted by {e.signal_name}' if interrupted else str(e))
      study.tell(trial, state=TrialState.FAIL)
      study_lib.retry(study, study._storage.get_trial(trial._trial_id))
      again = (f'trial {trial.number} is queued to run again (from its last checkpoint in '
               f'{search.workdir / name}, if it saved one): run the same command again to '
               'continue the study')
      if interrupted:
        e.outcome = again
      else:
        print(f'trial {trial.number} stopped the worker: {e}; {again}', flush=True)
      raise
    except BaseException as e:  # a bug: the trial fails with it, and the worker stops
      trial.set_user_attr('error', f'{type(e).__name__}: {e}')
      study.tell(trial, state=TrialState.FAIL)
      raise
  value = objective.value(history)
  study.tell(trial, value, skip_if_finished=True)  # unless another worker took it over
  return f'complete: {objective.describe()} {value:.4g}'


def train(search: Search, trial, name: str, params: dict) -> dict:
  """Trains the trial's run (resuming its folder), reporting each epoch; its history."""
  from tlflax.train import train_and_evaluate
  config = trials_lib.trial_config(search.base, params, name)
  objective = search.space.objective

  phases = config_lib.ordered_phases(config)

  def after_epoch(record, stopping):
    if not study_lib.still_running(trial.study, trial._trial_id):
      raise TakenOver()
    trial.report(objective.epoch_value(record), record['epoch'])
    if prunable(record, stopping, phases, search.prune_warmup) and trial.should_prune():
      raise optuna.TrialPruned()

  with warnings.catch_warnings():  # a retried epoch is reported again: Optuna keeps the first
    warnings.filterwarnings('ignore', message='.*already reported.*')
    result = train_and_evaluate(config, search.workdir / name,
                                first_phase_from=shared_first_phase(search, config, name),
                                after_epoch=after_epoch)
  return result.history


class TakenOver(Exception):
  """Another worker failed the trial, taking it for dead (its heartbeats did not reach the
  storage), and retries it: this worker stops training it."""


def prunable(record: dict, stopping: bool, phases: list, warmup: int) -> bool:
  """Whether the pruner may stop the run after the epoch `record`: not in the first `warmup`
  epochs of a phase (a rate that just changed needs them), and not at the run's last epoch
  (the trial has cost all it will, and gets its score), nor where early stopping ends the
  last phase."""
  first, start = {}, 1
  for name, settings in phases:
    first[name], start = start, start + settings.epochs
  last_phase = phases[-1][0]
  return (record['epoch'] - first[record['phase']] >= warmup and record['epoch'] < start - 1
          and not (stopping and record['phase'] == last_phase))


def shared_first_phase(search: Search, config, name: str) -> Optional[Path]:
  """The folder of the first phase this trial shares with the base config (trained here, under
  a lock, if no worker has yet), or None where its samples change that phase."""
  phases = config_lib.ordered_phases(config)
  if len(phases) < 2 or phases[0][1].epochs == 0:
    return None
  shared = trials_lib.shared_name(config, 1)
  if shared != trials_lib.shared_name(search.base, 1):
    return None
  folder = writable(search.workdir / sweep_runner.SHARED, 'the shared phases folder')
  if not (folder / shared / 'test_metrics.json').is_file():
    logging.info('Trial %s starts from the shared first phase %s (another worker may be training '
                 'it: waiting for its lock)', name, folder / shared)
  with study_lib.file_lock(folder / f'{shared}.lock'):
    return sweep_runner.train_shared_phase(
        search.workdir, sweep_runner.Trial(-1, name, {}, config, shared))
