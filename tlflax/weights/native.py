"""Ported variables in a Flax-native file: one msgpack blob, loaded back in milliseconds."""
from pathlib import Path

import numpy as np
from flax import serialization

from tlflax.backbones import DEFAULT_BACKBONE
from tlflax.weights.convert import WeightsError

NATIVE_SUFFIX = '.msgpack'
_FORMAT = 'tlflax.variables/1'
# Files written before backbones were plug-ins, all of the default backbone, say so in their format.
_FORMATS = (_FORMAT, f'tlflax.{DEFAULT_BACKBONE}.variables/1')


def save_variables(path, variables: dict, **metadata) -> Path:
  """Writes `{'params', 'batch_stats'}` plus `metadata` (backbone, backbone_args, source, ...)."""
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
  if not isinstance(blob, dict) or blob.get('format') not in _FORMATS:
    raise WeightsError(f'{path} is not a tlflax ported-weights file (format {_FORMAT})')
  return blob['variables'], blob['metadata']
