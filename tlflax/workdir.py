"""The workdir as a place to write: made or checked before any work (one-line errors for a path
that is a file or a folder that cannot be written), its saved epochs read from the folder names
orbax gives finished checkpoints, and what a start that saved no epoch made removed again, so
that a corrected retry is a fresh start rather than "a run made with another config"
(`holds_a_run` tells the two apart)."""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import jax
from absl import logging

from tlflax.errors import ConfigError

CHECKPOINTS = 'checkpoints'
RESULTS = 'test_metrics.json'  # written when a run ends


def writable(path, what: str = 'the workdir') -> Path:
  """`path` as a folder this process can write in, made (with its parents) if missing; else
  `ConfigError` saying why not, calling the folder `what`."""
  path = Path(path)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except FileExistsError as e:
    raise ConfigError(f'{what} {path} is a file; name a folder') from e
  except OSError as e:
    raise ConfigError(f'cannot make {what} {path}: {e.strerror}') from e
  try:
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise ConfigError(f'cannot write in {what} {path}: {e.strerror}') from e
  return path


def saved_epochs(path) -> list[int]:
  """The epochs whose checkpoints orbax finished in `path` (a checkpoint being written is in a
  temporary folder with another name)."""
  folder = Path(path) / CHECKPOINTS
  if not folder.is_dir():
    return []
  return sorted(int(entry.name) for entry in folder.iterdir() if entry.name.isdigit())


def holds_a_run(path) -> bool:
  """Whether `path` holds a run: a saved epoch, or a finished run's results (whose checkpoints
  may have been deleted to free space). A history without a finished checkpoint is a start
  killed while its first epoch was being saved."""
  return bool(saved_epochs(path)) or (Path(path) / RESULTS).is_file()


@contextlib.contextmanager
def removed_unless_saved(path, before_removing=lambda: None):
  """Runs the block on the `writable` workdir `path`. If it fails (or is interrupted) before any
  epoch is saved there, the files and folders it made in the workdir go, and the workdir too if
  it made it: a start that saved nothing leaves nothing behind. `before_removing` is called
  first (to wait for checkpoints being written)."""
  path = Path(path)
  new_folder = not path.exists()
  writable(path)
  existed = set(os.listdir(path))
  try:
    yield path
  except BaseException:
    before_removing()
    if jax.process_index() == 0 and not saved_epochs(path):
      _remove_new(path, existed, new_folder)
    raise


def _remove_new(path: Path, existed: set, new_folder: bool):
  made = sorted(set(os.listdir(path)) - existed)
  for name in made:
    entry = path / name
    if entry.is_dir() and not entry.is_symlink():
      shutil.rmtree(entry, ignore_errors=True)
    else:
      entry.unlink(missing_ok=True)
  if new_folder:
    with contextlib.suppress(OSError):
      path.rmdir()
  if made:
    logging.info('No epoch was saved: removed what this start made in %s (%s)', path,
                 ', '.join(made))
