"""What the command lines (`main.py`, `python -m tlflax.sweep`) share: process set-up, one-line
errors for bad flags and for `RunError`s, and the multi-host flags."""
import contextlib
import logging as logging_std
import sys

from absl import flags, logging

flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host runs); '
                  'implied by --num_processes > 1.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0..num_processes-1.')
FLAGS = flags.FLAGS


class _OnlyOrbaxWarnings(logging_std.Filter):
  """Orbax logs every checkpoint step at INFO; keep its warnings, drop the rest."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or 'orbax' not in record.pathname


def prepare_process():
  """Quiet orbax's INFO logs, keep TensorFlow (tf.data runs on the host) off any accelerator JAX
  uses, and join the other processes of a multi-host run when the flags say so."""
  logging.get_absl_handler().addFilter(_OnlyOrbaxWarnings())
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  if FLAGS.distributed or (FLAGS.num_processes or 1) > 1:
    import jax
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


@contextlib.contextmanager
def run_errors_as_one_line():
  """A `RunError` (a mistake the user can act on) ends the process with one line and status 1."""
  from tlflax.errors import RunError
  try:
    yield
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
