"""Hyperparameter search on Optuna: a space file declares distributions over config keys and the
objective; each trial is a tlflax run in its own folder, pruned per epoch, the study kept in a
database that several workers share and a rerun continues.

    python -m tlflax.tune --config=configs/flowers.py:local --space=configs/spaces/NAME.py \
        --workdir=DIR [--trials=N] [--storage=URL] [--study=NAME] [--timeout=SECONDS]
"""
from tlflax.tune.space import choice, integer, log_uniform, uniform

__all__ = ['choice', 'integer', 'log_uniform', 'uniform']
