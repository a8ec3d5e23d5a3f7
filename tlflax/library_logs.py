"""What third-party libraries print, kept out of a person's way unless asked for.

The command lines call `hide()` unless `--library_logs` is given: TensorFlow's C++ log lines are
turned off (`TF_CPP_MIN_LOG_LEVEL=3`, where the environment does not set it: its JPEG decoder logs
each damaged image as an ERROR, and tlflax's own warning counts the images it skips),
TensorFlow is imported with stderr discarded (its import-time lines ignore that setting:
tensorflow/tensorflow#100442), and the INFO records that other code than tlflax's logs are
dropped (JAX's "Unable to initialize backend 'tpu'", orbax's line per checkpoint step,
TensorFlow's lines while it writes a SavedModel); their warnings stay. Code that
runs a chatty library call wraps it in `quiet()`, which then discards what the call prints
(the TFLite converter writes its internals straight to the process's stdout and stderr).
"""
import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

from absl import logging as absl_logging

PACKAGE = Path(__file__).resolve().parent  # tlflax/, wherever it is installed
PROJECT = PACKAGE.parent  # in a checkout: main.py, bench/, ...

_hidden = False


def ours(source_file: str) -> bool:
  """Whether a log record comes from tlflax or the project's scripts rather than another
  package (libraries log through absl and `logging` alike, so records are told apart by file)."""
  path = Path(source_file).resolve()
  return path.is_relative_to(PACKAGE) or (path.is_relative_to(PROJECT)
                                          and 'site-packages' not in path.parts)


class _LibraryWarningsOnly(logging.Filter):
  """Drops the records of other code than the project's below WARNING."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or ours(record.pathname)


@contextlib.contextmanager
def _descriptors_discarded(*descriptors):
  """The file descriptors go to /dev/null inside the block (C++ code writes to them directly)."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(fd) for fd in descriptors]
  try:
    with open(os.devnull, 'w') as devnull:
      for fd in descriptors:
        os.dup2(devnull.fileno(), fd)
      yield
  finally:
    for fd, copy in zip(descriptors, saved):
      os.dup2(copy, fd)
      os.close(copy)


def hide():
  """Keeps third-party log lines out of the output from now on (see the module)."""
  global _hidden
  _hidden = True
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  from tlflax.data import decoders
  if decoders.tensorflow_installed():
    with _descriptors_discarded(2):
      import tensorflow  # noqa: F401
  absl_logging.get_absl_handler().addFilter(_LibraryWarningsOnly())


@contextlib.contextmanager
def _log_levels_kept():
  """absl's logger level as it was before the block: TensorFlow's `saved_model.save` sets it to
  WARNING and leaves it there, which hides every later INFO line of the process."""
  logger = logging.getLogger('absl')
  level = logger.level
  try:
    yield
  finally:
    logger.setLevel(level)


@contextlib.contextmanager
def quiet():
  """Runs a block of library calls, keeping absl's log level as it was; after `hide()`, also
  discards what they print (stdout, stderr, Python warnings)."""
  with _log_levels_kept():
    if not _hidden:
      yield
      return
    with _descriptors_discarded(1, 2), warnings.catch_warnings():
      warnings.simplefilter('ignore')
      yield
