"""Models whose layers map one to one onto Keras applications."""
from tlflax.models.layer_table import (Layer, layer_index, mobilenet_v2_layers, trainable_mask,
                                       variable_layers_from)
from tlflax.models.mobilenet_v2 import MobileNetV2, variable_shapes

__all__ = ['Layer', 'MobileNetV2', 'layer_index', 'mobilenet_v2_layers', 'trainable_mask',
           'variable_layers_from', 'variable_shapes']
