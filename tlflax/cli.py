"""What the command lines (`main.py`, `python -m tlflax.sweep`) share: process set-up, quiet
third-party logs, and one line (no traceback) for bad flags, for `RunError`s and for Ctrl-C or
SIGTERM; and the multi-host flags."""
import contextlib
import functools
import os
import sys
import traceback
from typing import Optional

from absl import app, flags

from tlflax import interrupts, library_logs

flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (multi-host runs); '
                  'implied by --num_processes > 1.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: HOST:PORT of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0..num_processes-1.')
flags.DEFINE_bool('library_logs', False, 'Also show the log lines of TensorFlow, JAX, orbax and '
                  'the TFLite converter, which are hidden by default (`tlflax.library_logs`).')
FLAGS = flags.FLAGS

def _wants_library_logs(argv) -> bool:
  """--library_logs in `argv`, read before the flags are parsed (parsing the config file imports
  TensorFlow, whose import prints the lines to hide)."""
  early = flags.FlagValues()
  flags.DEFINE_bool('library_logs', False, '', flag_values=early)
  try:
    early(list(argv), known_only=True)
  except flags.Error:  # a bad value: the real parsing says so
    return False
  return early.library_logs


def prepare_process():
  """Keep TensorFlow (tf.data runs on the host) off any accelerator JAX uses, and join the other
  processes of a multi-host run when the flags say so."""
  from tlflax.data import decoders
  if decoders.tensorflow_installed():
    import tensorflow as tf
    tf.config.set_visible_devices([], 'GPU')
  if FLAGS.distributed or (FLAGS.num_processes or 1) > 1:
    import jax
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)


def mark_not_empty(name: str, what: str = 'a folder'):
  """An empty `--name=` (a shell variable that was not set, say) is a usage error, not the
  current folder or the flag's default."""
  flags.register_validator(name, lambda value: value is None or bool(value.strip()),
                           message=f'--{name} is empty: it names {what}')


def run(main):
  """`app.run(main)` with `parse_flags`, and an `app.UsageError` that `main` raises (flags that
  do not go together, say) as one line and status 2, as for a bad flag, not the whole help."""
  @functools.wraps(main)
  def main_with_usage_errors_as_one_line(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      _exit_with(f'{e}. Run {_program(argv)} --helpfull for the flags.', 2)
  app.run(main_with_usage_errors_as_one_line, flags_parser=parse_flags)


def _program(argv) -> str:
  """How the command was started: `main.py`, or `python -m tlflax.sweep`."""
  spec = getattr(sys.modules['__main__'], '__spec__', None)
  if spec is not None and spec.name.endswith('.__main__'):
    return f'python -m {spec.name.removesuffix(".__main__")}'
  return os.path.basename(argv[0])


def _exit_with(message: str, status: int):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def _end_interrupted(error: interrupts.Interrupted, outcome: str):
  print(error.message(outcome), file=sys.stderr, flush=True)
  interrupts.end_by(error)


@contextlib.contextmanager
def run_errors_as_one_line(interrupted_outcome: str = 'nothing was changed'):
  """A `RunError` (a mistake the user can act on) ends the process with one line and status 1;
  Ctrl-C or SIGTERM with one line (`interrupts.Interrupted.message`, ending in
  `interrupted_outcome` where the code did not say what it kept), by the signal."""
  from tlflax.errors import RunError
  try:
    yield
  except RunError as e:
    _exit_with(str(e), 1)
  except interrupts.Interrupted as e:
    _end_interrupted(e, interrupted_outcome)


def _config_file(argv) -> Optional[str]:
  """The config file's absolute path, from `--config=PATH[:variant]` or `--config PATH...`."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return os.path.abspath(arg.split('=', 1)[1].split(':')[0])
    if arg == '--config' and i + 1 < len(argv):
      return os.path.abspath(argv[i + 1].split(':')[0])
  return None


def _config_error(error: Exception, argv) -> str:
  """The one-line form of an error ml_collections raised for `--config` or an override, or of
  one the config file's own code raised."""
  path = _config_file(argv)
  if isinstance(error, SyntaxError):  # the config file does not parse
    return f'--config: {error.filename}, line {error.lineno}: {error.msg}'
  in_file = [frame for frame in traceback.extract_tb(error.__traceback__)
             if path and os.path.abspath(frame.filename) == path]
  if in_file:
    return f'--config: {path}, line {in_file[-1].lineno}: {type(error).__name__}: {error}'
  if isinstance(error, AttributeError) and "attribute 'get_config'" in str(error):
    return f'--config={path}: the file defines no get_config() (see configs/cats_dogs.py)'
  if isinstance(error, (AttributeError, KeyError)):  # an unknown key: "'key'\nDid you mean ..."
    inner = error.args[0] if error.args else error
    text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
    key, _, hint = str(text).partition('\n')
    key = key.strip('\'"')
    given = [a.split('=')[0] for a in argv if a.startswith('--config.')
             and key in a.split('=')[0].split('.')]
    where = f'{given[0]}: ' if given else ''
    hint = hint.replace('"', "'").replace('Did you mean', 'did you mean')
    return (f'{where}unknown config key {key!r}' + (f' ({hint})' if hint else '')
            + '; the keys are those of the config file (tlflax.config.defaults)')
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith('Traceback') for line in lines):  # the config file raised: its error
    return f"{lines[0].split(': Error whilst')[0].replace('flag ', '')}: {lines[-1]}"
  return f'--config: {lines[-1]}' if isinstance(error, OSError) else ' '.join(lines)


def parse_flags(argv):
  """absl's parsing, made ready for a long run first (Ctrl-C and SIGTERM as `Interrupted`,
  quiet libraries), with a bad `--config` (a missing file, a variant the file refuses) or bad
  `--config.*` override (unknown key, wrong type) as one line and status 2."""
  interrupts.raise_on_signals()
  try:
    if not _wants_library_logs(argv):
      library_logs.hide()
    parsed = FLAGS(argv)
    if 'config' in FLAGS and FLAGS.config is not None:
      FLAGS.config.keys()  # a config file that failed to load raises on any use
    elif 'config' in FLAGS and FLAGS['config'].present:
      raise ValueError(f'--config={_config_file(argv[1:])}: get_config() returned None (it must '
                       'return the config, see configs/cats_dogs.py)')
    return parsed
  except Exception as e:  # absl and ml_collections raise many kinds, and so may a config file
    _exit_with(f'{_config_error(e, argv[1:])}. Run {_program(argv)} --helpfull for the flags.',
               2)
  except interrupts.Interrupted as e:
    _end_interrupted(e, 'nothing was started')
