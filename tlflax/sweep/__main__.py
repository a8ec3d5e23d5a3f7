"""The sweep command line (see `tlflax.sweep`):

    python -m tlflax.sweep --config=CONFIG[:variant] --sweep=SWEEP.py --workdir=DIR [--config.K=V]
        [--list]          print the trials (index, folder, overrides) and exit
        [--trial=K]       run only trial K (0-based: a scheduler's array index)
        [--shared_only]   train only the first phases that trials share (before a --trial array)
        [--report]        only write the report of the finished trials
        [--noshare]       train every trial's first phase itself (no sharing)
"""
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from tlflax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Base config file (configs/*.py[:variant]).',
                                lock_config=True)
flags.DEFINE_string('sweep', None, 'Sweep file (configs/sweeps/*.py) defining get_trials().')
flags.DEFINE_string('workdir', None, 'The sweep\'s directory: one folder per trial, the report.')
flags.DEFINE_bool('list', False, 'Print the trials and exit.')
flags.DEFINE_integer('trial', None, 'Run only this trial (0-based index, as --list shows).')
flags.DEFINE_bool('shared_only', False, 'Train only the shared first phases.')
flags.DEFINE_bool('report', False, 'Only collect the finished trials into the report.')
flags.DEFINE_bool('share', True, 'Train a first phase once for the trials that agree on it.')
flags.mark_flags_as_required(['config', 'sweep', 'workdir'])
cli.mark_not_empty('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  chosen = [name for name in ('list', 'trial', 'shared_only', 'report') if FLAGS[name].present]
  if len(chosen) > 1:
    raise app.UsageError(f'--{chosen[0]} and --{chosen[1]} do not go together')
  if FLAGS.shared_only and not FLAGS.share:
    raise app.UsageError('--shared_only and --noshare do not go together')
  with cli.run_errors_as_one_line('the same command resumes the sweep'):
    cli.prepare_process()
    from tlflax.sweep import runner, trials
    overrides = trials.load_trials(FLAGS.sweep)
    if FLAGS.list:
      for trial in runner.plan(FLAGS.config, overrides, FLAGS.share):
        shared = f'  (first phase shared: {trial.shared})' if trial.shared else ''
        print(f'{trial.index}\t{trial.name}\t{trial.overrides}{shared}')
    elif FLAGS.report:
      runner.write_report(Path(FLAGS.workdir),
                          runner.plan(FLAGS.config, overrides, FLAGS.share))
    elif FLAGS.shared_only:
      for folder in runner.train_shared_phases(FLAGS.config, overrides, FLAGS.workdir):
        print(f'shared phase ready: {folder}')
    else:
      start = time.perf_counter()
      runner.run(FLAGS.config, overrides, FLAGS.workdir, FLAGS.trial, FLAGS.share)
      print(f'sweep command done in {time.perf_counter() - start:.0f} s; '
            f'see {FLAGS.workdir}/report.html (and results.md)')


if __name__ == '__main__':
  cli.run(main)
