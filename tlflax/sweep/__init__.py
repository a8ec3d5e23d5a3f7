"""Sweeps: ablations as data. A sweep file lists trials (override dicts); `runner.run` trains them
resumably, sharing first phases, and `report` puts them in one table.

    python -m tlflax.sweep --config=configs/cats_dogs.py:local,cached \
        --sweep=configs/sweeps/fine_tune_at.py --workdir=DIR [--list | --trial=K | --report]
"""
from tlflax.sweep.axes import product, seeds, sweep

__all__ = ['product', 'seeds', 'sweep']
