"""The tuner's command line (see `tlflax.tune` and docs/tuning.md):

    python -m tlflax.tune --config=CONFIG[:variant] --space=SPACE.py[:variant] --workdir=DIR
        [--trials=N]        trials the study is to have, over all its workers (default 20)
        [--storage=URL]     sqlite:///DIR/study.db by default; journal:PATH, postgresql://...
        [--study=NAME]      the space file's name by default
        [--timeout=S]       start no trial after S seconds
        [--seed=K]          the sampler's seed (trial N's draws depend on K and N)
        [--pruner=median|hyperband|none] [--prune_after=N] [--prune_warmup=N]
        [--report]          only write the report of the study so far
"""
import contextlib
import time
import warnings
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from tlflax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Base config file (configs/*.py[:variant]).',
                                lock_config=True)
flags.DEFINE_string('space', None, 'Space file (configs/spaces/*.py) defining get_space().')
flags.DEFINE_string('workdir', None, "The study's directory: a folder per trial, the report.")
flags.DEFINE_integer('trials', 20, 'Trials the study is to have (all workers together).',
                     lower_bound=1)
flags.DEFINE_string('storage', None, 'Optuna storage: an SQLAlchemy URL or journal:PATH '
                    '(default sqlite:///WORKDIR/study.db).')
flags.DEFINE_string('study', None, 'Study name (default: the space file\'s name).')
flags.DEFINE_float('timeout', None, 'Start no new trial after this many seconds.',
                   lower_bound=0)
flags.DEFINE_integer('seed', 0, "The sampler's seed.")
flags.DEFINE_enum('pruner', 'median', ['median', 'hyperband', 'none'],
                  'Stops unpromising trials after an epoch: median (a trial worse than the '
                  "median of earlier trials at the same epoch), hyperband, or none.")
flags.DEFINE_integer('prune_after', 3, 'Finished trials before the median pruner prunes.',
                     lower_bound=0)
flags.DEFINE_integer('prune_warmup', 1, 'Epochs at the start of each phase that are never '
                     'pruned (a rate that just changed needs them).', lower_bound=0)
flags.DEFINE_bool('report', False, 'Only write the report of the study so far.')
flags.mark_flags_as_required(['config', 'space', 'workdir'])
cli.mark_not_empty('workdir')
cli.mark_not_empty('storage', 'a storage URL')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.distributed or (FLAGS.num_processes or 1) > 1:
    raise app.UsageError('each trial runs in one process: start several tuner workers on one '
                         '--storage instead of --distributed or --num_processes')
  with cli.run_errors_as_one_line('the study is kept: the same command continues it'):
    cli.prepare_process()
    import optuna
    from tlflax import errors
    from tlflax.tune import report, runner, space as space_lib, study as study_lib
    warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = space_lib.load_space(FLAGS.space)
    workdir = Path(FLAGS.workdir)
    file, _, variant = FLAGS['config'].config_filename.partition(':')
    source = report.ConfigSource(file, variant,
                                 config_flags.get_override_values(FLAGS['config']))
    search = runner.Search(FLAGS.config, space, workdir, FLAGS.trials, FLAGS.seed,
                           FLAGS.prune_warmup)
    if FLAGS.report and not (workdir / runner.STUDY_FILE).is_file():
      raise errors.ConfigError(f'--report: {workdir} holds no study yet')
    study = runner.open_search(search, FLAGS.storage, FLAGS.study or space.name, FLAGS.pruner,
                               FLAGS.prune_after)
    start = time.perf_counter()
    try:
      if not FLAGS.report:
        runner.work(search, study, FLAGS.timeout)
    except BaseException:  # interrupted, or stopped by an error: the report of the trials so far
      with contextlib.suppress(Exception):
        report.write(study, workdir, space, source)
      raise
    best = report.write(study, workdir, space, source)
    failed = [t for t in study_lib.counted(study.get_trials(deepcopy=False))
              if t.state.is_finished()]
    if failed and all(t.state.name == 'FAIL' for t in failed):
      raise errors.ConfigError(f'all {len(failed)} finished trials failed; trial '
                               f"{failed[0].number}: {failed[0].user_attrs.get('error')}")
    summary = (f"best: trial {best['trial']}, {space.objective.describe()} {best['value']:.4g}; "
               f'{workdir}/best_config.py trains it again' if best else 'no trial complete yet')
    print(f'tuner done in {time.perf_counter() - start:.0f} s; {summary}; see '
          f'{workdir}/report.html (and results.md)', flush=True)


if __name__ == '__main__':
  cli.run(main)
