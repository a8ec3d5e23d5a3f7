"""Running a sweep's trials in one workdir, each as `main.py` would run it.

Each trial trains in `WORKDIR/<its name>/` with the trainer's own resume: a finished trial (its
`test_metrics.json` exists) is skipped, after checking that it was run with the trial's config; an
interrupted one continues. Trials that agree on their first phase (`trials.shared_name`) train it
once in `WORKDIR/_shared/<name>/` and start their later phases from its result, which gives the
parameters of the trial run alone (the first phase's data order, dropout keys and parameters do
not depend on the later phases).
"""
import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import jax
from absl import logging

from tlflax import config as config_lib
from tlflax.errors import ConfigError
from tlflax.resume import config_as_json, listing
from tlflax.sweep import report
from tlflax.sweep import trials as trials_lib
from tlflax.workdir import holds_a_run

SHARED = '_shared'
# Settings a trial's folder may have been run with otherwise: they do not change its results.
RESULT_NEUTRAL = ('checkpoints_to_keep', 'compute.prefetch', 'compute.cache_limit_gb',
                  'compute.compilation_cache_dir', 'compute.image_cache',
                  'compute.image_cache_limit_gb')


@dataclasses.dataclass
class Trial:
  index: int
  name: str
  overrides: dict
  config: object  # ml_collections.ConfigDict
  shared: Optional[str]  # its first phase's folder under WORKDIR/_shared, if others share it


def plan(base_config, overrides: list[dict], share: bool = True) -> list[Trial]:
  """Every trial's config, checked before any work (a bad key in trial 7 fails at once), and the
  first phases that two or more trials share (none without `share`, and none of 0 epochs)."""
  names = trials_lib.names(overrides)
  configs = [trials_lib.trial_config(base_config, o, n) for o, n in zip(overrides, names)]
  def can_share(config):
    phases = config_lib.ordered_phases(config)
    return share and len(phases) > 1 and phases[0][1].epochs > 0
  shared = [trials_lib.shared_name(c, jax.process_count()) if can_share(c) else None
            for c in configs]
  return [Trial(i, name, o, c, s if s and shared.count(s) > 1 else None)
          for i, (name, o, c, s) in enumerate(zip(names, overrides, configs, shared))]


def finished(workdir: Path, trial: Trial) -> bool:
  """Whether the trial's run is complete. A folder holding a run (`workdir.holds_a_run`) made with
  another config (other than in `RESULT_NEUTRAL` settings), finished or not, is a
  `ConfigError`."""
  folder = workdir / trial.name
  if holds_a_run(folder) and (folder / 'config.json').is_file():
    stored = config_lib.upgrade_stored(json.loads((folder / 'config.json').read_text()))
    changed = {key: values for key, values in config_lib.differences(
        stored, config_as_json(trial.config)).items() if key not in RESULT_NEUTRAL}
    if changed:
      raise ConfigError(f'trial {trial.index} ({trial.name}) in {folder} was run with another '
                        f'config ({listing(changed)}); use another sweep workdir')
  return (folder / 'test_metrics.json').is_file()


def train_shared_phase(workdir: Path, trial: Trial) -> Path:
  """Trains (or resumes, or finds finished) the trial's shared first phase; returns its folder."""
  from tlflax.train import train_and_evaluate
  folder = workdir / SHARED / trial.shared
  if not (folder / 'test_metrics.json').is_file():
    logging.info('Training the shared phase %s in %s', trial.config.phase_order[0], folder)
    train_and_evaluate(trials_lib.first_phase_config(trial.config), folder)
  return folder


def run_trial(workdir: Path, trial: Trial, may_train_shared: bool = True):
  """Trains the trial (resuming it if it was interrupted), starting after its shared first phase
  when it has one and that phase is finished or `may_train_shared`."""
  from tlflax.train import train_and_evaluate
  first_phase_from = None
  if trial.shared:
    folder = workdir / SHARED / trial.shared
    if may_train_shared:
      first_phase_from = train_shared_phase(workdir, trial)
    elif (folder / 'test_metrics.json').is_file():
      first_phase_from = folder
  train_and_evaluate(trial.config, workdir / trial.name, first_phase_from=first_phase_from)


def run(base_config, overrides: list[dict], workdir, only: Optional[int] = None,
        share: bool = True) -> list[Trial]:
  """Runs the sweep's unfinished trials in order, with a progress line per trial, then writes the
  report of every finished trial. `only`: just that trial (0-based), which trains a shared first
  phase only if it is finished (jobs of a scheduler's array would race on it), and no report."""
  workdir = Path(workdir)
  trials = plan(base_config, overrides, share)
  if only is not None and not 0 <= only < len(trials):
    raise ConfigError(f'--trial={only}: the sweep has trials 0..{len(trials) - 1}')
  chosen = trials if only is None else [trials[only]]
  todo = [trial for trial in chosen if not finished(workdir, trial)]
  skipped = sorted({t.index for t in chosen} - {t.index for t in todo})
  if skipped:
    logging.info('Trials %s finished before: skipped', skipped)
  primary = jax.process_index() == 0
  start = time.perf_counter()
  for done, trial in enumerate(todo):
    logging.info('Trial %d (%s): %s', trial.index, trial.name, trial.overrides)
    run_trial(workdir, trial, may_train_shared=only is None)
    elapsed = time.perf_counter() - start
    remaining = elapsed / (done + 1) * (len(todo) - done - 1)
    if primary:
      print(f'trial {trial.index} ({trial.name}) finished: {done + 1} of {len(todo)} to run, '
            f'{elapsed / 60:.1f} min elapsed, about {remaining / 60:.1f} min to go', flush=True)
  if only is None:
    write_report(workdir, trials, time.perf_counter() - start if todo else None)
  return trials


def train_shared_phases(base_config, overrides: list[dict], workdir) -> list[Path]:
  """Trains every first phase that two or more trials share (before a scheduler's array of
  `--trial` jobs, which then start from them)."""
  workdir = Path(workdir)
  folders = {}
  for trial in plan(base_config, overrides):
    if trial.shared and trial.shared not in folders:
      folders[trial.shared] = train_shared_phase(workdir, trial)
  return list(folders.values())


def write_report(workdir: Path, trials: list[Trial], sweep_seconds=None):
  """results.csv/.md/.png and curves.png of the finished trials (each checked to have been run
  with its config), written by process 0."""
  done = [trial for trial in trials if finished(workdir, trial)]
  if jax.process_index() != 0:
    return
  rows = [report.trial_row(t.index, t.name, t.overrides,
                           json.loads((workdir / t.name / 'history.json').read_text()))
          for t in done]
  report.write(workdir, rows, len(trials), sweep_seconds)
  logging.info('Wrote %s (%d of %d trials finished)', workdir / 'results.md', len(rows),
               len(trials))
