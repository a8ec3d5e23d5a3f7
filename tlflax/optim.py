"""Per-phase optimizers: which parameters train, and how.

A phase trains the head and the backbone layers from Keras index `fine_tune_at` on (None: none of
the backbone). Each parameter is in the group 'trainable' or 'frozen' (`param_groups`; optax calls
these its "labels"). Frozen parameters go through `optax.set_to_zero()` inside an
`optax.multi_transform`: they get no optimizer state and no update. The train step also skips their
gradients (see `tlflax.steps`).
"""
from typing import Optional

import jax
import numpy as np
import optax

from tlflax.models import trainable_mask

# Keras's defaults for the tutorial's optimizers (epsilon 1e-7; RMSprop rho 0.9, no momentum).
# The config check (`tlflax.config`) refuses other names.
OPTIMIZERS = {
    'adam': lambda lr: optax.adam(lr, eps=1e-7),
    'rmsprop': lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-7),
    'sgd': optax.sgd,
}


def param_groups(params: dict, layers, fine_tune_at: Optional[int]) -> dict:
  """'trainable' / 'frozen' for every leaf of the classifier's `{'backbone', 'head'}` params."""
  start = len(layers) if fine_tune_at is None else fine_tune_at
  mask = {'backbone': trainable_mask(params['backbone'], layers, start),
          'head': jax.tree.map(lambda _: True, params['head'])}
  return jax.tree.map(lambda trainable: 'trainable' if trainable else 'frozen', mask)


def make_optimizer(name: str, learning_rate: float, groups: dict):
  """`multi_transform` of the named optimizer for trainable leaves and `set_to_zero` for frozen."""
  return optax.multi_transform({'trainable': OPTIMIZERS[name](learning_rate),
                                'frozen': optax.set_to_zero()}, groups)


def count_params(params: dict, groups: dict) -> dict[str, int]:
  """Numbers of trainable and frozen parameters (the tutorial's model summary counts)."""
  counts = {'trainable': 0, 'frozen': 0}
  for leaf, group in zip(jax.tree.leaves(params), jax.tree.leaves(groups)):
    counts[group] += int(np.size(leaf))
  return counts
