"""What runs where: platform checks, the idle-GPU warning, matmul precision, per-platform set-up."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from runs import ROOT
from tlflax import devices
from tlflax.config import defaults
from tlflax.errors import ConfigError
from tlflax.train import check_config


def fake_nvidia_smi(folder, listing: str, cuda: str = '12.8', status: int = 0):
  """An `nvidia-smi` on PATH that lists `listing` (`-L`, exiting with `status`) and reports a
  driver for `cuda` (or, for an empty `cuda`, fails)."""
  script = folder / 'nvidia-smi'
  report = (f'echo "| NVIDIA-SMI 580.1   Driver Version: 580.1   CUDA Version: {cuda} |"'
            if cuda else 'exit 9')
  script.write_text('#!/bin/sh\n'
                    f'if [ "$1" = -L ]; then echo "{listing}"; exit {status}; fi\n'
                    f'{report}\n')
  script.chmod(0o755)
  return f'{folder}{os.pathsep}{os.environ["PATH"]}'


def test_a_gpu_is_detected_from_nvidia_smi(tmp_path, monkeypatch):
  monkeypatch.setenv('PATH', str(tmp_path))  # no nvidia-smi at all
  assert not devices.nvidia_gpu_visible()
  monkeypatch.setenv('PATH', fake_nvidia_smi(tmp_path, 'GPU 0: NVIDIA H100 (UUID: GPU-1)'))
  assert devices.nvidia_gpu_visible()
  monkeypatch.setenv('PATH', fake_nvidia_smi(tmp_path, 'No devices were found', status=6))
  assert not devices.nvidia_gpu_visible()


@pytest.fixture
def jax_on_cpu_beside_a_gpu(monkeypatch):
  """JAX on CPUs (whatever this machine has), JAX_PLATFORMS unset, nvidia-smi listing a GPU."""
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  monkeypatch.setattr(devices, '_chosen_platforms', lambda: '')
  monkeypatch.setattr(devices, 'nvidia_gpu_visible', lambda: True)
  monkeypatch.setattr(devices, '_installed', lambda package: False)


def test_cpu_jax_beside_a_gpu_warns_in_one_line_with_the_fix(jax_on_cpu_beside_a_gpu, monkeypatch,
                                                            caplog):
  compute = defaults().compute
  with caplog.at_level('WARNING'):
    devices.prepare(compute, 32)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert warnings == [devices.GPU_UNUSED] and 'TLFLAX_PLATFORM=cuda scripts/setup.sh' in warnings[0]
  monkeypatch.setattr(devices, '_installed', lambda package: package == 'jax-cuda12-plugin')
  assert devices.idle_gpu_warning() == devices.GPU_FAILED  # installed, but it did not start
  monkeypatch.setattr(devices, '_chosen_platforms', lambda: 'cpu')  # the CPU, chosen
  assert devices.idle_gpu_warning() == ''
  monkeypatch.setattr(devices, '_chosen_platforms', lambda: '')
  monkeypatch.setattr(devices, 'nvidia_gpu_visible', lambda: False)
  assert devices.idle_gpu_warning() == ''


def test_the_start_line_names_platform_devices_processes_and_batch():
  device = jax.devices()[0]
  count = jax.device_count()  # the line every start logs (the CLI tests read it from the log)
  assert devices.describe(32) == (f'JAX on {device.platform} ({device.device_kind}): {count} '
                                  f'devices, 1 processes, {32 / count:g} images per device per '
                                  'step')


def test_compute_platform_refuses_another_platform_in_training_only():
  config = defaults()
  here = jax.default_backend()
  config.compute.platform = 'tpu' if here != 'tpu' else 'cpu'
  with pytest.raises(ConfigError, match=f'compute.platform={config.compute.platform}, but JAX '
                                        f'runs on {here}'):
    devices.prepare(config.compute, 32)
  devices.prepare(config.compute, 32, enforce_platform=False)  # a trained model, used elsewhere
  for key, value in (('platform', 'cuda'), ('matmul_precision', 'tf32')):
    config = defaults()
    config.compute[key] = value
    with pytest.raises(ConfigError, match=f'compute.{key} must be one of'):
      check_config(config)


def test_matmul_precision_reaches_the_compiled_programs():
  config = defaults()
  a = jnp.ones((4, 4))

  def lowered():
    return jax.jit(jnp.dot).lower(a, a).as_text()
  try:
    config.compute.matmul_precision = 'highest'
    devices.prepare(config.compute, 32)
    assert 'precision = [HIGHEST, HIGHEST]' in lowered()
  finally:
    config.compute.matmul_precision = 'default'
    devices.prepare(config.compute, 32)
  assert 'HIGHEST' not in lowered()


def setup_dry_run(env_path: str, mode: str = 'print', **env) -> subprocess.CompletedProcess:
  """scripts/setup.sh with TLFLAX_SETUP_DRY_RUN=`mode` on this test's virtual environment."""
  return subprocess.run(
      [str(ROOT / 'scripts' / 'setup.sh')], capture_output=True, text=True, timeout=600,
      env={**os.environ, 'PATH': env_path, 'TLFLAX_SETUP_DRY_RUN': mode,
           'TLFLAX_VENV': sys.prefix, **env})


@pytest.mark.parametrize('platform, driver_cuda, extra', [
    ('', '12.8', 'cuda12'),  # detected from nvidia-smi
    ('cuda', '13.0', 'cuda13'), ('cuda12', '13.0', 'cuda12'),
    ('cuda', '', 'cuda12')])  # no working nvidia-smi (e.g. a login node): the older CUDA
def test_setup_picks_the_cuda_extra(tmp_path, platform, driver_cuda, extra):
  """The platform resolution of scripts/setup.sh (printed before pip runs)."""
  path = fake_nvidia_smi(tmp_path, 'GPU 0: NVIDIA H100 (UUID: GPU-1)', driver_cuda)
  result = setup_dry_run(path, TLFLAX_PLATFORM=platform)
  assert result.stdout.startswith(f'TLFLAX_PLATFORM={extra}: pip install -e .[test,{extra}]\n')


def test_setup_without_a_gpu_installs_for_cpus(tmp_path):
  result = setup_dry_run(fake_nvidia_smi(tmp_path, 'No devices were found', status=6),
                         TLFLAX_PLATFORM='')
  assert result.stdout.startswith('TLFLAX_PLATFORM=cpu: pip install -e .[test]\n')


def test_setup_resolves_jaxs_cuda_extra_with_pip():
  """pip resolves the cuda12 extra to JAX's CUDA plugin (a dry run: it needs the package index,
  but no GPU, and installs nothing)."""
  result = setup_dry_run(os.environ['PATH'], '1', TLFLAX_PLATFORM='cuda12')
  if result.returncode and os.environ.get('CI', '').lower() != 'true':
    pytest.skip(f'pip could not resolve (no package index?): {result.stderr[-300:]}')
  assert result.returncode == 0, result.stderr[-2000:]
  would_install = [line for line in result.stdout.splitlines()
                   if line.startswith('Would install')]
  assert would_install and f'jax-cuda12-plugin-{jax.__version__}' in would_install[0]


def test_setup_refuses_an_unknown_platform():
  result = setup_dry_run(os.environ['PATH'], TLFLAX_PLATFORM='rocm')
  assert result.returncode == 2 and 'TLFLAX_PLATFORM must be cpu, cuda' in result.stderr
