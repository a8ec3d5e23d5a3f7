"""Small training runs for tests: synthetic images, calibrated random weights, the CLI."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from keras_reference import random_keras_model, write_published_h5

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import cats_dogs  # noqa: E402


TWO_CLASSES = {'cat': (200, 60, 60), 'dog': (60, 60, 200)}


def make_synthetic_folder(root, per_class=12, size=40, classes=TWO_CLASSES):
  """Visually distinct classes: noise around each class's colour (by default reddish 'cat' and
  bluish 'dog')."""
  rng = np.random.default_rng(0)
  for split, n in (('train', per_class), ('validation', per_class // 2),
                   ('test', per_class // 2)):
    for name, base in classes.items():
      (root / split / name).mkdir(parents=True, exist_ok=True)
      for i in range(n):
        pixels = np.clip(np.array(base) + rng.normal(0, 40, (size, size, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f'{name}.{i}.jpg')
  return root


# The tiny run's settings, as `--config.KEY=VALUE` keys. Its frozen layers run one image at a
# time (`compute.frozen_chunk`), so that the command-line tests go through the chunked steps.
TINY = {'model.backbone_args': {'alpha': 0.35}, 'image_size': 32, 'batch_size': 4,
        'compute.frozen_chunk': 1,
        'phases.feature_extraction.epochs': 1, 'phases.feature_extraction.learning_rate': 1e-3,
        'phases.fine_tune.epochs': 2, 'phases.fine_tune.learning_rate': 1e-4}


def tiny_config(base: Path):
  """Synthetic images and calibrated random alpha-0.35 weights: a run that finishes in seconds."""
  folder = make_synthetic_folder(base / 'images')
  weights = base / 'backbone.h5'
  write_published_h5(weights, random_keras_model('mobilenet_v2', {'alpha': 0.35}, False, 32))
  config = cats_dogs.get_config()
  config.update_from_flattened_dict({**TINY, 'data.folder': str(folder),
                                     'model.weights': str(weights)})
  return config


def run_main(workdir, config_overrides, *extra, wait=True, env=None,
             config_file=ROOT / 'configs' / 'cats_dogs.py'):
  """`python main.py` on `config_file` (None: no --config); (exit code, output), or the process if
  not `wait`."""
  config_flag = [f'--config={config_file}'] if config_file else []
  command = [sys.executable, str(ROOT / 'main.py'), *config_flag, f'--workdir={workdir}',
             *config_overrides, *extra]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=None if env is None else {**os.environ, **env})
  if wait:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output
  return process


def overrides(config):
  """`--config.*` flags for the tiny run, with phase 2 for 3 epochs."""
  settings = {**TINY, 'data.folder': config.data.folder, 'model.weights': config.model.weights,
              'phases.fine_tune.epochs': 3}
  return [f'--config.{key}={value}' for key, value in settings.items()]


def free_port():
  """A TCP port free on 127.0.0.1 (for `jax.distributed`'s coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
