"""The tuner: space files, the study in its storage (checks, stale trials, retries, surplus
asks), seeded sampling, and tiny studies through the command line (two workers on one SQLite
file, kill and resume, pruning, best_config.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from browser import assert_renders
from html_pages import Page
from runs import ROOT
from tlflax.errors import ConfigError
from tlflax.tune import choice, integer, log_uniform, uniform
from tlflax.tune import runner, space as space_lib, study as study_lib

optuna.logging.set_verbosity(optuna.logging.WARNING)
CATS_DOGS = ROOT / 'configs' / 'cats_dogs.py'


def write_space(path, body: str):
  path.write_text('from tlflax.tune import choice, integer, log_uniform, uniform\n\n'
                  'def get_space():\n' f'  return {body}\n')
  return path


def tuner(workdir, space, config_flags, *extra, wait=True, config_file=CATS_DOGS):
  """`python -m tlflax.tune` on the tiny run; (exit code, output), or the process."""
  command = [sys.executable, '-m', 'tlflax.tune', f'--config={config_file}', *config_flags,
             f'--space={space}', f'--workdir={workdir}', *extra]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  if not wait:
    return process
  output, _ = process.communicate(timeout=900)
  return process.returncode, output


def load(workdir, name, storage=None):
  return optuna.load_study(study_name=name,
                           storage=storage or study_lib.default_storage(workdir))


# --- space files -----------------------------------------------------------------------------

@pytest.mark.parametrize('body,message', [
    ("{'phases.fine_tune.learning_rate': log_uniform(1e-3, 1e-5)}",
     r"'phases.fine_tune.learning_rate': log_uniform\(0.001, 1e-05\) is an empty range"),
    ("{'phases.fine_tune.optimizer': choice()}",
     r"'phases.fine_tune.optimizer': choice\(\) has no"),
    ("{'phases.fine_tune.learning_rate': log_uniform(0.0, 1e-3)}", 'needs low > 0'),
    ("{'phases.fine_tune.fine_tune_at': integer(10, 20.5)}", 'high must be a finite integer'),
    ("{'phases.fine_tune.learning_rate': 1e-3}", 'is not a distribution'),
    ("{'phases.fine_tune.optimizer': choice('adam', ['sgd'])}", 'must be None, bool'),
    ("{'phases.fine_tune.optimizer': choice('adam', 'adam')}", 'repeats a value'),
    ("{}", 'non-empty dict'),
    ("{'phases.fine_tune.learning_rate': uniform(0.0, 0.5, step=0.3)}",
     'step does not divide the range'),
    ("1 / 0", 'failed: ZeroDivisionError'),
])
def test_a_bad_space_file_is_one_error_naming_the_key(tmp_path, body, message):
  with pytest.raises(ConfigError, match=message):
    space_lib.load_space(write_space(tmp_path / 'space.py', body))


def test_the_objective_and_the_variant_of_a_space_file(tmp_path):
  path = tmp_path / 'lr.py'
  path.write_text('from tlflax.tune import log_uniform\n'
                  'def get_space(variant):\n'
                  "  return {'phases.fine_tune.learning_rate': log_uniform(1e-5, float(variant))}\n"
                  "def get_objective():\n  return {'metric': 'loss', 'split': 'test'}\n")
  space = space_lib.load_space(f'{path}:1e-3')
  assert space.name == 'lr-1e-3'
  assert space.distributions['phases.fine_tune.learning_rate'] == log_uniform(1e-5, 1e-3)
  assert space.objective.direction == 'minimize'
  history = {'epochs': [{'phase': 'a', 'val_loss': 0.1}, {'phase': 'b', 'val_loss': 0.5},
                        {'phase': 'b', 'val_loss': 0.3}], 'test': {'loss': 0.4}}
  assert space.objective.value(history) == 0.4
  # the default: best validation accuracy of the last phase (not the first phase's epochs)
  history = {'epochs': [{'phase': 'a', 'val_accuracy': 0.9}, {'phase': 'b', 'val_accuracy': 0.6},
                        {'phase': 'b', 'val_accuracy': 0.7}]}
  assert space_lib.Objective().value(history) == 0.7
  path.write_text(path.read_text().replace("'split': 'test'", "'split': 'train'"))
  with pytest.raises(ConfigError, match="split 'train'"):
    space_lib.load_space(f'{path}:1e-3')


def test_space_keys_are_checked_against_the_config_before_any_trial(tiny_run, tmp_path):
  def check(body):
    runner.check_space(tiny_run, space_lib.load_space(write_space(tmp_path / 's.py', body)))
  check("{'phases.fine_tune.learning_rate': log_uniform(1e-5, 1e-3), "
        "'phases.fine_tune.fine_tune_at': integer(50, 150, step=10)}")
  with pytest.raises(ConfigError,
                     match="space: unknown config key 'phases.fine_tune.learnig_rate'"):
    check("{'phases.fine_tune.learnig_rate': log_uniform(1e-5, 1e-3)}")
  # a key that takes no float samples, whole or not (Optuna's uniform gives floats)
  for body, message in (("{'batch_size': uniform(8, 32)}", 'batch_size=8.0 has the wrong type'),
                        ("{'phases.fine_tune.epochs': uniform(2, 6)}",
                         r'uniform\(2, 6\) samples 2.0: phases.fine_tune.epochs must be int'),
                        ("{'phases.fine_tune.optimizer': choice('adam', 3)}",
                         'samples 3: phases.fine_tune.optimizer must be str'),
                        ("{'phases.fine_tune.fine_tune_at': uniform(50, 150)}",
                         "samples floats, and the config holds 'default' there")):
    with pytest.raises(ConfigError, match=message):
      check(body)


# --- the study in its storage -------------------------------------------------------------------

def search_record(space_body, tmp_path, config):
  from tlflax.resume import config_as_json
  space = space_lib.load_space(write_space(tmp_path / 'space.py', space_body))
  return space, {'space': space.as_json(), 'config': config_as_json(config)}


def test_a_study_made_for_another_search_is_refused(tiny_run, tmp_path):
  storage = study_lib.open_storage(study_lib.default_storage(tmp_path))
  space, search = search_record("{'phases.fine_tune.learning_rate': log_uniform(1e-5, 1e-3)}",
                                tmp_path, tiny_run)
  study = study_lib.open_study(storage, 's', search, 'maximize', None, None)
  study_lib.open_study(storage, 's', search, 'maximize', None, None)  # the same search: fine
  _, other = search_record("{'phases.fine_tune.learning_rate': log_uniform(1e-5, 1e-2)}",
                           tmp_path, tiny_run)
  # a study where nothing finished training (say every trial failed on a missing folder) goes
  # on with the corrected search; once a trial has finished, the search is fixed
  study_lib.open_study(storage, 's', other, 'maximize', None, None)
  study_lib.open_study(storage, 's', search, 'maximize', None, None)
  trial = study.ask()
  study.tell(trial, 0.5)
  with pytest.raises(ConfigError, match=r"study 's' .* another space \(distributions.phases."
                                        r"fine_tune.learning_rate: 'log_uniform\(1e-05, "
                                        r"0.001\)' -> 'log_uniform\(1e-05, 0.01\)'\)"):
    study_lib.open_study(storage, 's', other, 'maximize', None, None)
  changed = tiny_run.copy_and_resolve_references()
  changed.batch_size = 2
  _, other = search_record("{'phases.fine_tune.learning_rate': log_uniform(1e-5, 1e-3)}",
                           tmp_path, changed)
  with pytest.raises(ConfigError, match=r'another config \(batch_size: 4 -> 2\)'):
    study_lib.open_study(storage, 's', other, 'maximize', None, None)


def test_storage_urls_that_cannot_be_opened_are_one_line(tmp_path):
  for url in ('sqlite:///', 'sqlite:///:memory:'):
    with pytest.raises(ConfigError, match='a database in memory: the study would be lost'):
      study_lib.open_storage(url)
  with pytest.raises(ConfigError, match=r'a folder name with \?, # or %'):
    study_lib.default_storage(tmp_path / 'what?x')
  with pytest.raises(ConfigError, match=r'--storage=sqlite:////no/such/dir/x.db: cannot open'):
    study_lib.open_storage('sqlite:////no/such/dir/x.db')
  with pytest.raises(ConfigError, match=r'--storage=nonsense: cannot open'):
    study_lib.open_storage('nonsense')
  with pytest.raises(ConfigError, match='the folder /no/such does not exist'):
    study_lib.open_storage('journal:/no/such/study.log')
  journal = study_lib.open_storage(f'journal:{tmp_path / "study.log"}')
  assert optuna.create_study(storage=journal, study_name='j').study_name == 'j'


def dead_pid() -> int:
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def test_a_trial_whose_worker_died_is_failed_and_retried_once(tmp_path):
  study = optuna.create_study(storage=study_lib.default_storage(tmp_path), study_name='s')
  distributions = {'x': log_uniform(1e-3, 1.0)}
  trial = study.ask()
  distributions['x'].suggest(trial, 'x')
  trial.report(0.5, 1)
  storage = study._storage
  with study_lib.heartbeat(study, trial._trial_id):
    assert study_lib.reclaim_stale(study) == []  # alive: this process
  import socket
  storage.set_trial_system_attr(trial._trial_id, study_lib.WORKER, {
      'host': socket.gethostname(), 'pid': dead_pid(), 'trial': trial._trial_id})
  assert study_lib.reclaim_stale(study) == [(0, True)]
  failed, retry = study.get_trials()
  assert failed.state == TrialState.FAIL and failed.user_attrs['error'] == 'its worker stopped'
  assert retry.state == TrialState.WAITING and retry.params == failed.params
  assert retry.intermediate_values == {1: 0.5}  # the pruner sees its epochs again
  assert study_lib.tally(study) == study_lib.Tally(finished=0, running=0, waiting=1)
  # the retry, popped, is not stale for its failed trial's worker; silent too long, it is, and
  # it is not retried again
  popped = study.ask()
  assert popped.number == 1 and runner.trial_folder(storage.get_trial(popped._trial_id)) == \
      'trial_0000'
  assert study_lib.reclaim_stale(study) == []
  assert study_lib.reclaim_stale(study, time.time() + study_lib.GRACE_SECONDS + 1) == [
      (1, False)]
  assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]
  assert study_lib.tally(study) == study_lib.Tally(finished=1, running=0, waiting=0)


def test_an_interrupted_trial_is_retried_every_time_one_whose_worker_died_once(tmp_path):
  study = optuna.create_study(storage=study_lib.default_storage(tmp_path), study_name='s')

  def fail(trial, error):
    study._storage.set_trial_user_attr(trial._trial_id, 'error', error)
    study.tell(trial, state=TrialState.FAIL)
    return study._storage.get_trial(trial._trial_id)

  first = study.ask()
  log_uniform(1e-3, 1.0).suggest(first, 'x')
  study_lib.retry(study, fail(first, 'interrupted by SIGTERM'))
  second = study.ask()  # the retry, interrupted again: queued again
  study_lib.retry(study, fail(second, 'interrupted by SIGTERM'))
  third = study.ask()
  study_lib.retry(study, fail(third, study_lib.STOPPED), stale=True)  # its worker died: once
  fourth = study.ask()
  study_lib.retry(study, fail(fourth, study_lib.STOPPED), stale=True)  # and again: no more
  trials = study.get_trials()
  assert len(trials) == 4 and len({json.dumps(t.params) for t in trials}) == 1
  assert study_lib.retry_history(trials[3]) == [0, 1, 2]
  assert study_lib.tally(study) == study_lib.Tally(finished=1, running=0, waiting=0)


def test_a_trial_asked_when_the_study_is_full_is_surplus(tmp_path):
  study = optuna.create_study(storage=study_lib.default_storage(tmp_path), study_name='s')
  first, second = study.ask(), study.ask()  # two workers that both saw one trial missing
  assert not runner.surplus(study, first, 1)
  assert runner.surplus(study, second, 1)
  assert study.get_trials()[1].state == TrialState.FAIL
  assert study_lib.tally(study) == study_lib.Tally(finished=0, running=1, waiting=0)


def test_sampling_is_reproducible_with_a_seed_and_distinct_across_trials(tmp_path):
  space = space_lib.Space('s', {'lr': log_uniform(1e-5, 1e-1), 'at': integer(0, 100, step=10),
                                'opt': choice('adam', 'sgd', 'rmsprop'),
                                'p': uniform(0.0, 0.5)}, space_lib.Objective())

  def draws(seed, name, trials=14):  # past TPE's 10 random trials, into its model
    study = optuna.create_study(storage=study_lib.default_storage(tmp_path), study_name=name,
                                direction='maximize')
    values = []
    for _ in range(trials):
      trial = study.ask()
      params = runner.sample(study, trial, space, seed)
      study.tell(trial, -abs(params['lr'] - 1e-3) + params['at'] / 1000)
      values.append(params)
    return values

  once, again, other = draws(0, 'a'), draws(0, 'b'), draws(1, 'c')
  assert once == again
  assert once != other and once[0] != other[0]
  assert len({json.dumps(v, sort_keys=True) for v in once}) == len(once)


def test_when_the_pruner_may_stop_a_run():
  phases = [('head', type('S', (), {'epochs': 3})), ('tune', type('S', (), {'epochs': 4}))]

  def may(epoch, phase, warmup=1, stopping=False):
    return runner.prunable({'epoch': epoch, 'phase': phase}, stopping, phases, warmup)

  # epochs 1-3 are the head's, 4-7 the second phase's; each phase's first epoch is left alone
  assert [may(e, 'head') for e in (1, 2, 3)] == [False, True, True]
  assert [may(e, 'tune') for e in (4, 5, 6, 7)] == [False, True, True, False]  # 7: the last
  assert [may(e, 'tune', warmup=0) for e in (4, 6)] == [True, True]
  assert [may(e, 'tune', warmup=2) for e in (5, 6)] == [False, True]
  assert not may(5, 'tune', stopping=True)  # early stopping ends the last phase there
  assert may(2, 'head', stopping=True)  # ... but ends only the first phase here


def test_the_hyperband_pruner_covers_the_configs_epochs(tmp_path):
  pruner = runner.make_pruner('hyperband', 3, 20)
  study = optuna.create_study(storage=study_lib.default_storage(tmp_path), pruner=pruner,
                              direction='maximize')
  stopped = []
  for number in range(6):  # later trials that are worse at each epoch get pruned
    trial = study.ask()
    for epoch in range(1, 21):
      trial.report(1.0 - number / 10 + epoch / 100, epoch)
      if trial.should_prune():
        stopped.append(number)
        study.tell(trial, state=TrialState.PRUNED)
        break
    else:
      study.tell(trial, 1.0 - number / 10)
  assert stopped and 0 not in stopped
  assert isinstance(runner.make_pruner('none', 3, 20), optuna.pruners.NopPruner)


def test_workers_starting_together_on_a_new_sqlite_file_all_open_it(tmp_path):
  script = ('import sys; from tlflax.tune import study; import optuna; '
            's = study.open_storage(sys.argv[1]); '
            "optuna.create_study(storage=s, study_name='s', load_if_exists=True)")
  url = study_lib.default_storage(tmp_path)
  processes = [subprocess.Popen([sys.executable, '-c', script, url], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(4)]
  outputs = [p.communicate(timeout=120)[0] for p in processes]
  assert [p.returncode for p in processes] == [0] * 4, outputs


def fake_train(search, trial, name, params):
  """A trial's history without training: its score is a function of its values."""
  score = 1 - abs(params['phases.fine_tune.learning_rate'] - 3e-4) * 100
  return {'epochs': [{'phase': 'fine_tune', 'epoch': 2, 'val_accuracy': score}],
          'test': {'accuracy': score, 'loss': 1 - score}, 'phases': {}}


def fake_search(tiny_run, tmp_path, name, seed=0, trials=6):
  space = space_lib.load_space(write_space(tmp_path / f'{name}.py', PHASE_2_SPACE))
  search = runner.Search(tiny_run, space, tmp_path / name, trials, seed)
  study = runner.open_search(search, None, name, 'median', 3)
  return search, study


def test_the_worker_loop_samples_reproducibly_with_a_seed(tiny_run, tmp_path, monkeypatch):
  monkeypatch.setattr(runner, 'train', fake_train)
  draws = {}
  for name, seed in (('a', 0), ('b', 0), ('c', 1)):
    search, study = fake_search(tiny_run, tmp_path, name, seed, trials=12)
    assert runner.work(search, study) == 12
    draws[name] = [t.params for t in study.trials]
  assert draws['a'] == draws['b'] != draws['c']
  assert json.loads((tmp_path / 'a' / 'study.json').read_text()) == {
      'storage': 'WORKDIR/study.db', 'study': 'a'}  # the default storage moves with the workdir


def test_a_worker_waits_for_trials_elsewhere_and_retries_one_whose_heartbeat_stops(
    tiny_run, tmp_path, monkeypatch):
  monkeypatch.setattr(runner, 'train', fake_train)
  monkeypatch.setattr(runner, 'POLL_SECONDS', 0.1)
  monkeypatch.setattr(study_lib, 'GRACE_SECONDS', 2)
  search, study = fake_search(tiny_run, tmp_path, 'elsewhere', trials=2)
  assert runner.work(search, study) == 2
  # a third trial, running on another host whose worker then stops beating
  search.trials = 3
  other = study.ask()
  runner.sample(study, other, search.space, 0)
  study._storage.set_trial_system_attr(other._trial_id, study_lib.WORKER, {
      'host': 'another-node', 'pid': 1, 'trial': other._trial_id})
  study._storage.set_trial_system_attr(other._trial_id, study_lib.HEARTBEAT, time.time())
  start = time.time()
  assert runner.work(search, study) == 1  # it waited, then retried trial 2 itself
  assert time.time() - start >= 2
  states = [(t.number, t.state, t.user_attrs.get('folder')) for t in study.trials]
  assert states[2:] == [(2, TrialState.FAIL, None), (3, TrialState.COMPLETE, 'trial_0002')]
  assert study.trials[3].params == study.trials[2].params


# --- tiny studies through the command line --------------------------------------------------------

@pytest.fixture(scope='module')
def tiny_flags(tiny_run):
  from runs import overrides
  return overrides(tiny_run)


PHASE_2_SPACE = ("{'phases.fine_tune.learning_rate': log_uniform(1e-5, 1e-3), "
                 "'phases.fine_tune.optimizer': choice('adam', 'rmsprop')}")


@pytest.fixture(scope='module')
def two_workers(tiny_flags, tmp_path_factory):
  """4 trials of a phase-2 space by two workers started together on one SQLite file."""
  base = tmp_path_factory.mktemp('two_workers')
  space = write_space(base / 'phase2.py', PHASE_2_SPACE)
  workdir = base / 'study'
  workers = [tuner(workdir, space, tiny_flags, '--trials=4', wait=False) for _ in range(2)]
  outputs = [w.communicate(timeout=900)[0] for w in workers]
  return workdir, space, outputs, [w.returncode for w in workers]


def test_two_workers_run_each_trial_once(two_workers):
  workdir, _, outputs, codes = two_workers
  assert codes == [0, 0], outputs
  trials = load(workdir, 'phase2').get_trials()
  assert [t.number for t in trials] == [0, 1, 2, 3]
  assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs for t in trials]
  assert sorted(t.user_attrs['folder'] for t in trials) == [f'trial_000{i}' for i in range(4)]
  # both workers ran trials
  assert len({t.system_attrs[study_lib.WORKER]['pid'] for t in trials}) == 2
  shared = [p for p in (workdir / '_shared').iterdir() if p.is_dir()]
  assert len(shared) == 1  # one first phase, trained once by one of the workers
  for trial in trials:  # each trained once: its phase-2 epochs once each, after the shared phase
    history = json.loads((workdir / trial.user_attrs['folder'] / 'history.json').read_text())
    assert [e['epoch'] for e in history['epochs']] == [1, 2, 3, 4]
    assert history['phases']['feature_extraction']['shared_from'] == str(shared[0])
  assert sum('Training the shared phase' in o for o in outputs) == 1


def test_the_report_lists_the_trials_and_the_best_config_trains_to_its_score(
    two_workers, tmp_path, monkeypatch, browser):
  from tlflax.resume import config_as_json
  from tlflax.train import train_and_evaluate
  workdir, _, _, _ = two_workers
  study = load(workdir, 'phase2')
  best = study.best_trial
  with open(workdir / 'results.csv') as f:
    import csv
    rows = list(csv.DictReader(f))
  assert [int(r['trial']) for r in rows] == [0, 1, 2, 3]
  assert {int(r['trial']): float(r['value']) for r in rows} == {
      t.number: pytest.approx(t.value, abs=1e-12) for t in study.trials}
  assert float(rows[best.number]['phases.fine_tune.learning_rate']) == pytest.approx(
      best.params['phases.fine_tune.learning_rate'], rel=1e-12)
  assert f"Best: trial {best.number} (trial_000{best.number})" in (
      workdir / 'results.md').read_text()
  page = Page(workdir / 'report.html')
  table = page.tables['table-1']
  assert [int(r['trial'].text) for r in table] == [0, 1, 2, 3]
  for row, trial in zip(table, study.trials):
    assert float(row['value'].value) == trial.value
    assert row['folder'].href == f"{trial.user_attrs['folder']}/report.html"
    assert (workdir / row['folder'].href).is_file()
  assert f'Best: trial {best.number}' in page.all_text
  assert page.row_classes['table-1'] == ['best' if t.number == best.number else ''
                                          for t in study.trials]  # highlighted
  assert sorted(page.images) == ['curves.png', 'history.png', 'importances.png']
  assert 'best_config.py' in page.links
  assert_renders(browser.check(workdir / 'report.html'))
  umask = os.umask(0)
  os.umask(umask)
  for name in ('importances.png', 'history.png', 'curves.png', 'results.md', 'best_config.py'):
    assert (workdir / name).stat().st_size > 1000, name
    assert (workdir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name  # readable by all
  import importlib.util
  monkeypatch.chdir(ROOT)  # where the tuner ran: best_config.py names its base file from there
  assert "BASE_FILE = 'configs/cats_dogs.py'" in (workdir / 'best_config.py').read_text()
  spec = importlib.util.spec_from_file_location('best_config', workdir / 'best_config.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  stored = json.loads((workdir / best.user_attrs['folder'] / 'config.json').read_text())
  assert config_as_json(config) == stored  # the best trial's config, as its folder recorded it
  history = train_and_evaluate(config, tmp_path / 'again').history
  assert space_lib.Objective().value(history) == pytest.approx(best.value, abs=1e-6)


def test_a_rerun_with_the_study_finished_runs_nothing(two_workers, tiny_flags):
  workdir, space, _, _ = two_workers
  (workdir / 'results.md').unlink()
  code, output = tuner(workdir, space, tiny_flags, '--trials=4', '--report')
  assert code == 0, output
  assert 'Trial ' not in output and len(load(workdir, 'phase2').trials) == 4
  assert (workdir / 'results.md').read_text().startswith('# Study phase2: 4 trials')
  # more trials, with no time for them
  code, output = tuner(workdir, space, tiny_flags, '--trials=6', '--timeout=0')
  assert code == 0 and '--timeout=0 s passed: no new trial started' in output, output
  assert len(load(workdir, 'phase2').trials) == 4
  code, output = tuner(workdir, space, tiny_flags, '--trials=4', '--study=other')
  assert code == 1 and output.strip().splitlines()[-1].startswith(
      f"error: {workdir} holds the study 'phase2'"), output


def wait_for(path, process, timeout=300):
  """Waits until `path` exists (while `process` runs)."""
  end = time.time() + timeout
  while not path.exists():
    assert process.poll() is None, process.communicate()[0]
    assert time.time() < end, f'{path} did not appear'
    time.sleep(0.05)


def test_killed_workers_resume_their_trials_and_the_study_ends_with_its_trials(
    tiny_flags, tmp_path):
  space = write_space(tmp_path / 'phase2.py', PHASE_2_SPACE)
  workdir = tmp_path / 'study'
  flags = [*tiny_flags, '--config.phases.fine_tune.epochs=8']
  journal = f'journal:{tmp_path / "study.log"}'  # the storage for workers on a shared filesystem
  args = ('--trials=2', '--pruner=none', f'--storage={journal}')
  # SIGTERM during trial 0's second phase: it fails, interrupted, and is queued to go on
  process = tuner(workdir, space, flags, *args, wait=False)
  wait_for(workdir / 'trial_0000' / 'checkpoints' / '3', process)
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=300)[0]
  assert process.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), output
  assert 'trial 0 is queued to run again (from its last checkpoint' in output.splitlines()[-1]
  # the interrupted worker wrote the report of the study so far: trial 0's retry, queued
  assert '| 1 | queued |' in (workdir / 'results.md').read_text()
  # the rerun resumes it (as trial 1) in its folder; SIGKILL during the next trial (2)
  process = tuner(workdir, space, flags, *args, wait=False)
  wait_for(workdir / 'trial_0002' / 'checkpoints' / '3', process)
  process.kill()
  first_rerun = process.communicate(timeout=300)[0]
  code, output = tuner(workdir, space, flags, *args)
  assert code == 0, output
  assert 'trial 2: its worker stopped; it is retried' in output
  trials = load(workdir, 'phase2', study_lib.open_storage(journal)).get_trials()
  assert [(t.state, t.user_attrs.get('folder')) for t in trials] == [
      (TrialState.FAIL, 'trial_0000'), (TrialState.COMPLETE, 'trial_0000'),
      (TrialState.FAIL, 'trial_0002'), (TrialState.COMPLETE, 'trial_0002')]
  assert [trials[0].user_attrs['error'], trials[2].user_attrs['error']] == [
      'interrupted by SIGTERM', 'its worker stopped']
  assert trials[1].params == trials[0].params and trials[3].params == trials[2].params
  for folder, log in (('trial_0000', first_rerun), ('trial_0002', output)):
    history = json.loads((workdir / folder / 'history.json').read_text())
    assert [e['epoch'] for e in history['epochs']] == list(range(1, 10))  # resumed, not redone
    assert f'Resuming from {workdir / folder} after epoch' in log
  assert not (workdir / 'trial_0001').exists() and not (workdir / 'trial_0003').exists()
  report = (workdir / 'results.md').read_text()
  assert report.startswith('# Study phase2: 2 trials') and 'interrupted' not in report


def test_the_pruner_stops_trials_whose_samples_are_bad(tiny_flags, tmp_path):
  # half the samples train the head at a rate that cannot move it (validation accuracy 7 of 12
  # after epoch 1, where the others have 9 of 12)
  space = write_space(tmp_path / 'half_bad.py',
                      "{'phases.feature_extraction.learning_rate': choice(3e-2, 1e-9), "
                      "'phases.fine_tune.learning_rate': log_uniform(1e-5, 1e-4)}")
  workdir = tmp_path / 'study'
  code, output = tuner(workdir, space, tiny_flags, '--trials=6', '--prune_after=1',
                       '--prune_warmup=0', '--config.phases.fine_tune.epochs=4')
  assert code == 0, output
  trials = load(workdir, 'half_bad').get_trials()
  pruned = [t for t in trials if t.state == TrialState.PRUNED]
  bad = [t for t in pruned if t.params['phases.feature_extraction.learning_rate'] == 1e-9]
  assert bad, [(t.state, t.params, t.intermediate_values) for t in trials]
  for trial in pruned:  # stopped before its last epoch, its folder kept, no final evaluation
    folder = workdir / trial.user_attrs['folder']
    history = json.loads((folder / 'history.json').read_text())
    assert len(history['epochs']) < 5 and (folder / 'checkpoints').is_dir()
    assert not (folder / 'test_metrics.json').exists()
    # the median rule: at the step it was pruned, worse than the median of the trials before
    step = max(trial.intermediate_values)
    earlier = sorted(t.intermediate_values[step] for t in trials
                     if t.number < trial.number and t.state == TrialState.COMPLETE)
    assert max(trial.intermediate_values.values()) < np.median(earlier)
  assert 'pruned after epoch 1' in output
  assert '| pruned |' in (workdir / 'results.md').read_text()


def test_a_bad_sample_fails_its_trial_alone_and_bad_input_stops_before_any(tiny_flags,
                                                                           tmp_path):
  # weight decay is AdamW's: the samples with rmsprop fail the config check
  space = write_space(tmp_path / 'mixed.py',
                      "{'phases.fine_tune.optimizer': choice('adamw', 'rmsprop'), "
                      "'phases.fine_tune.weight_decay': uniform(0.01, 0.1)}")
  workdir = tmp_path / 'study'
  code, output = tuner(workdir, space, tiny_flags, '--trials=4', '--pruner=none')
  assert code == 0, output
  trials = load(workdir, 'mixed').get_trials()
  failed = [t for t in trials if t.state == TrialState.FAIL]
  assert failed and all(t.params['phases.fine_tune.optimizer'] == 'rmsprop' for t in failed)
  assert all('weight_decay' in t.user_attrs['error'] for t in failed)
  assert all(t.state == TrialState.COMPLETE for t in trials if t not in failed)
  assert 'weight_decay' in (workdir / 'results.md').read_text()
  # a study whose trials all fail ends with one line and status 1
  doomed = write_space(tmp_path / 'doomed.py', "{'phases.fine_tune.optimizer': choice('rmsprop'), "
                       "'phases.fine_tune.weight_decay': uniform(0.01, 0.1)}")
  code, output = tuner(tmp_path / 'doomed', doomed, tiny_flags, '--trials=2')
  assert code == 1 and output.strip().splitlines()[-1].startswith(
      "error: all 2 finished trials failed; trial 0: trial trial_0000: phases.fine_tune: "
      "weight_decay is adamw's"), output
  # bad input: one line, and no trial started
  bad = write_space(tmp_path / 'bad.py', "{'phases.fine_tune.learnig_rate': log_uniform(1, 2)}")
  for extra, message in (
      ([f'--space={bad}'], "space: unknown config key 'phases.fine_tune.learnig_rate'"),
      ([f'--storage=sqlite:///{tmp_path}/no/such/dir/x.db'], 'cannot open'),
      (['--storage=postgresq://typo/db'], "--storage=postgresq://typo/db: cannot open it"),
      (['--report'], 'holds no study yet'),
      (['--study=mixed', '--trials=0'], 'trials')):
    code, output = tuner(tmp_path / 'fresh', space, tiny_flags, *extra)
    lines = output.strip().splitlines()
    assert code in (1, 2) and message in lines[-1] and 'Traceback' not in output, output
  # an error that is not the sample's (the data folder is gone) stops the worker, one line,
  # and queues its trial to run again
  valid = write_space(tmp_path / 'valid.py', PHASE_2_SPACE)
  code, output = tuner(tmp_path / 'no_data', valid, [*tiny_flags,
                                                     f'--config.data.folder={tmp_path}/gone'])
  assert code == 1 and 'Traceback' not in output, output
  assert 'trial 0 stopped the worker: image folder' in output and 'queued' in output
  assert output.strip().splitlines()[-1].startswith('error: image folder')
  assert [t.state for t in load(tmp_path / 'no_data', 'valid').trials] == [
      TrialState.FAIL, TrialState.WAITING]
  # no trial, and no study recorded that a corrected command would be refused for
  assert not list((tmp_path / 'fresh').glob('trial_*'))
  assert not (tmp_path / 'fresh' / runner.STUDY_FILE).exists()
