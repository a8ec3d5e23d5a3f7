"""Run tracking: TensorBoard scalars and images, and a record of what reproduces a run.

`Tracker` writes `WORKDIR/tensorboard/` through `clu.metric_writers` (process 0 only; the other
processes write nothing): per epoch, keyed by the global step at its end, the training and
validation metrics under `train/` and `val/`, the global epoch and the phase's index; per step
`train/learning_rate`; at the end the learning curves and prediction grid. `tensorboard
--logdir WORKDIR` shows them. clu writes events with TensorFlow: where it is not installed, no
events are written (the log says so; history.json holds the same numbers). `record_environment`
appends to `WORKDIR/environment.json` what each start of the run ran on: package versions, the
code's git commit, devices and processes.
"""
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from absl import logging
from PIL import Image

from tlflax import reports
from tlflax.data import decoders

PACKAGES = ('tlflax', 'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-cpu',
            'tensorflow', 'tensorflow-datasets', 'ml-collections', 'clu', 'numpy', 'keras')
# history records' keys, and the scalar names they are written under
SCALARS = {'loss': 'train/loss', 'accuracy': 'train/accuracy',
           'images_per_second': 'train/images_per_second', 'learning_rate': 'train/learning_rate',
           'val_loss': 'val/loss', 'val_accuracy': 'val/accuracy',
           'val_top5_accuracy': 'val/top5_accuracy',
           'val_images_per_second': 'val/images_per_second'}


class _NoEvents:
  """A writer that writes nothing (processes other than 0, or no TensorFlow)."""

  def write_scalars(self, step, scalars):
    pass

  def write_images(self, step, images):
    pass

  def flush(self):
    pass

  def close(self):
    pass


class Tracker:
  """TensorBoard writer of one run (a no-op on processes other than 0)."""

  def __init__(self, workdir: Path, primary: bool):
    self.writer = _NoEvents()
    if primary and decoders.tensorflow_installed():
      from clu import metric_writers
      self.writer = metric_writers.SummaryWriter(str(Path(workdir) / 'tensorboard'))
    elif primary:
      logging.info('No TensorBoard events: clu writes them with TensorFlow, which is not '
                   'installed (history.json holds the same numbers)')

  def learning_rates(self, first_step: int, rates):
    """`rates[i]`: the learning rate of global step `first_step + i` (1-based: the step count
    after it)."""
    for i, rate in enumerate(rates):
      self.writer.write_scalars(first_step + i, {SCALARS['learning_rate']: float(rate)})

  def epoch(self, step: int, record: dict, phase_index: int):
    """An epoch's history `record` at global step `step` (None values are left out)."""
    scalars = {name: record[key] for key, name in SCALARS.items()
               if key != 'learning_rate' and record.get(key) is not None}
    self.writer.write_scalars(step, {**scalars, 'epoch': record['epoch'], 'phase': phase_index})
    self.writer.flush()

  def images(self, step: int, paths: dict):
    """PNG files `{name: path}` as TensorBoard images."""
    self.writer.write_images(step, {name: np.asarray(Image.open(path).convert('RGB'))
                                    for name, path in paths.items() if Path(path).is_file()})

  def close(self):
    self.writer.close()


def package_version(package: str):
  """The installed version of `package`, or None."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def git_commit(directory: Path):
  """{'commit', 'dirty'} of the git checkout holding `directory`, or None outside one."""
  def git(*args):
    return subprocess.run(['git', '-C', str(directory), *args], capture_output=True, text=True,
                          timeout=10)
  try:
    head = git('rev-parse', 'HEAD')
    if head.returncode:
      return None
    status = git('status', '--porcelain')
  except (OSError, subprocess.TimeoutExpired):
    return None
  return {'commit': head.stdout.strip(), 'dirty': bool(status.stdout.strip())}


def environment() -> dict:
  """What this process runs on and with."""
  devices = jax.devices()
  return {
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'command': sys.argv,
      'cwd': os.getcwd(),
      'python': platform.python_version(),
      'packages': {name: v for name in PACKAGES if (v := package_version(name)) is not None},
      'code': git_commit(Path(__file__).resolve().parent),
      'platform': devices[0].platform,
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(),
      'host': platform.node(),
  }


def record_environment(workdir: Path) -> dict:
  """Appends this start's `environment()` to WORKDIR/environment.json (a list: one entry per
  start of the run, resumes included) and returns it."""
  path = Path(workdir) / 'environment.json'
  starts = []
  if path.is_file():
    try:
      starts = json.loads(path.read_text())
    except ValueError:
      kept = path.with_name('environment.unreadable.json')
      os.replace(path, kept)
      logging.warning('%s is not JSON: moved to %s, starting a new record', path, kept)
  record = environment()
  reports.write_json(path, [*starts, record])
  return record
