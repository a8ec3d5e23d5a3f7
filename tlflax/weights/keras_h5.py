"""Readers for Keras HDF5 weight files.

Two layouts exist:
- legacy HDF5 (the Keras-applications downloads, `model.save('x.h5')`): root attribute
  `layer_names`, one group per layer with attribute `weight_names` such as `Conv1/kernel:0`
  (published files) or `Conv1/kernel` (Keras 3); a full-model file nests all of this under
  `model_weights`.
- Keras 3 `.weights.h5` (`model.save_weights`): `layers/<class name>[_N]/vars/<i>`, where the group
  names are derived from the layer classes in `model.layers` order (`conv2d`, `conv2d_1`, ...), not
  from the layer names.
"""
import re
from typing import Collection, Sequence

import h5py

from tlflax.backbones import graph, kinds
from tlflax.backbones.layers import Layer
from tlflax.weights.convert import KerasWeights, WeightsError

# Names a variable may carry in a legacy file, per canonical Keras name.
_ALIASES = {'depthwise_kernel': ('depthwise_kernel', 'kernel')}


def _decode(name) -> str:
  return name.decode('utf8') if isinstance(name, bytes) else str(name)


def _short_name(weight_name: str) -> str:
  """'block_1_depthwise/depthwise_kernel:0' -> 'depthwise_kernel'."""
  return weight_name.rsplit('/', 1)[-1].split(':')[0]


def _table_name(name: str, known: Collection[str], in_file: Collection[str]) -> str:
  """The table's name of a file's layer: `name`, or `name` less the `_N` Keras adds to an
  automatically named layer when several models exist in a session (ConvNeXt's last
  `layer_normalization`), where only that is the table's and the file has no such layer."""
  base = re.sub(r'_\d+$', '', name)
  return base if name not in known and base in known and base not in in_file else name


def read_legacy_h5(path: str, layers: Sequence[Layer]) -> KerasWeights:
  """Reads a legacy Keras HDF5 weights (or full model) file of the network of `layers`; layers it
  does not have are returned as they are, for the conversion to name them."""
  slots = graph.slots_by_layer(layers)
  weights = {}
  with h5py.File(path, 'r') as f:
    root = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' not in root.attrs:
      raise WeightsError(f'{path} is HDF5 but not a Keras weights file (no layer_names)')
    in_file = [_decode(name) for name in root.attrs['layer_names']]
    for file_name in in_file:
      group = root[file_name]
      layer_name = _table_name(file_name, slots, in_file)
      names = [_decode(n) for n in group.attrs.get('weight_names', [])]
      if not names:
        continue
      by_short_name = {_short_name(n): group[n][()] for n in names}
      if layer_name not in slots or len(slots[layer_name]) == len(by_short_name) == 1:
        # (one variable needs no name, and ConvNeXt's LayerScale has none: 'Variable' in the
        # published files, 'variable_N' in Keras 3's)
        weights[layer_name] = list(by_short_name.values())
        continue
      arrays = []
      for canonical in (slot.keras_name for slot in slots[layer_name]):
        found = [by_short_name[a] for a in _ALIASES.get(canonical, (canonical,))
                 if a in by_short_name]
        if not found:
          raise WeightsError(f'{path}: layer {layer_name} has no {canonical} '
                             f'(it has {", ".join(by_short_name)})')
        arrays.append(found[0])
      weights[layer_name] = arrays
  return weights


def read_keras3_weights_h5(path: str, layers: Sequence[Layer],
                           optional: Collection[str] = ()) -> KerasWeights:
  """Reads a Keras 3 `.weights.h5` file saved from the Keras model of `layers`; the `optional`
  layers (the classifier top) may be absent."""
  with h5py.File(path, 'r') as f:
    if 'layers' not in f:
      raise WeightsError(f'{path} is HDF5 but not a Keras 3 .weights.h5 file (no layers group)')
    groups = f['layers']
    counts: dict[str, int] = {}
    weights = {}
    slots = graph.slots_by_layer(layers)
    for layer in layers:
      if layer.name not in slots:
        continue
      class_name = kinds.KINDS[layer.kind].keras_class
      n = counts.get(class_name, 0)
      counts[class_name] = n + 1
      key = class_name if n == 0 else f'{class_name}_{n}'
      if key not in groups:
        if layer.name in optional:
          continue
        raise WeightsError(f'{path}: no group layers/{key} for layer {layer.name}')
      weights[layer.name] = _keras3_arrays(groups[key], slots[layer.name])
  return weights


def _keras3_arrays(group, slots) -> list:
  """A layer's arrays from its `.weights.h5` group: `vars/<i>`, or for a nested model (slots with
  a `keras_sublayer`) `layers/<inner layer>/vars/<i>`, in slot order."""
  if not any(slot.keras_sublayer for slot in slots):
    variables = group['vars']
    return [variables[str(i)][()] for i in range(len(variables))]
  arrays, taken = [], {}
  for slot in slots:
    i = taken[slot.keras_sublayer] = taken.get(slot.keras_sublayer, -1) + 1
    path = f'layers/{slot.keras_sublayer}/vars/{i}'
    if path not in group:
      raise WeightsError(f'{group.file.filename}: no {group.name}/{path}')
    arrays.append(group[path][()])
  return arrays


def read_h5(path: str, layers: Sequence[Layer], optional: Collection[str] = ()) -> KerasWeights:
  """Reads either Keras HDF5 layout for the network of `layers` (its table with the top, whose
  `optional` layers a file may lack), telling the layouts apart by content."""
  try:
    with h5py.File(path, 'r') as f:
      keras3 = 'layers' in f and 'layer_names' not in f.attrs
  except OSError as e:
    raise WeightsError(f'{path} is not a readable HDF5 file: {e}') from e
  return read_keras3_weights_h5(path, layers, optional) if keras3 else read_legacy_h5(path, layers)

