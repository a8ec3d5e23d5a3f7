"""The best trial of the study 'fine_tune': trial 0, best validation accuracy of the last phase 0.9.

    python main.py --config={this file} --workdir=DIR

trains it again, run from the folder the tuner ran in (BASE_FILE is relative to it); written by
`python -m tlflax.tune`.
"""
import importlib.util

BASE_FILE = 'configs/flowers.py'
VARIANT = 'local'
# the tuner's --config.* flags
OVERRIDES = {}
# trial 0's samples
VALUES = {
    'phases.fine_tune.learning_rate': 4.0438780095151014e-05,
    'phases.fine_tune.fine_tune_at': 110,
    'phases.fine_tune.optimizer': 'adamw',
}


def get_config():
  spec = importlib.util.spec_from_file_location('tlflax_tuned_base', BASE_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(VARIANT) if VARIANT else module.get_config()
  for key, value in {**OVERRIDES, **VALUES}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config
