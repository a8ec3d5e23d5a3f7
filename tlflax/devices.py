"""What a run computes on: the JAX platform and devices (logged, and checked against
`compute.platform`), the float32 matmul precision (`compute.matmul_precision`), where compiled
programs are kept between runs (`compute.compilation_cache_dir`), how long each program took to
compile (`log_compilations`), and a warning when an NVIDIA GPU sits idle because JAX was installed
for CPUs only."""
import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import jax
from absl import logging

from tlflax.errors import ConfigError

PLATFORMS = ('', 'cpu', 'gpu', 'tpu')  # '' runs anywhere; else JAX's name of the platform
MATMUL_PRECISIONS = ('default', 'high', 'highest')
GPU_UNUSED = ('An NVIDIA GPU is visible (nvidia-smi) but JAX has only CPU devices, so this runs on '
              'the CPU: install JAX for CUDA with `TLFLAX_PLATFORM=cuda scripts/setup.sh` (or '
              '`pip install -e ".[cuda12]"`)')
GPU_FAILED = ('An NVIDIA GPU is visible (nvidia-smi) and JAX\'s CUDA plugin is installed, but JAX '
              'has only CPU devices, so this runs on the CPU: the plugin did not start; check '
              'that the driver supports its CUDA version (nvidia-smi shows the newest it does)')
CUDA_PLUGINS = ('jax-cuda12-plugin', 'jax-cuda13-plugin')


def nvidia_gpu_visible() -> bool:
  """Whether `nvidia-smi -L` lists a GPU."""
  command = shutil.which('nvidia-smi')
  if command is None:
    return False
  try:
    listing = subprocess.run([command, '-L'], capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return listing.returncode == 0 and 'GPU' in listing.stdout


def describe(batch_size: int) -> str:
  """One line: platform, device kind and count, processes, images per device per step."""
  devices = jax.devices()
  return (f'JAX on {devices[0].platform} ({devices[0].device_kind}): {len(devices)} devices, '
          f'{jax.process_count()} processes, {batch_size / len(devices):g} images per device '
          'per step')


def idle_gpu_warning() -> str:
  """Why JAX runs on CPUs beside an NVIDIA GPU (`GPU_UNUSED` or `GPU_FAILED`), or '' when it does
  not, or when the CPU was chosen (`JAX_PLATFORMS` without cuda or gpu)."""
  chosen = _chosen_platforms()
  if jax.default_backend() != 'cpu' or (chosen and not {'cuda', 'gpu'} & set(chosen.split(','))):
    return ''
  if not nvidia_gpu_visible():
    return ''
  return GPU_FAILED if any(map(_installed, CUDA_PLUGINS)) else GPU_UNUSED


def _chosen_platforms() -> str:
  """JAX_PLATFORMS (or the jax_platforms setting): the platforms a user restricted JAX to."""
  return jax.config.jax_platforms or ''


def _installed(package: str) -> bool:
  try:
    importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return False
  return True


def compilation_cache_dir(setting: str) -> Optional[Path]:
  """The folder for JAX's persistent compilation cache: `setting`, or for 'auto'
  `$JAX_COMPILATION_CACHE_DIR`, else `tlflax/jax` in the user's cache directory
  (`$XDG_CACHE_HOME`, default `~/.cache`); None for 'none'."""
  if setting == 'none':
    return None
  if setting != 'auto':
    return Path(setting).expanduser()
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return Path(os.environ['JAX_COMPILATION_CACHE_DIR'])
  return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'tlflax' / 'jax'


def _use_compilation_cache(setting: str) -> Optional[Path]:
  """Points JAX's persistent compilation cache at `compilation_cache_dir(setting)`; returns it."""
  folder = compilation_cache_dir(setting)
  if folder is not None:
    try:
      folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise ConfigError(f'compute.compilation_cache_dir: cannot create {folder} ({e}); name '
                        "another folder or 'none'") from e
  jax.config.update('jax_compilation_cache_dir', None if folder is None else str(folder))
  return folder


COMPILE_LOG_SECONDS = 1.0  # compilations that took at least this long are logged
_compilations_logged = False


def _log_compilation(event: str, seconds: float, **details):
  if event == '/jax/core/compile/backend_compile_duration' and seconds >= COMPILE_LOG_SECONDS:
    logging.info('Compiled %s in %.1f s (XLA; a hit in the compilation cache takes far less)',
                 details.get('fun_name', 'a program'), seconds)


def log_compilations():
  """From now on, logs each XLA compilation of at least `COMPILE_LOG_SECONDS`, with the name of
  the jitted function (JAX's monitoring events)."""
  global _compilations_logged
  if not _compilations_logged:
    jax.monitoring.register_event_duration_secs_listener(_log_compilation)
    _compilations_logged = True


def prepare(compute, batch_size: int, enforce_platform: bool = True):
  """Checks the platform against `compute.platform` (if `enforce_platform`: training, not the
  use of a trained model elsewhere), sets `compute.matmul_precision` and the compilation cache,
  logs `describe`, and warns when JAX runs on CPUs beside an NVIDIA GPU
  (`idle_gpu_warning`)."""
  platform = jax.default_backend()
  if enforce_platform and compute.platform and platform != compute.platform:
    raise ConfigError(f'compute.platform={compute.platform}, but JAX runs on {platform} '
                      f'({jax.devices()[0].device_kind}); install JAX for {compute.platform} '
                      '(README, "GPUs and TPUs") or drop the setting')
  warning = idle_gpu_warning()
  if warning:
    logging.warning(warning)
  jax.config.update('jax_default_matmul_precision',  # None: JAX's own default, as if unset
                    None if compute.matmul_precision == 'default' else compute.matmul_precision)
  cache = _use_compilation_cache(compute.compilation_cache_dir)
  log_compilations()
  logging.info('%s; float32 matmul precision %s; compilation cache %s', describe(batch_size),
               compute.matmul_precision, cache)
