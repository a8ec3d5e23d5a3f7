"""Reliability: phase order, a workdir's config, divergence, damaged checkpoints, kills, JSON."""
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from flax import serialization

from runs import ROOT, overrides, run_main
from tlflax import config as config_lib
from tlflax.errors import CheckpointError, TrainingDiverged
from tlflax.reports import write_json
from tlflax.train import evaluate_checkpoint, train_and_evaluate

sys.path.insert(0, str(ROOT / 'scripts'))
import fault_injection  # noqa: E402


def strict_json(path: Path):
  """The file as JSON, failing on NaN or Infinity (which strict parsers reject)."""
  def reject(constant):
    raise ValueError(f'{path} holds {constant}')
  return json.loads(path.read_text(), parse_constant=reject)


def final_parameters(workdir: Path):
  return serialization.msgpack_restore((workdir / 'final_variables.msgpack').read_bytes())


def assert_same_parameters(a, b, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_configdict_iterates_sorted_so_phase_order_decides():
  """The library fact the phase order guards against: keys come back sorted, not as written."""
  phases = ml_collections.ConfigDict()
  phases.train_head, phases.fine_tune = 1, 2
  assert list(phases) == ['fine_tune', 'train_head']
  config = ml_collections.ConfigDict({'phases': phases, 'phase_order': ('train_head,fine_tune',)})
  assert [name for name, _ in config_lib.ordered_phases(config)] == ['train_head', 'fine_tune']


def test_phases_run_in_the_order_written_not_alphabetically(tiny_run, tmp_path):
  """`train_head` (head only) then `fine_tune`: alphabetical order would fine-tune first."""
  config = tiny_run.copy_and_resolve_references()
  config.phases.train_head = config.phases.feature_extraction
  del config.phases['feature_extraction']
  config.phase_order = ('train_head', 'fine_tune')
  history = train_and_evaluate(config, tmp_path).history
  assert [e['phase'] for e in history['epochs']] == ['train_head', 'fine_tune', 'fine_tune']
  assert list(history['phases']) == ['train_head', 'fine_tune']


@pytest.fixture(scope='module')
def finished_run(tiny_run, tmp_path_factory):
  """The tiny recipe through `main.py`, uninterrupted (1 + 3 epochs): (workdir, its flags)."""
  workdir = tmp_path_factory.mktemp('finished') / 'run'
  code, output = run_main(workdir, overrides(tiny_run))
  assert code == 0, output[-3000:]
  return workdir, overrides(tiny_run)


def copy_of(finished_run, tmp_path) -> Path:
  shutil.copytree(finished_run[0], tmp_path / 'run')
  return tmp_path / 'run'


def test_a_workdir_with_another_config_stops_naming_the_keys(tiny_run, finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  saved_config = (workdir / 'config.json').read_text()
  changed = [*finished_run[1], '--config.seed=1', '--config.phases.fine_tune.fine_tune_at=50']
  code, output = run_main(workdir, changed)
  assert code == 1 and 'Traceback' not in output, output[-3000:]
  assert 'holds a run made with another config' in output
  assert "phases.fine_tune.fine_tune_at: 100 -> 50" in output and 'seed: 0 -> 1' in output
  assert (workdir / 'config.json').read_text() == saved_config  # not overwritten
  # the optimizer state of a continuing phase cannot take another freeze boundary, even when asked
  code, output = run_main(workdir, [*changed, '--config.phases.fine_tune.epochs=4'],
                          '--allow_config_change')
  assert code == 1 and 'cannot continue' in output and 'fine_tune_at' in output, output[-3000:]
  code, output = run_main(workdir,
                          [*finished_run[1], "--config.model.backbone_args={'alpha': 0.5}"],
                          '--allow_config_change')
  assert code == 1 and 'cannot continue' in output, output[-3000:]
  assert 'model.backbone_args' in output, output[-3000:]
  assert (workdir / 'config.json').read_text() == saved_config
  # other class folders: never the same run
  other = tmp_path / 'other_classes'
  shutil.copytree(tiny_run.data.folder, other)
  for split in ('train', 'validation', 'test'):
    (other / split / 'dog').rename(other / split / 'wolf')
  code, output = run_main(workdir, [*finished_run[1], f'--config.data.folder={other}'],
                          '--allow_config_change')
  assert code == 1 and "holds a run on classes ['cat', 'dog']" in output, output[-3000:]


def test_allowed_config_change_trains_more_epochs_in_the_last_phase(finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  before = (workdir / 'config.json').read_text()
  code, output = run_main(workdir, [*finished_run[1], '--config.phases.fine_tune.epochs=4'],
                          '--allow_config_change')
  assert code == 0, output[-3000:]
  assert 'Continuing' in output and 'phases.fine_tune.epochs: 3 -> 4' in output
  history = strict_json(workdir / 'history.json')
  assert [e['epoch'] for e in history['epochs']] == [1, 2, 3, 4, 5]
  assert [e['phase'] for e in history['epochs']][-2:] == ['fine_tune', 'fine_tune']
  assert (workdir / 'config.before_epoch_4.json').read_text() == before
  assert strict_json(workdir / 'config.json')['phases']['fine_tune']['epochs'] == 4


def test_settings_that_do_not_change_results_may_change_on_resume(finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  before = (workdir / 'config.json').read_text()
  code, output = run_main(workdir, [*finished_run[1], '--config.compute.prefetch=3',
                                    '--config.checkpoints_to_keep=2'])
  assert code == 0, output[-3000:]
  assert 'compute.prefetch: 2 -> 3' in output  # said, and the replaced config.json kept
  assert (workdir / 'config.before_epoch_4.json').read_text() == before
  assert strict_json(workdir / 'config.json')['compute']['prefetch'] == 3


def test_a_diverging_run_stops_before_checkpointing_the_diverged_state(tiny_run, tmp_path):
  """SGD at a huge rate in phase 2: the run stops naming phase, epoch and step; the newest
  checkpoint is phase 1's, finite; history.json stays strict JSON."""
  config = tiny_run.copy_and_resolve_references()
  config.phases.fine_tune.optimizer = 'sgd'
  config.phases.fine_tune.learning_rate = 1e38
  with pytest.raises(TrainingDiverged, match=r"at step \d+ of phase 'fine_tune', epoch 1/2"):
    train_and_evaluate(config, tmp_path)
  saved = (tmp_path / 'checkpoints').iterdir()
  assert sorted(int(p.name) for p in saved if p.name.isdigit()) == [1]
  history = strict_json(tmp_path / 'history.json')
  assert [e['phase'] for e in history['epochs']] == ['feature_extraction']
  metrics = evaluate_checkpoint(config, tmp_path)  # the last good state
  assert np.isfinite(metrics['loss'])


def test_a_setting_added_since_a_run_was_made_does_not_block_its_resume():
  """A workdir's stored config that lacks a key tlflax added later (at its default now) is the
  same config; set to something else, it differs."""
  stored = json.loads(config_lib.defaults().to_json_best_effort())
  del stored['data']['augment_ops']
  current = json.loads(config_lib.defaults().to_json_best_effort())
  assert config_lib.differences(stored, current) == {}
  current['data']['augment_ops'] = 'flip_lr'
  assert config_lib.differences(stored, current) == {'data.augment_ops': (None, 'flip_lr')}


def test_evaluation_needs_no_training_batch(tiny_run, finished_run):
  """A batch larger than the training split is fine for evaluating a checkpoint."""
  config = tiny_run.copy_and_resolve_references()
  config.batch_size = 64
  assert evaluate_checkpoint(config, finished_run[0])['count'] == 12


def test_evaluate_and_predict_refuse_what_the_workdir_was_not_trained_on(tiny_run, finished_run,
                                                                          tmp_path):
  """Another seed or data (whose carved splits may hold training images), other classes, another
  head: each stops naming what differs, in evaluate, predict and resume."""
  from runs import make_synthetic_folder
  from tlflax.errors import ConfigError, DataError
  from tlflax.predict import predict
  from tlflax.resume import trained_with_sigmoid
  workdir = copy_of(finished_run, tmp_path)
  config = tiny_run.copy_and_resolve_references()
  config.seed = 1
  with pytest.raises(ConfigError, match=r'other data settings \(seed: 0 -> 1\)'):
    evaluate_checkpoint(config, workdir)
  assert evaluate_checkpoint(config, workdir, other_data=True)['count'] == 12
  config.data.folder = str(make_synthetic_folder(tmp_path / 'three', per_class=4, classes={
      'a': (0, 0, 0), 'b': (90, 90, 90), 'c': (200, 200, 200)}))
  with pytest.raises(DataError, match=r"classes \['cat', 'dog'\]; the config's data has "
                                      r"\['a', 'b', 'c'\]"):
    evaluate_checkpoint(config, workdir, other_data=True)
  config = tiny_run.copy_and_resolve_references()
  config.model.head = 'softmax'
  with pytest.raises(ConfigError, match='model.head=auto; the config has softmax'):
    next(predict(config, workdir, config.data.folder))
  config.phases.fine_tune.epochs = 4
  with pytest.raises(ConfigError, match='cannot continue .* new model.head'):
    train_and_evaluate(config, workdir, allow_config_change=True)
  assert not (workdir / 'corrupt_checkpoints').exists()  # refused, not taken for damage
  # checkpoints from before model.head existed: two classes meant the sigmoid head
  assert trained_with_sigmoid({'config': {'model': {'alpha': 1.0}}, 'class_names': ['a', 'b']})
  assert not trained_with_sigmoid({'config': {'model': {}}, 'class_names': ['a', 'b', 'c']})


def test_json_files_are_strict_and_replaced_whole(tmp_path):
  path = tmp_path / 'x.json'
  with pytest.raises(ValueError):
    write_json(path, {'loss': float('nan')})
  assert not path.exists()
  write_json(path, {'loss': 1.0})
  with pytest.raises(ValueError):
    write_json(path, {'loss': float('inf')})
  assert strict_json(path) == {'loss': 1.0}


def test_a_checkpoint_keeps_the_meta_it_was_given(tmp_path):
  """Orbax writes in the background: changes to the meta dict after `save` must not reach it."""
  import optax

  from tlflax.checkpoints import Checkpoints
  from tlflax.steps import TrainState
  state = TrainState.create({'params': {'w': np.ones(3, np.float32)}, 'batch_stats': {}},
                            optax.sgd(0.1))
  checkpoints = Checkpoints(tmp_path)
  meta = {'history': {'epochs': [1]}}
  checkpoints.save(1, state, meta, {'val_loss': 0.5, 'val_accuracy': 0.5})
  meta['history']['epochs'].append(2)
  checkpoints.close()
  assert Checkpoints(tmp_path).restore_meta(1) == {'history': {'epochs': [1]}}


def test_a_one_step_epoch_records_no_rate_instead_of_nan(tiny_run, tmp_path):
  config = tiny_run.copy_and_resolve_references()
  config.batch_size = 24  # the 24 training images make one step
  config.phases.fine_tune.epochs = 0
  train_and_evaluate(config, tmp_path)
  history = strict_json(tmp_path / 'history.json')
  assert [e['images_per_second'] for e in history['epochs']] == [None]


def damage(checkpoint: Path, item: str):
  """Truncates every data file of one item of a checkpoint (as a full disk or a crash might)."""
  files = [p for p in (checkpoint / item).rglob('*') if p.is_file()
           and (item == 'meta' or '/d/' in str(p))]
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 3])


@pytest.mark.parametrize('item', ['train', 'meta'])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(finished_run, tmp_path, item,
                                                                  caplog):
  """Epoch 3 of 4 damaged and epoch 4 removed: the restart warns, resumes from epoch 2, sets the
  damaged one aside and ends with the uninterrupted run's parameters."""
  workdir = copy_of(finished_run, tmp_path)
  shutil.rmtree(workdir / 'checkpoints' / '4')
  damage(workdir / 'checkpoints' / '3', item)
  code, output = run_main(workdir, finished_run[1])
  assert code == 0, output[-3000:]
  assert 'does not restore' in output and 'Using checkpoint 2, the newest that restores' in output
  assert [p.name.split('-')[0] for p in (workdir / 'corrupt_checkpoints').iterdir()] == ['3']
  assert_same_parameters(final_parameters(finished_run[0]), final_parameters(workdir))


def test_no_restorable_checkpoint_stops_with_a_message(tiny_run, finished_run, tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  for checkpoint in (workdir / 'checkpoints').iterdir():
    damage(checkpoint, 'meta')
  with pytest.raises(CheckpointError, match='none of the checkpoints'):
    evaluate_checkpoint(tiny_run, workdir)
  code, output = run_main(workdir, finished_run[1])
  assert code == 1 and 'none of the checkpoints' in output and 'Traceback' not in output
  assert not (workdir / 'corrupt_checkpoints').exists()  # nothing moved when nothing restores


@pytest.mark.parametrize('point', ['save', 'test_pass'])
def test_killed_at_a_fault_point_the_restart_ends_as_the_uninterrupted_run(finished_run, tmp_path,
                                                                           point):
  """Two of `scripts/fault_injection.py`'s kill points (it runs ten random ones): kill -9 while
  the second checkpoint is being written (the restart resumes from the first), and during the
  test pass (or the reports right after it)."""
  expected = ('killed mid-save',) if point == 'save' else ('killed', 'killed after the reports')
  for attempt in range(3):  # a save can end in the instant between seeing it and the kill
    workdir = tmp_path / f'run{attempt}'
    hit = fault_injection.kill_at(workdir, finished_run[1], point, 0.0)
    if hit in expected:
      break
  assert hit in expected
  code, output = run_main(workdir, finished_run[1])
  assert code == 0, output[-3000:]
  if point == 'save':
    assert 'Resuming from' in output and 'after epoch 1' in output
  assert_same_parameters(final_parameters(finished_run[0]), final_parameters(workdir))
  assert [e['epoch'] for e in strict_json(workdir / 'history.json')['epochs']] == [1, 2, 3, 4]


def test_run_killed_in_phase_two_resumes_to_the_same_parameters(finished_run, tmp_path):
  interrupted = tmp_path / 'interrupted'
  run = fault_injection.WatchedRun(interrupted, finished_run[1])
  assert run.wait_for(lambda: (interrupted / 'checkpoints' / '2').is_dir()), 'ended before phase 2'
  assert run.kill()
  assert not (interrupted / 'test_metrics.json').exists()
  code, output = run_main(interrupted, finished_run[1])
  assert code == 0, output[-3000:]
  assert 'Resuming' in output
  assert_same_parameters(final_parameters(finished_run[0]), final_parameters(interrupted))
  history = strict_json(interrupted / 'history.json')
  assert [e['epoch'] for e in history['epochs']] == [1, 2, 3, 4]


def test_predictions_csv_survives_hostile_file_names(tiny_run, finished_run, tmp_path):
  """Commas and non-UTF-8 bytes in names, and a symlink loop under a `**` glob: each image once,
  one parseable row each, written batch by batch."""
  import csv

  from tlflax.predict import predict
  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  source = Path(tiny_run.data.folder) / 'test' / 'cat' / 'cat.0.jpg'
  names = ['a,b.jpg', os.fsdecode(b'x\xfe.jpg'), 'plain.jpg', 'quote".jpg', 'five.jpg']
  for name in names:
    shutil.copy(source, inputs / name)
  (inputs / 'loop').symlink_to(inputs, target_is_directory=True)
  output = tmp_path / 'predictions.csv'
  rows = predict(tiny_run, finished_run[0], str(inputs / '**' / '*.jpg'), output=output)
  first_batch = [next(rows) for _ in range(tiny_run.batch_size)]
  written = list(csv.reader(output.open(encoding='utf-8')))
  assert [r[0] for r in written[1:]] == [p for p, *_ in first_batch]  # already on disk
  every = first_batch + list(rows)
  assert len(every) == len(names)
  written = list(csv.reader(output.open(encoding='utf-8')))
  assert written[0][:3] == ['path', 'label', 'probability'] and len(written) == len(names) + 1
  assert all(len(row) == 7 for row in written)  # and the top 2 classes with probabilities
  assert sorted(Path(row[0]).name for row in written[1:]) == sorted(
      ['a,b.jpg', 'x\\xfe.jpg', 'plain.jpg', 'quote".jpg', 'five.jpg'])


@pytest.fixture(scope='module')
def longer_epochs(tiny_run, tmp_path_factory):
  """The tiny recipe's flags on 400 training images (100 steps an epoch), 1 + 1 epochs: an epoch
  that lasts long enough to be interrupted in."""
  from runs import make_synthetic_folder
  folder = make_synthetic_folder(tmp_path_factory.mktemp('longer') / 'images', per_class=200)
  return [flag if not flag.startswith('--config.data.folder=') else
          f'--config.data.folder={folder}' for flag in overrides(tiny_run)] + [
      '--config.phases.fine_tune.epochs=1']


def the_line_with(text: str, output: str) -> str:
  lines = [line for line in output.splitlines() if text in line]
  assert len(lines) == 1, output[-3000:]
  return lines[0]


@pytest.mark.parametrize('signal_name,phase,saved', [('SIGINT', 'fine_tune', 1),
                                                     ('SIGTERM', 'feature_extraction', None)])
def test_a_signalled_run_says_in_one_line_where_it_stopped_and_resumes(longer_epochs, tmp_path,
                                                                       signal_name, phase, saved):
  """Ctrl-C (SIGINT) in phase 2's epoch: one line names the phase, epoch and step and the epoch
  to resume after; the same command resumes there. SIGTERM (a scheduler's preemption) in the
  first epoch: nothing was saved, and nothing is left in the workdir; the same command starts."""
  workdir = tmp_path / 'run'
  run = fault_injection.WatchedRun(workdir, longer_epochs)
  def in_the_epoch():  # the phase's first step (its compilation) done
    text = ''.join(run.lines)
    start = text.find(f"Compiling the training step of phase '{phase}'")
    return start >= 0 and 'Compiled and ran the first step' in text[start:]
  assert run.wait_for(in_the_epoch), ''.join(run.lines)[-3000:]
  number = getattr(signal, signal_name)
  assert run.kill(number)
  output = ''.join(run.lines)
  assert run.process.returncode == -number  # ended by the signal, as a shell expects (130, 143)
  assert 'Traceback' not in output, output[-3000:]
  line = the_line_with('interrupted', output)
  assert line == output.strip().splitlines()[-1]
  match = re.fullmatch(rf"interrupted by {signal_name} during phase '{phase}', epoch 1/1 "
                       r'\(global (\d)\), after (\d+) of 100 steps; (.*)', line)
  assert match, line
  assert int(match.group(1)) == (1 if phase == 'feature_extraction' else 2)
  assert 1 <= int(match.group(2)) < 100  # in the epoch, after its first step
  if saved:
    assert match.group(3) == (f'epochs up to {saved} are saved in {workdir}: run the same command '
                              f'again to resume after epoch {saved}')
  else:
    assert match.group(3) == ('no epoch was saved, so nothing was kept: the same command starts '
                              'the run again')
    assert not workdir.exists()  # this start made it, and left nothing
  code, output = run_main(workdir, longer_epochs)
  assert code == 0, output[-3000:]
  assert (f'after epoch {saved}' in the_line_with('Resuming from', output) if saved
          else 'Resuming' not in output)
  assert [e['epoch'] for e in strict_json(workdir / 'history.json')['epochs']] == [1, 2]
  last = output.strip().splitlines()[-1]  # the run's result and where its files are
  accuracy = strict_json(workdir / 'test_metrics.json')['accuracy']
  assert last.startswith(f'finished: test accuracy {accuracy:.4f} on 200 images; in {workdir}: '
                         'report.html, history.json, test_metrics.json, evaluation/'), last


def signalled_while_saving_epoch_2(config, workdir: Path, monkeypatch, real_signal_first: bool):
  """Trains `config` in `workdir` with a SIGTERM at epoch 2's checkpoint, and checks that epoch 2
  is saved all the same and that the run says so. `real_signal_first`: a real SIGTERM as the
  saving starts, before orbax has the checkpoint; else `Interrupted` right after orbax took it
  (and writes it in the background)."""
  from tlflax import checkpoints, interrupts
  from tlflax import workdir as workdir_lib
  save = checkpoints.Checkpoints.save

  def save_with_a_signal(self, epoch, *args):
    if epoch == 2 and real_signal_first:
      os.kill(os.getpid(), signal.SIGTERM)
    save(self, epoch, *args)
    if epoch == 2 and not real_signal_first:
      raise interrupts.Interrupted(signal.SIGTERM)
  monkeypatch.setattr(checkpoints.Checkpoints, 'save', save_with_a_signal)
  with pytest.raises(interrupts.Interrupted) as raised:
    train_and_evaluate(config, workdir)
  assert workdir_lib.saved_epochs(workdir) == [1, 2]
  assert raised.value.during == 'the saving of epoch 2'
  assert raised.value.outcome.endswith('resume after epoch 2')


def test_a_checkpoint_being_written_when_a_signal_comes_is_finished(tiny_run, tmp_path,
                                                                     monkeypatch):
  """A SIGTERM right after epoch 2's checkpoint was handed to orbax: the run waits for it."""
  signalled_while_saving_epoch_2(tiny_run, tmp_path / 'run', monkeypatch, real_signal_first=False)


def test_interrupted_in_the_final_evaluation_it_says_only_that_remains(tiny_run, tmp_path,
                                                                        monkeypatch):
  from tlflax import interrupts, train

  def interrupted(*args, **kwargs):
    raise interrupts.Interrupted(signal.SIGINT)
  monkeypatch.setattr(train, 'evaluate_per_class', interrupted)
  with pytest.raises(interrupts.Interrupted) as raised:
    train_and_evaluate(tiny_run, tmp_path / 'run')
  assert raised.value.during == 'the final evaluation and reports'
  assert raised.value.outcome == (f'every epoch is saved in {tmp_path / "run"}: run the same '
                                  'command again for the final evaluation')


def test_a_start_that_fails_leaves_nothing_that_blocks_a_corrected_retry(tiny_run, tmp_path):
  """Weights that do not load (as `imagenet` offline): the start stops with one line and removes
  what it made (the workdir it created; in an existing one, its own files only); the retry with
  other weights and epochs trains. A config.json without checkpoints (an older tlflax's failed
  start) is not a run to protect either."""
  broken = tmp_path / 'broken.h5'
  broken.write_bytes(b'not HDF5')
  flags = [f for f in overrides(tiny_run) if not f.startswith('--config.model.weights=')]
  for workdir in (tmp_path / 'new', tmp_path / 'existing'):
    if workdir.name == 'existing':
      workdir.mkdir()
      (workdir / 'notes.txt').write_text('mine')
    code, output = run_main(workdir, [*flags, f'--config.model.weights={broken}'])
    assert code == 1 and 'Traceback' not in output, output[-3000:]
    assert str(broken) in the_line_with('error:', output)
    assert (sorted(p.name for p in workdir.iterdir()) == ['notes.txt'] if workdir.name ==
            'existing' else not workdir.exists())
  write_json(tmp_path / 'existing' / 'config.json', {'seed': 5, 'phases': {}})  # a stale one
  retry = [*flags, f'--config.model.weights={tiny_run.model.weights}',
           '--config.phases.fine_tune.epochs=1']
  code, output = run_main(tmp_path / 'existing', retry)
  assert code == 0, output[-3000:]
  assert strict_json(tmp_path / 'existing' / 'config.json')['phases']['fine_tune']['epochs'] == 1
  assert (tmp_path / 'existing' / 'notes.txt').read_text() == 'mine'


def test_predict_never_replaces_a_file(tiny_run, finished_run, tmp_path):
  """Each predict writes a new file, named by its source, numbered when the name is taken;
  `--output` names the file, and an existing one is refused, untouched."""
  workdir = copy_of(finished_run, tmp_path)
  inputs = str(Path(tiny_run.data.folder) / 'test' / 'cat')
  written = []
  for _ in range(2):
    code, output = run_main(workdir, finished_run[1], '--mode=predict', f'--inputs={inputs}')
    assert code == 0, output[-3000:]
    written.append(the_line_with('wrote', output).split()[-1])
  assert written == [f'{workdir}/predictions_checkpoint_latest.csv',
                     f'{workdir}/predictions_checkpoint_latest_2.csv']
  first = Path(written[0]).read_text()
  assert Path(written[1]).read_text() == first and len(first.splitlines()) == 7  # header + 6
  chosen = tmp_path / 'mine.csv'
  code, output = run_main(workdir, finished_run[1], '--mode=predict', f'--inputs={inputs}',
                          f'--output={chosen}')
  assert code == 0 and chosen.read_text() == first, output[-3000:]
  chosen.write_text('keep me')
  code, output = run_main(workdir, finished_run[1], '--mode=predict', f'--inputs={inputs}',
                          f'--output={chosen}')
  assert code == 1 and 'exists: predict never replaces a file' in the_line_with('error:', output)
  assert chosen.read_text() == 'keep me'


@pytest.fixture
def signals_raise():
  """`interrupts.raise_on_signals()` in this process, undone after the test."""
  from tlflax import interrupts
  handlers = {number: signal.getsignal(number) for number in interrupts.SIGNALS}
  hook = sys.unraisablehook
  interrupts.raise_on_signals()
  yield
  for number, handler in handlers.items():
    signal.signal(number, handler)
  sys.unraisablehook = hook


def test_a_signal_that_lands_in_a_garbage_collection_callback_is_not_lost(signals_raise):
  """Python drops an exception raised in a gc callback (JAX runs one at every collection):
  the signal is delivered again, to the code that runs next."""
  import gc
  import time

  from tlflax import interrupts

  def signal_in_callback(phase, info):
    if phase == 'start':
      os.kill(os.getpid(), signal.SIGTERM)
      sum(range(100))  # Python code after the signal: its handler runs here, in the callback
  gc.callbacks.append(signal_in_callback)
  try:
    with pytest.raises(interrupts.Interrupted) as raised:
      gc.collect()
      gc.callbacks.remove(signal_in_callback)
      for _ in range(200):
        time.sleep(0.01)
  finally:
    if signal_in_callback in gc.callbacks:
      gc.callbacks.remove(signal_in_callback)
  assert raised.value.signal_name == 'SIGTERM'


def test_a_signal_while_an_epoch_is_saved_waits_for_its_checkpoint(tiny_run, tmp_path, capfd,
                                                                    monkeypatch, signals_raise):
  """A real SIGTERM that arrives as epoch 2's saving starts (before orbax has the checkpoint):
  it is announced, epoch 2 is saved all the same, then the run stops saying so."""
  signalled_while_saving_epoch_2(tiny_run, tmp_path / 'run', monkeypatch, real_signal_first=True)
  assert ('SIGTERM: stopping once the saving of epoch 2 is done (a second signal stops at once)'
          in capfd.readouterr().err)


def test_a_held_block_that_fails_keeps_its_error_and_the_signal_counts_as_handled(
    signals_raise):
  """The block's own error (a full disk, say) is what the run reports; the signal that waited is
  spent, so a later one is a second signal, and none waits to be raised by another block."""
  from tlflax import interrupts
  with pytest.raises(OSError, match='disk full'):
    with interrupts.held('the saving of epoch 1'):
      os.kill(os.getpid(), signal.SIGINT)
      raise OSError('disk full')
  assert interrupts._State.pending is None and interrupts._State.raised
  interrupts.raise_on_signals()  # as a process that carries on would start afresh
  with interrupts.held('the saving of epoch 2'):
    pass  # no signal waits: nothing is raised
  with pytest.raises(interrupts.Interrupted):
    os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_predict_names_its_csv_and_keeps_no_empty_one(tmp_path):
  """Interrupted after a batch, the CSV keeps its rows and the message names it; interrupted
  before any, no CSV (a header alone) is left to block a retry with the same --output."""
  from tlflax import interrupts, predict

  def batches(count):
    for _ in range(count):
      yield [Path('a.jpg')], np.zeros((1, 2, 2, 3), np.float32)
    raise interrupts.Interrupted(signal.SIGINT)
  for count in (1, 0):
    path = tmp_path / f'after_{count}.csv'
    rows = predict._classified(batches(count), 3, lambda x: np.full((len(x), 2), 0.5),
                               ['cat', 'dog'], 4, path)
    with pytest.raises(interrupts.Interrupted) as raised:
      list(rows)
    if count:
      assert raised.value.outcome == f'{path} holds the 1 image(s) classified before'
      assert path.read_text().splitlines()[1].startswith('a.jpg,cat,0.500000')
    else:
      assert raised.value.outcome == 'no image was classified yet, so no CSV was kept'
      assert not path.exists()


def test_predict_with_no_readable_image_is_an_error_and_writes_no_csv(tiny_run, finished_run,
                                                                      tmp_path):
  workdir = copy_of(finished_run, tmp_path)
  inputs = tmp_path / 'broken'
  inputs.mkdir()
  for name in ('a.jpg', 'b.png'):
    (inputs / name).write_bytes(b'not an image')
  code, output = run_main(workdir, finished_run[1], '--mode=predict', f'--inputs={inputs}')
  assert code == 1 and 'Traceback' not in output, output[-3000:]
  assert the_line_with('error:', output).endswith(
      'none of the 2 image(s) could be classified (each skipped one is named above)')
  assert not list(workdir.glob('predictions_*.csv'))
  code, output = run_main(workdir, finished_run[1], '--mode=predict',
                          f'--inputs={tmp_path}/no_such_folder')
  assert code == 1 and the_line_with('error:', output).endswith(
      f'--inputs {tmp_path}/no_such_folder does not exist')
  code, output = run_main(workdir, [], '--mode=predict', f'--model={tmp_path}/no.tflite',
                          f'--inputs={inputs}', config_file=None)
  assert code == 1 and the_line_with('error:', output).endswith(
      f'--model {tmp_path}/no.tflite does not exist')
