"""Ported variables in a Flax-native file: one msgpack blob, loaded back in milliseconds."""
from pathlib import Path

import numpy as np
from flax import serialization

from tlflax.weights.convert import WeightsError

NATIVE_SUFFIX = '.msgpack'
_FORMAT = 'tlflax.mobilenet_v2.variables/1'


def save_variables(path, variables: dict, **metadata) -> Path:
  """Writes `{'params', 'batch_stats'}` plus string/number `metadata` (alpha, source, ...)."""
  path = Path(path)
  blob = {'format': _FORMAT, 'metadata': metadata,
          'variables': {c: {layer: {k: np.asarray(v) for k, v in arrays.items()}
                            for layer, arrays in tree.items()}
                        for c, tree in variables.items()}}
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + '.part')
  partial.write_bytes(serialization.msgpack_serialize(blob))
  partial.replace(path)
  return path


def load_variables(path) -> tuple[dict, dict]:
  """Reads a file written by `save_variables`: returns (variables, metadata)."""
  try:
    blob = serialization.msgpack_restore(Path(path).read_bytes())
  except Exception as e:
    raise WeightsError(f'{path} is not a tlflax ported-weights file: {e}') from e
  if not isinstance(blob, dict) or blob.get('format') != _FORMAT:
    raise WeightsError(f'{path} is not a tlflax ported-weights file (format {_FORMAT})')
  return blob['variables'], blob['metadata']
