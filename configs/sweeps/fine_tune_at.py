"""Where to start fine-tuning: phase 2's `fine_tune_at` over {none, 50, 100, 120, 140} x 3 seeds
(variant 'small': {none, 50, 100, 130} x 2 seeds, docs/sweeps.md's measured ablation).

    python -m tlflax.sweep --config=configs/cats_dogs.py:local,cached \
        --sweep=configs/sweeps/fine_tune_at.py --workdir=runs/sweep_fine_tune_at

The trials of a seed share phase 1 (only phase 2 differs), so the sweep trains one phase 1 per
seed.
"""
from tlflax.sweep import product, seeds, sweep


def get_trials(variant: str = ''):
  if variant not in ('', 'small'):
    raise ValueError(f"unknown sweep variant {variant!r}; known: 'small'")
  values, seed_count = ((None, 50, 100, 130), 2) if variant else ((None, 50, 100, 120, 140), 3)
  return product(sweep('phases.fine_tune.fine_tune_at', values), seeds(seed_count))
