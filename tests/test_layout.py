"""How the package is laid out: what importing a part of it loads."""
import subprocess
import sys

from runs import ROOT


def test_steps_optim_and_backbones_load_neither_tensorflow_nor_tfds():
  code = ('import sys, tlflax.steps, tlflax.optim, tlflax.param_groups, tlflax.backbones; '
          "loaded = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          'assert not loaded, loaded')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]


def test_config_keys_are_checked_against_the_defaults_alone(monkeypatch):
  """No hand-kept schema: a key added to `defaults()` is at once required and type-checked, and a
  misspelt key anywhere is unknown, named."""
  import pytest
  from tlflax import config as config_lib
  from tlflax.errors import ConfigError
  from tlflax.train import check_config
  user = config_lib.defaults()
  original = config_lib.defaults

  def with_new_key():
    config = original()
    config.data.new_key = 3
    return config
  monkeypatch.setattr(config_lib, 'defaults', with_new_key)
  with pytest.raises(ConfigError, match='config has no data.new_key'):
    check_config(user)
  user.data.new_key = 'three'
  with pytest.raises(ConfigError, match="config key 'data.new_key' must be int, got 'three'"):
    check_config(user)
  del user.data['new_key']  # a ConfigDict keeps a field's type: set it afresh
  user.data.new_key = 4
  check_config(user)
  user.compute.prefetchh = 2
  with pytest.raises(ConfigError, match="unknown config key 'compute.prefetchh'"):
    check_config(user)


def test_a_misspelt_key_in_a_config_file_fails_naming_it(tmp_path):
  from runs import run_main
  config_file = tmp_path / 'mine.py'
  config_file.write_text('from configs.cats_dogs import get_config as tutorial\n\n\n'
                         'def get_config():\n'
                         '  config = tutorial()\n'
                         '  config.data.flipp = False\n'
                         '  return config\n')
  code, output = run_main(tmp_path / 'w', [], config_file=config_file)
  assert code == 1 and "unknown config key 'data.flipp'" in output, output[-2000:]
  assert 'Traceback' not in output


def test_a_config_file_can_register_an_augmentation_op(tiny_run, tmp_path):
  """docs/data.md's recipe: an op defined and registered in a config file, named in
  data.augment_ops, trains through main.py."""
  from runs import overrides, run_main
  config_file = tmp_path / 'brightness.py'
  config_file.write_text(
      'import jax\n'
      'from configs.cats_dogs import get_config as tutorial\n'
      'from tlflax.data import augment\n\n\n'
      "@augment.register_jax('brightness')\n"
      'def brightness(images, key, delta):\n'
      '  shift = jax.random.uniform(key, (len(images), 1, 1, 1), minval=-delta, maxval=delta)\n'
      '  return images + 255 * shift\n\n\n'
      "def get_config(variant=''):\n"
      '  config = tutorial(variant)\n'
      "  config.data.augment_ops = 'brightness(0.1)'\n"
      '  return config\n')
  flags = [*overrides(tiny_run), '--config.phases.fine_tune.epochs=0']
  code, output = run_main(tmp_path / 'w', flags, config_file=config_file)
  assert code == 0, output[-3000:]
  assert 'kept in device memory' in output  # the op's JAX form ran on the device
  assert '"augment_ops": "brightness(0.1)"' in (tmp_path / 'w' / 'config.json').read_text()
