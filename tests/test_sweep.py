"""Sweeps: trials from a sweep file, resumable runs, shared first phases, --trial, the report."""
import csv
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import serialization

from browser import assert_renders
from html_pages import Page
from runs import ROOT, TINY
from tlflax.errors import ConfigError
from tlflax import backbones
from tlflax.sweep import product, runner, seeds, sweep, trials

# 2 phase-2 learning rates x 2 seeds: trials 0, 1 (rate 1e-4, seeds 0, 1) and 2, 3 (3e-4)
TWO_BY_TWO = product(sweep('phases.fine_tune.learning_rate', [1e-4, 3e-4]), seeds(2))


def parameters(folder):
  return serialization.msgpack_restore((folder / 'final_variables.msgpack').read_bytes())


def assert_same_parameters(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)


def test_trials_names_and_shared_first_phases(tiny_run):
  assert TWO_BY_TWO == [{'phases.fine_tune.learning_rate': 1e-4, 'seed': 0},
                        {'phases.fine_tune.learning_rate': 1e-4, 'seed': 1},
                        {'phases.fine_tune.learning_rate': 3e-4, 'seed': 0},
                        {'phases.fine_tune.learning_rate': 3e-4, 'seed': 1}]
  plan = runner.plan(tiny_run, TWO_BY_TWO)
  assert [t.name for t in plan] == ['learning_rate=0.0001,seed=0', 'learning_rate=0.0001,seed=1',
                                    'learning_rate=0.0003,seed=0', 'learning_rate=0.0003,seed=1']
  assert plan[0].shared == plan[2].shared != plan[1].shared == plan[3].shared  # one per seed
  # a phase-1 setting makes the first phase the trial's own
  own = runner.plan(tiny_run, product(sweep('phases.feature_extraction.learning_rate',
                                            [1e-3, 2e-3])))
  assert [t.shared for t in own] == [None, None]
  for key, values in (('data.flip', [True, False]), ('image_size', [32, 40]),
                      ('loss.class_weights', ['', '1,2']), ('model.weights', ['none', 'x.h5'])):
    assert [t.shared for t in runner.plan(tiny_run, sweep(key, values))] == [None, None], key
  unnamed = runner.plan(tiny_run, [{'model.weights': 'a/b.h5'}, {'model.weights': 'a_b.h5'}])
  assert [t.name for t in unnamed] == ['weights=a_b.h5-0', 'weights=a_b.h5-1']
  with pytest.raises(ConfigError, match=r"share the folders \['weights=x-1'\]"):
    trials.names([{'model.weights': 'x'}, {'model.weights': 'x'}, {'model.weights': 'x-1'}])
  # a first phase of 0 epochs leaves no checkpoint to start from: nothing to share
  empty = runner.plan(tiny_run, product([{'phases.feature_extraction.epochs': 0}],
                                        sweep('phases.fine_tune.learning_rate', [1e-4, 3e-4])))
  assert [t.shared for t in empty] == [None, None]
  with pytest.raises(ConfigError, match=r"trial widht=2,seed=1: unknown config key 'model.widht'"):
    runner.plan(tiny_run, [{'seed': 0}, {'seed': 1, 'model.widht': 2}])


@pytest.fixture(scope='module')
def interrupted_sweep(tiny_run, tmp_path_factory):
  """The 2x2 sweep "killed" as its third trial starts, then run again: (workdir, [the trials the
  first run trained, the trials the second trained])."""
  workdir = tmp_path_factory.mktemp('sweep')
  ran, train = [], runner.run_trial

  def recorded(workdir_, trial, may_train_shared=True):
    ran.append(trial.index)
    train(workdir_, trial, may_train_shared)

  def killed_at_the_third(workdir_, trial, may_train_shared=True):
    if len(ran) == 2:
      raise KeyboardInterrupt
    recorded(workdir_, trial, may_train_shared)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(runner, 'run_trial', killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
      runner.run(tiny_run, TWO_BY_TWO, workdir)
    first = list(ran)
    ran.clear()
    patch.setattr(runner, 'run_trial', recorded)
    runner.run(tiny_run, TWO_BY_TWO, workdir)
  return workdir, [first, list(ran)]


def test_a_restarted_sweep_runs_only_the_remaining_trials_and_reports_all(tiny_run,
                                                                          interrupted_sweep):
  workdir, ran = interrupted_sweep
  assert ran == [[0, 1], [2, 3]]
  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['kind'] for r in rows] == ['trial'] * 4 + ['mean_std'] * 2
  assert [r['name'] for r in rows[:4]] == [t.name for t in runner.plan(tiny_run, TWO_BY_TWO)]
  assert [r['trials'] for r in rows[4:]] == ['2', '2']
  for group, members in ((rows[4], rows[0:2]), (rows[5], rows[2:4])):
    accuracies = [float(m['test_accuracy']) for m in members]
    assert float(group['test_accuracy']) == pytest.approx(np.mean(accuracies), abs=1e-4)
    assert float(group['test_accuracy_std']) == pytest.approx(np.std(accuracies, ddof=1),
                                                              abs=1e-4)
  table = (workdir / 'results.md').read_text()
  assert table.count('| learning_rate=') == 4  # trial rows: the folder names
  assert table.count('| phases.fine_tune.learning_rate=') == 2  # a row per setting
  assert (workdir / 'results.png').stat().st_size and (workdir / 'curves.png').stat().st_size
  assert len(list((workdir / runner.SHARED).iterdir())) == 2  # one phase 1 per seed


def test_the_sweep_page_links_each_trial_report_and_sorts_in_a_browser(interrupted_sweep,
                                                                     browser):
  workdir, _ = interrupted_sweep
  page = Page(workdir / 'report.html')
  with open(workdir / 'results.csv') as f:
    rows = [r for r in csv.DictReader(f) if r['kind'] == 'trial']
  trials = page.tables['table-1']
  assert [r['name'].text for r in trials] == [r['name'] for r in rows]
  for row, expected in zip(trials, rows):
    assert row['name'].href == f"{expected['name']}/report.html"
    assert (workdir / expected['name'] / 'report.html').is_file()
    assert float(row['test_accuracy'].value) == pytest.approx(float(expected['test_accuracy']),
                                                              abs=1e-12)
  means = page.tables['table-2']
  assert [int(r['trials'].text) for r in means] == [2, 2]
  assert sorted(page.images) == ['curves.png', 'results.png']
  assert_renders(browser.check(workdir / 'report.html'))
  losses = [float(r['test_loss'].value) for r in trials]
  assert len(set(losses)) > 1  # an order to find
  ascending = browser.column_after_clicks(workdir / 'report.html', 'table-1', 'test loss', 1)
  descending = browser.column_after_clicks(workdir / 'report.html', 'table-1', 'test loss', 2)
  assert [float(v) for v in ascending] == sorted(losses)
  assert [float(v) for v in descending] == sorted(losses, reverse=True)


def test_a_shared_first_phase_ends_with_the_parameters_of_the_trial_alone(
    tiny_run, interrupted_sweep, tmp_path):
  """`--trial=1` on a fresh workdir (no shared phase there yet) trains trial 1 alone, only it;
  with the sweep's finished shared phases copied in, `--trial=1` starts from its own."""
  workdir, _ = interrupted_sweep
  name = 'learning_rate=0.0001,seed=1'
  runner.run(tiny_run, TWO_BY_TWO, tmp_path / 'alone', only=1)
  assert [p.name for p in (tmp_path / 'alone').iterdir()] == [name]
  shutil.copytree(workdir / runner.SHARED, tmp_path / 'array' / runner.SHARED)
  runner.run(tiny_run, TWO_BY_TWO, tmp_path / 'array', only=1)
  alone, array, shared = tmp_path / 'alone' / name, tmp_path / 'array' / name, workdir / name
  assert_same_parameters(parameters(alone), parameters(shared))
  assert_same_parameters(parameters(array), parameters(shared))
  assert 'shared_from' not in (alone / 'history.json').read_text()
  for folder in (shared, array):
    assert 'shared_from' in (folder / 'history.json').read_text()


def test_an_interrupted_shared_trial_resumes_to_the_same_parameters(tiny_run, interrupted_sweep,
                                                                     tmp_path):
  """Trial 3 "killed" after phase 2's first epoch (its later checkpoint and outputs removed):
  the sweep runs it again from its own checkpoint, to the same parameters."""
  workdir, _ = interrupted_sweep
  shutil.copytree(workdir, tmp_path / 'sweep')
  trial = tmp_path / 'sweep' / 'learning_rate=0.0003,seed=1'
  shutil.rmtree(trial / 'checkpoints' / '3')
  for output in ('test_metrics.json', 'final_variables.msgpack'):
    (trial / output).unlink()
  runner.run(tiny_run, TWO_BY_TWO, tmp_path / 'sweep')
  assert_same_parameters(parameters(trial), parameters(workdir / trial.name))


def test_a_sweep_file_that_fails_is_one_line(tmp_path):
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_trials():\n  return [{"seed": 1}] + 1\n')
  with pytest.raises(ConfigError, match=r'broken.py failed: TypeError: can only concatenate'):
    trials.load_trials(broken)
  with pytest.raises(ConfigError, match=r"fine_tune_at.py:big failed: ValueError: unknown sweep"):
    trials.load_trials(f"{ROOT / 'configs' / 'sweeps' / 'fine_tune_at.py'}:big")


@pytest.mark.parametrize('key,value', [('phases.fine_tune.epochs', 3),
                                       ('model.weights', 'other.h5')])
def test_a_finished_trial_made_with_another_config_stops_the_sweep(tiny_run, interrupted_sweep,
                                                                   key, value):
  """Also for `model.weights`, which a resumed run may change (it is read only at the start),
  but which gives a trial another result."""
  workdir, _ = interrupted_sweep
  changed = tiny_run.copy_and_resolve_references()
  changed.update_from_flattened_dict({key: value})
  with pytest.raises(ConfigError, match=f'was run with another config .*{key}'):
    runner.run(changed, TWO_BY_TWO, workdir)
  with pytest.raises(ConfigError, match='was run with another config'):
    runner.write_report(workdir, runner.plan(changed, TWO_BY_TWO))


def test_the_command_line_lists_trials_and_fails_at_once_on_a_typo(tiny_run, tmp_path):
  sweep_file = tmp_path / 'typo.py'
  sweep_file.write_text('from tlflax.sweep import seeds\n\n'
                        'def get_trials(variant=""):\n'
                        '  good = seeds(2)\n'
                        '  typo = [{"phases.fine_tune.lr": 1}]\n'
                        '  return good if variant == "good" else good + typo\n')
  flags = [f'--config.{key}={value}' for key, value in {
      **TINY, 'data.folder': tiny_run.data.folder, 'model.weights': tiny_run.model.weights}.items()]
  def sweep_list(sweep, *mode):
    return subprocess.run([sys.executable, '-m', 'tlflax.sweep',
                           f'--config={ROOT}/configs/cats_dogs.py', f'--sweep={sweep}',
                           f'--workdir={tmp_path / "w"}', *flags, *(mode or ['--list'])],
                          cwd=ROOT, capture_output=True, text=True)
  bad = sweep_list(sweep_file)
  assert bad.returncode == 1 and 'Traceback' not in bad.stderr
  assert "trial lr=1: unknown config key 'phases.fine_tune.lr'" in bad.stderr
  good = sweep_list(f'{sweep_file}:good')
  assert good.returncode == 0, good.stderr[-2000:]
  assert good.stdout.splitlines()[:2] == ["0\tseed=0\t{'seed': 0}", "1\tseed=1\t{'seed': 1}"]
  both = sweep_list(f'{sweep_file}:good', '--trial=0', '--report')  # 0 is a Slurm array's first
  assert both.returncode != 0 and '--trial and --report do not go together' in both.stderr
  assert not (tmp_path / 'w').exists()


def test_sweep_files_load_with_their_variants():
  assert len(trials.load_trials(ROOT / 'configs' / 'sweeps' / 'fine_tune_at.py')) == 15
  small = trials.load_trials(f"{ROOT / 'configs' / 'sweeps' / 'fine_tune_at.py'}:small")
  assert [t['phases.fine_tune.fine_tune_at'] for t in small[::2]] == [None, 50, 100, 130]
  assert len(trials.load_trials(ROOT / 'configs' / 'sweeps' / 'augmentation.py')) == 6
  assert len(trials.load_trials(ROOT / 'configs' / 'sweeps' / 'fine_tune_rate.py')) == 9


def test_the_backbone_sweep_names_registered_backbones_that_pass_the_config_check():
  from configs import cats_dogs
  from tlflax.run_parts import check_config
  listed = trials.load_trials(ROOT / 'configs' / 'sweeps' / 'backbones.py')
  assert len(listed) == 14 and len({t['model.backbone'] for t in listed}) == 7
  everything = trials.load_trials(f"{ROOT / 'configs' / 'sweeps' / 'backbones.py'}:all")
  assert {t['model.backbone'] for t in everything} == {
      name for name in backbones.names() if backbones.get(name).imagenet_weights}
  assert len(everything) >= 2 * 29
  for trial in everything[::2]:  # each has a Keras ImageNet file at the tutorial's size
    config = cats_dogs.get_config()
    config.update_from_flattened_dict(trial)
    check_config(config)


def test_long_trial_names_are_cut_and_stay_distinct():
  """Folder names end at 255 bytes: a name over `MAX_NAME` characters is cut and ends in a hash of
  the whole, so two trials that differ only past the cut keep distinct folders."""
  from tlflax.sweep.trials import MAX_NAME, names
  long_value = 'x' * 300
  cut = names([{'data.augment_ops': long_value + 'a'}, {'data.augment_ops': long_value + 'b'}])
  assert all(len(name) == MAX_NAME for name in cut) and cut[0] != cut[1]
  assert cut[0].startswith('augment_ops=xxx')
  assert names([{'seed': 1}]) == ['seed=1']
