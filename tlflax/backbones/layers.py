"""Keras layer tables: a network as the data of its `model.layers` list.

A Keras application is a functional model whose `layers` list is what transfer learning indexes
("fine-tune from layer 100" is `base_model.layers[100:]`). A backbone module (`mobilenet_v2.py`,
`resnet.py`, ...) writes that list as a tuple of `Layer`s: same names, same order, same indices.
`tlflax.backbones.graph.KerasGraph` runs such a table, weight porting reads variables by its names,
and freezing looks layers up in it, so the table is the one source of a backbone's structure.
"""
import dataclasses
from typing import Mapping, Optional, Sequence, Union

import jax

Padding = Union[str, tuple[tuple[int, int], tuple[int, int]]]


@dataclasses.dataclass(frozen=True)
class Layer:
  """One Keras layer: its index in `model.layers`, name, kind (see `tlflax.backbones.kinds`),
  inputs (layer names; empty for the layer just before) and the settings its kind reads."""
  index: int
  name: str
  kind: str
  inputs: tuple[str, ...] = ()
  features: int = 0  # output channels of conv and dense layers
  kernel_size: int = 1  # also the window of pooling layers
  strides: int = 1
  padding: Padding = 'same'  # 'same', 'valid', or ((top, bottom), (left, right)) for 'pad'
  use_bias: bool = False
  groups: int = 1
  activation: Optional[str] = None  # of 'activation' layers, and fused into conv / dense
  epsilon: float = 1e-3
  momentum: float = 0.99
  scale: tuple[float, ...] = ()  # of 'rescaling': one value, or one per channel
  offset: tuple[float, ...] = ()
  keepdims: bool = False  # of global pooling

  @property
  def has_variables(self) -> bool:
    from tlflax.backbones import kinds  # kinds import this module
    return bool(kinds.KINDS[self.kind].slots(self, 1))


def numbered(specs: Sequence[Mapping]) -> tuple[Layer, ...]:
  """`Layer`s from dicts of their fields, indexed in order (what table builders return)."""
  return tuple(Layer(index=i, **spec) for i, spec in enumerate(specs))


class TableBuilder:
  """Collects a table in Keras order: `add(name, kind, **settings)` returns the name, so a block
  can keep its input (`shortcut = builder.last`) for a later 'add'."""

  def __init__(self):
    self.specs = []

  def add(self, name: str, kind: str, **settings) -> str:
    if 'inputs' in settings:
      settings['inputs'] = tuple(settings['inputs'])
    self.specs.append(dict(name=name, kind=kind, **settings))
    return name

  @property
  def last(self) -> str:
    return self.specs[-1]['name']

  def layers(self) -> tuple[Layer, ...]:
    return numbered(self.specs)


def inputs_of(layers: Sequence[Layer], layer: Layer) -> tuple[str, ...]:
  """The names of the layers whose outputs `layer` takes."""
  return layer.inputs or ((layers[layer.index - 1].name,) if layer.index else ())


def layer_index(layers: Sequence[Layer]) -> dict[str, int]:
  """Maps each layer name to its Keras index."""
  return {layer.name: layer.index for layer in layers}


def boundary_names(layers: Sequence[Layer], stop: int) -> set[str]:
  """The layers below `stop` whose outputs layers `stop...` read: layer `stop - 1` and those a
  later layer takes as an input (the shortcut of a residual block that spans the boundary)."""
  index = layer_index(layers)
  needed = {layers[stop - 1].name}
  for layer in layers[stop:]:
    needed |= {name for name in inputs_of(layers, layer) if index[name] < stop}
  return needed


def variable_layers_from(layers: Sequence[Layer], start: int) -> list[str]:
  """Names of the layers with variables in `layers[start:]` (`base_model.layers[start:]`)."""
  if not 0 <= start <= len(layers):
    raise ValueError(f'layer index {start} is outside 0..{len(layers)} for this model')
  return [layer.name for layer in layers[start:] if layer.has_variables]


def trainable_mask(params: Mapping, layers: Sequence[Layer], fine_tune_at: int) -> dict:
  """A tree like `params` (keyed by layer name) with True for layers at index >= `fine_tune_at`.

  This is Keras's `for layer in base_model.layers[:fine_tune_at]: layer.trainable = False`.
  """
  trainable = set(variable_layers_from(layers, fine_tune_at))
  known = layer_index(layers)
  unknown = sorted(set(params) - set(known))
  if unknown:
    raise KeyError(f'parameters of layers not in the layer table: {", ".join(unknown)}')
  return {name: jax.tree.map(lambda _, t=name in trainable: t, subtree)
          for name, subtree in params.items()}
