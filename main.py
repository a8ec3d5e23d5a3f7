"""Transfer learning with a pretrained ConvNet, in JAX/Flax.

    python main.py --config=configs/cats_dogs.py --workdir=DIR [--config.KEY=VALUE ...]
    python main.py --config=configs/cats_dogs.py --workdir=DIR --mode=evaluate [--checkpoint=best]
    python main.py --config=configs/cats_dogs.py --workdir=DIR --mode=predict --inputs=PATH

Training uses every local device (data parallelism). On several hosts, start the same command on
each, adding --num_processes=N --process_id=I --coordinator_address=HOST:PORT (host 0's address),
or --distributed alone where JAX detects the cluster itself (Slurm, Cloud TPU, ...).
"""
import logging as logging_std
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:variant]).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, history, plots and outputs.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'predict'], 'What to do.')
flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test'],
                  'evaluate: the split to evaluate (per-class report in WORKDIR/evaluation/).')
flags.DEFINE_string('checkpoint', 'latest', 'evaluate, predict: the checkpoint to use: latest (the '
                    'newest that restores), best (by the config\'s best_metric, kept besides the '
                    'latest checkpoints_to_keep) or an epoch number.')
flags.DEFINE_string('inputs', None, 'predict: an image, a folder (recursive) or a glob pattern.')
flags.DEFINE_bool('allow_config_change', False, 'train: continue the workdir\'s run although the '
                  'config differs from the one it was made with (e.g. more epochs in the last '
                  'phase). Without it, a difference stops the run, listing the keys. evaluate: '
                  'evaluate on data settings (seed, data.*) other than the training run\'s.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host runs); '
                  'implied by --num_processes > 1.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0..num_processes-1.')
flags.mark_flags_as_required(['config', 'workdir'])


class _OnlyOrbaxWarnings(logging_std.Filter):
  """Orbax logs every checkpoint step at INFO; keep its warnings, drop the rest."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_OnlyOrbaxWarnings())
  # tf.data runs on the host: keep TensorFlow off any accelerator JAX uses.
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  if FLAGS.distributed or (FLAGS.num_processes or 1) > 1:
    import jax
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from tlflax import evaluation, predict, train
  from tlflax.errors import RunError
  try:
    if FLAGS.mode == 'train':
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)
    elif FLAGS.mode == 'evaluate':
      report = train.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, FLAGS.split,
                                         FLAGS.allow_config_change, FLAGS.checkpoint)
      print(evaluation.format_report(report, FLAGS.split))
      print(f'wrote {os.path.join(FLAGS.workdir, "evaluation", FLAGS.split)}.json and figures')
    else:
      if not FLAGS.inputs:
        raise app.UsageError('--mode=predict needs --inputs=PATH')
      for path, label, probability, _ in predict.predict(FLAGS.config, FLAGS.workdir,
                                                         FLAGS.inputs, FLAGS.checkpoint):
        print(f'{path}\t{label}\t{probability:.4f}')
      print(f'wrote {os.path.join(FLAGS.workdir, "predictions.csv")}')
  except RunError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def parse_flags(argv):
  """absl's parsing, with bad `--config.*` overrides (unknown key, wrong type) as one line."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    unknown = isinstance(e, (AttributeError, KeyError))
    message = f'unknown config key {e} in a --config override' if unknown else str(e)
    print(f'error: {message}'.replace('"', ''), file=sys.stderr)
    print(f'Run {argv[0]} --helpfull for the flags; keys are those of the config file.',
          file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
