"""Shared fixtures: the shared data folder, and a tiny training run's config."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  # One persistent compilation cache for the session and the CLI runs it starts: the tiny recipe's
  # runs compile the same programs again and again.
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='tlflax-tests-jax-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)

import pytest

SHARED = Path(__file__).resolve().parents[2] / 'shared'


@pytest.fixture(scope='session')
def shared_dir():
  """`../shared` beside the project root; tests that need it skip when it is absent, except in CI
  (CI=true), where it must be there and its absence fails them."""
  if not SHARED.is_dir():
    message = f'shared data folder {SHARED} is absent (see README, "Tests")'
    if os.environ.get('CI', '').lower() == 'true':
      pytest.fail(f'{message}; CI must run the real-data tests')
    pytest.skip(message)
  return SHARED


@pytest.fixture(scope='session')
def tflite_path(shared_dir):
  path = shared_dir / 'weights' / 'mobilenet_v2_1.0_224_ptq.tflite'
  if not path.is_file():
    pytest.fail(f'{path} is absent from the shared folder')
  return path


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
  """The config of a tiny run on synthetic images (see `runs.tiny_config`)."""
  from runs import tiny_config
  return tiny_config(tmp_path_factory.mktemp('tiny'))


def real_run(config_name: str, photos: str, shared_dir, tflite_path, tmp_path_factory):
  """configs/<config_name>.py:local,cached on the shared `photos` folder with ImageNet weights
  from the shared TFLite file, trained: (config, workdir, `TrainResult`)."""
  import importlib

  from runs import ROOT  # noqa: F401  (puts the project root on sys.path for configs/)
  from tlflax.train import train_and_evaluate
  config = importlib.import_module(f'configs.{config_name}').get_config('local,cached')
  config.data.folder = str(shared_dir / 'data' / photos)
  config.model.weights = str(tflite_path)
  workdir = tmp_path_factory.mktemp(f'real_{config_name}') / 'run'
  return config, workdir, train_and_evaluate(config, workdir)


@pytest.fixture(scope='session')
def real_cats_dogs_run(shared_dir, tflite_path, tmp_path_factory):
  """configs/cats_dogs.py:local,cached trained once for the session (the shared mini set, 2+2
  epochs at 160x160 on cached activations)."""
  return real_run('cats_dogs', 'cats_vs_dogs_mini', shared_dir, tflite_path, tmp_path_factory)


@pytest.fixture(scope='session')
def real_flowers_run(shared_dir, tflite_path, tmp_path_factory):
  """configs/flowers.py:local,cached trained once for the session (the shared flower photos, 10+10
  epochs at 160x160 on cached activations)."""
  return real_run('flowers', 'flowers_mini', shared_dir, tflite_path, tmp_path_factory)


@pytest.fixture
def float32_matmuls():
  """Full float32 matmuls and convolutions (`compute.matmul_precision=highest`) for the tests that
  compare with Keras or NumPy within 1e-4: by default NVIDIA GPUs compute them in TF32 (which
  moved the real backbone's pooled features by up to 3.5e-2 on an H200), and TPUs in bfloat16
  passes. No effect on CPUs."""
  import jax
  with jax.default_matmul_precision('highest'):
    yield


@pytest.fixture(scope='session')
def browser():
  """Headless Chromium (`tests/browser.py`), started once; skips where none is installed, fails
  in CI."""
  from browser import Browser
  chromium = Browser()
  yield chromium
  chromium.close()
