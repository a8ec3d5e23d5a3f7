"""How the package is laid out: what importing a part of it loads."""
import subprocess
import sys

from runs import ROOT


def test_steps_optim_and_models_load_neither_tensorflow_nor_tfds():
  code = ('import sys, tlflax.steps, tlflax.optim, tlflax.models; '
          "loaded = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          'assert not loaded, loaded')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
