"""Augmentation on (the tutorial's flip and rotation) or off, x 3 seeds.

    python -m tlflax.sweep --config=configs/cats_dogs.py:local \
        --sweep=configs/sweeps/augmentation.py --workdir=runs/sweep_augmentation

Use a base config without `cached` (cached activations need augmentation off).
"""
from tlflax.sweep import product, seeds


def get_trials():
  settings = [{'data.flip': True, 'data.rotation_factor': 0.2},
              {'data.flip': False, 'data.rotation_factor': 0.0}]
  return product(settings, seeds(3))
