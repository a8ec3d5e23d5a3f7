"""Phase 2's learning rate over three values (the tutorial's 1e-5 in the middle) x 3 seeds.

    python -m tlflax.sweep --config=configs/cats_dogs.py:local,cached \
        --sweep=configs/sweeps/fine_tune_rate.py --workdir=runs/sweep_fine_tune_rate
"""
from tlflax.sweep import product, seeds, sweep


def get_trials():
  return product(sweep('phases.fine_tune.learning_rate', [3e-6, 1e-5, 3e-5]), seeds(3))
