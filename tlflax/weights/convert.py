"""From Keras per-layer weights to Flax variables, and the strict check of the result.

Every reader in this package returns `KerasWeights`: for each Keras layer name, that layer's arrays
in Keras `layer.get_weights()` order (`KERAS_VARIABLES` says which). One converter turns that into
`{'params': ..., 'batch_stats': ...}` for `tlflax.models.MobileNetV2`, and `to_keras_weights` turns
those back (for export to Keras).
"""
from typing import Mapping

import jax
import numpy as np

from tlflax.errors import WeightsError  # noqa: F401  (weights that do not fit the model)
from tlflax.models import layer_table

KerasWeights = dict[str, list[np.ndarray]]


def keras_kinds() -> dict[str, str]:
  """The kind of every Keras MobileNetV2 layer that has variables, top included."""
  return {layer.name: layer.kind for layer in layer_table.mobilenet_v2_layers(include_top=True)
          if layer.has_variables}


def to_flax_variables(weights: KerasWeights, source: str) -> dict:
  """Converts Keras per-layer weights into Flax `{'params', 'batch_stats'}` keyed by layer name."""
  kinds = keras_kinds()
  unknown = sorted(set(weights) - set(kinds))
  if unknown:
    raise WeightsError(f'{source}: layers that MobileNetV2 does not have: {", ".join(unknown)}')
  params, batch_stats = {}, {}
  for name, arrays in weights.items():
    kind = kinds[name]
    expected = layer_table.KERAS_VARIABLES[kind]
    if len(arrays) != len(expected):
      raise WeightsError(f'{source}: layer {name} has {len(arrays)} arrays, a {kind} layer has '
                         f'{len(expected)} ({", ".join(expected)})')
    arrays = [np.asarray(a) for a in arrays]
    if kind == 'conv':
      params[name] = {'kernel': arrays[0]}
    elif kind == 'depthwise':  # Keras (k, k, C, 1) -> grouped-convolution layout (k, k, 1, C)
      params[name] = {'kernel': np.transpose(arrays[0], (0, 1, 3, 2))}
    elif kind == 'batch_norm':
      gamma, beta, mean, var = arrays
      params[name] = {'scale': gamma, 'bias': beta}
      batch_stats[name] = {'mean': mean, 'var': var}
    elif kind == 'dense':
      params[name] = {'kernel': arrays[0], 'bias': arrays[1]}
  return {'params': params, 'batch_stats': batch_stats}


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


def to_keras_weights(variables: Mapping) -> KerasWeights:
  """The inverse of `to_flax_variables`: Flax `{'params', 'batch_stats'}` of a MobileNetV2 ->
  float32 arrays per Keras layer name, in `layer.set_weights()` order."""
  kinds = keras_kinds()
  weights = {}
  for name, params in variables['params'].items():
    kind = kinds.get(name)
    if kind is None:
      raise WeightsError(f'variables of a layer {name}, which MobileNetV2 does not have')
    if kind == 'conv':
      arrays = [params['kernel']]
    elif kind == 'depthwise':  # (k, k, 1, C) -> Keras (k, k, C, 1)
      arrays = [np.transpose(np.asarray(params['kernel']), (0, 1, 3, 2))]
    elif kind == 'batch_norm':
      stats = variables['batch_stats'][name]
      arrays = [params['scale'], params['bias'], stats['mean'], stats['var']]
    elif kind == 'dense':
      arrays = [params['kernel'], params['bias']]
    else:
      raise WeightsError(f'no Keras layout for layer {name} of kind {kind}')
    weights[name] = [np.asarray(a, np.float32) for a in arrays]
  return weights
