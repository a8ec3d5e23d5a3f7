"""Backbones as plug-ins: each Keras application family in one module that registers it.

`get(name)` returns the `Backbone` spec (layer table, preprocessing, weights, Keras constructor,
where tutorial-style fine-tuning starts); `network(spec, args)` builds its Flax module. The rest of
tlflax asks the spec and never names a backbone.
"""
from tlflax.backbones.graph import KerasGraph, boundary_activations, variable_shapes
from tlflax.backbones.layers import (Layer, TableBuilder, layer_index, trainable_mask,
                                     variable_layers_from)
from tlflax.backbones.preprocessing import Preprocessing
from tlflax.backbones.registry import (Backbone, WeightsFile, arguments, get, layer_position,
                                       names, network, register, table)
# The built-in families register themselves on import.
from tlflax.backbones import (convnext, efficientnet, efficientnet_v2, mobilenet_v2,  # noqa: F401
                              mobilenet_v3, resnet)

DEFAULT_BACKBONE = 'mobilenet_v2'

__all__ = ['DEFAULT_BACKBONE', 'Backbone', 'KerasGraph', 'Layer', 'Preprocessing', 'TableBuilder',
           'WeightsFile', 'arguments', 'boundary_activations', 'get', 'layer_index',
           'layer_position', 'names', 'network', 'register', 'table', 'trainable_mask',
           'variable_layers_from', 'variable_shapes']
