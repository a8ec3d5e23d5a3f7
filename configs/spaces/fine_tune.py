"""A search over the tutorial's second phase: its learning rate, where the backbone is unfrozen
from, and its optimizer. The first phase is left as the base config has it, so the tuner trains
it once and every trial starts from it (`DIR/_shared/`).

    python -m tlflax.tune --config=configs/flowers.py:local --space=configs/spaces/fine_tune.py \
        --workdir=runs/tune_fine_tune --trials=12

Results on flowers_mini: bench/results/tune_fine_tune.md (docs/tuning.md).
"""
from tlflax.tune import choice, integer, log_uniform


def get_space():
  return {'phases.fine_tune.learning_rate': log_uniform(1e-6, 1e-3),
          'phases.fine_tune.fine_tune_at': integer(50, 150, step=10),
          'phases.fine_tune.optimizer': choice('rmsprop', 'adam', 'adamw')}


def get_objective():
  return {'metric': 'accuracy', 'split': 'validation'}
