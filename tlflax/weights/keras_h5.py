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
import h5py

from tlflax.models import layer_table
from tlflax.weights.convert import KerasWeights, WeightsError, keras_kinds

# Names a variable may carry in a legacy file, per canonical Keras name.
_ALIASES = {'depthwise_kernel': ('depthwise_kernel', 'kernel')}


def _decode(name) -> str:
  return name.decode('utf8') if isinstance(name, bytes) else str(name)


def _short_name(weight_name: str) -> str:
  """'block_1_depthwise/depthwise_kernel:0' -> 'depthwise_kernel'."""
  return weight_name.rsplit('/', 1)[-1].split(':')[0]


def read_legacy_h5(path: str) -> KerasWeights:
  """Reads a legacy Keras HDF5 weights (or full model) file."""
  kinds = keras_kinds()
  weights = {}
  with h5py.File(path, 'r') as f:
    root = f['model_weights'] if 'model_weights' in f else f
    if 'layer_names' not in root.attrs:
      raise WeightsError(f'{path} is HDF5 but not a Keras weights file (no layer_names)')
    for layer_name in map(_decode, root.attrs['layer_names']):
      group = root[layer_name]
      names = [_decode(n) for n in group.attrs.get('weight_names', [])]
      if not names:
        continue
      if layer_name not in kinds:
        raise WeightsError(f'{path}: layer {layer_name} is not a MobileNetV2 layer')
      by_short_name = {_short_name(n): group[n][()] for n in names}
      arrays = []
      for canonical in layer_table.KERAS_VARIABLES[kinds[layer_name]]:
        found = [by_short_name[a] for a in _ALIASES.get(canonical, (canonical,))
                 if a in by_short_name]
        if not found:
          raise WeightsError(f'{path}: layer {layer_name} has no {canonical} '
                             f'(it has {", ".join(by_short_name)})')
        arrays.append(found[0])
      weights[layer_name] = arrays
  return weights


def read_keras3_weights_h5(path: str) -> KerasWeights:
  """Reads a Keras 3 `.weights.h5` file saved from `keras.applications.MobileNetV2`."""
  with h5py.File(path, 'r') as f:
    if 'layers' not in f:
      raise WeightsError(f'{path} is HDF5 but not a Keras 3 .weights.h5 file (no layers group)')
    groups = f['layers']
    counts: dict[str, int] = {}
    weights = {}
    for layer in layer_table.mobilenet_v2_layers(include_top=True):
      if not layer.has_variables:
        continue
      class_name = layer_table.KERAS_CLASS_NAMES[layer.kind]
      n = counts.get(class_name, 0)
      counts[class_name] = n + 1
      key = class_name if n == 0 else f'{class_name}_{n}'
      if key not in groups:
        if layer.kind == 'dense':  # saved without the top
          continue
        raise WeightsError(f'{path}: no group layers/{key} for layer {layer.name}')
      variables = groups[key]['vars']
      weights[layer.name] = [variables[str(i)][()] for i in range(len(variables))]
  return weights


def read_h5(path: str) -> KerasWeights:
  """Reads either Keras HDF5 layout, telling them apart by content."""
  try:
    with h5py.File(path, 'r') as f:
      keras3 = 'layers' in f and 'layer_names' not in f.attrs
  except OSError as e:
    raise WeightsError(f'{path} is not a readable HDF5 file: {e}') from e
  return read_keras3_weights_h5(path) if keras3 else read_legacy_h5(path)

