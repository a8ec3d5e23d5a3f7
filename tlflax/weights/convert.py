"""From Keras per-layer weights to Flax variables, and the strict check of the result.

Every reader in this package returns `KerasWeights`: for each Keras layer name, that layer's arrays
in Keras `layer.get_weights()` order. One converter turns that into `{'params': ..., 'batch_stats':
...}` for the backbone's `KerasGraph`, and `to_keras_weights` turns those back (for export to
Keras); both follow the slots of each layer's kind (`tlflax.backbones.kinds`).
"""
from typing import Mapping, Sequence

import jax
import numpy as np

from tlflax.backbones import graph, kinds
from tlflax.backbones.layers import Layer
from tlflax.errors import WeightsError

KerasWeights = dict[str, list[np.ndarray]]


def to_flax_variables(weights: KerasWeights, source: str, layers: Sequence[Layer]) -> dict:
  """Converts Keras per-layer weights into Flax `{'params', 'batch_stats'}` keyed by layer name,
  for the network of layer table `layers` (with its top, so that a file with one converts)."""
  slots = graph.slots_by_layer(layers)
  unknown = sorted(set(weights) - set(slots))
  if unknown:
    raise WeightsError(f'{source}: layers that this backbone does not have: '
                       f'{", ".join(unknown[:8])}' + (' ...' if len(unknown) > 8 else ''))
  variables = {'params': {}, 'batch_stats': {}}
  for name, arrays in weights.items():
    expected = slots[name]
    if len(arrays) != len(expected):
      raise WeightsError(f'{source}: layer {name} has {len(arrays)} arrays, expected '
                         f'{len(expected)} ({", ".join(s.keras_name for s in expected)})')
    for collection, values in kinds.to_flax_arrays(expected, arrays).items():
      variables[collection][name] = values
  return variables


def _flatten(tree: Mapping) -> dict[str, tuple]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_variables(loaded: Mapping, expected: Mapping, source: str,
                    dont_load: tuple[str, ...] = ()) -> dict:
  """Returns `loaded` restricted to `expected`'s keys, failing loudly on any mismatch.

  `expected` is a tree of arrays or shape structs (e.g. `jax.eval_shape(model.init, ...)`).
  Layers named in `dont_load` may be absent from or extra in `loaded`; any other missing, unexpected
  or mis-shaped variable raises `WeightsError` listing all of them.
  """
  def skipped(key):
    return key.split('/')[1] in dont_load

  have, want = _flatten(loaded), _flatten(expected)
  missing = [k for k in want if k not in have and not skipped(k)]
  unexpected = [k for k in have if k not in want and not skipped(k)]
  mismatched = [f'{k} {have[k]} (expected {want[k]})'
                for k in want if k in have and have[k] != want[k]]
  problems = []
  for label, keys in (('missing', missing), ('unexpected', unexpected),
                      ('wrong shape', mismatched)):
    if keys:
      problems.append(f'{label} ({len(keys)}): ' + ', '.join(keys[:8])
                      + (' ...' if len(keys) > 8 else ''))
  if problems:
    raise WeightsError(f'{source} does not fit the model: ' + '; '.join(problems))
  return {collection: {name: loaded[collection][name] for name in layers
                       if name in loaded.get(collection, {})}
          for collection, layers in expected.items()}


def to_keras_weights(variables: Mapping, layers: Sequence[Layer]) -> KerasWeights:
  """The inverse of `to_flax_variables`: Flax `{'params', 'batch_stats'}` of the network of
  `layers` -> float32 arrays per Keras layer name, in `layer.set_weights()` order."""
  slots = graph.slots_by_layer(layers)
  unknown = sorted(set(variables['params']) - set(slots))
  if unknown:
    raise WeightsError(f'variables of layers this backbone does not have: {", ".join(unknown)}')
  present = set(variables['params']) | set(variables.get('batch_stats', {}))
  return {name: kinds.to_keras_arrays(layer_slots, variables, name)
          for name, layer_slots in slots.items() if name in present}
