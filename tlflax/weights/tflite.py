"""Reader for TFLite flatbuffers of BatchNorm ConvNets (float, float16 or int8/uint8 quantized).

TFLite converters fold each BatchNorm into the preceding convolution's kernel and bias. Reading a
file back, the convolution and depthwise ops, in execution order, map one to one onto the Keras conv
layers; each folded bias becomes a BatchNorm with gamma 1, beta = bias, moving mean 0 and moving
variance 1 - epsilon, which computes exactly `x + bias`. A 1001-way classifier (TF-slim's, with
`background` at index 0) loses its first row so that class `i` means what it means in Keras.

The flatbuffer is parsed with the `tflite` schema package: no interpreter is needed to read weights.
"""
import struct

import numpy as np
import tflite
from tflite.BuiltinOperator import BuiltinOperator
from tflite.TensorType import TensorType

from tlflax.weights.convert import KerasWeights, WeightsError

_DTYPES = {
    TensorType.FLOAT32: np.float32, TensorType.FLOAT16: np.float16, TensorType.INT8: np.int8,
    TensorType.UINT8: np.uint8, TensorType.INT16: np.int16, TensorType.INT32: np.int32,
}
_OP_NAMES = {code: name for name, code in vars(BuiltinOperator).items() if not name.startswith('_')}
_CONV_OPS = ('CONV_2D', 'DEPTHWISE_CONV_2D', 'FULLY_CONNECTED')


class _Graph:
  """The main subgraph of a TFLite model, with constant tensors read as dequantized float32."""

  def __init__(self, path: str):
    with open(path, 'rb') as f:
      self.buffer = f.read()
    if self.buffer[4:8] != b'TFL3':  # the TFLite flatbuffer file identifier
      raise WeightsError(f'{path} is not a TFLite flatbuffer (no TFL3 identifier)')
    self.model = tflite.Model.GetRootAsModel(self.buffer, 0)
    self.graph = self.model.Subgraphs(0)
    self.path = path
    self.ops = []  # (op name, input tensor indices, output tensor indices), in execution order
    for i in range(self.graph.OperatorsLength()):
      op = self.graph.Operators(i)
      code = self.model.OperatorCodes(op.OpcodeIndex())
      name = _OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), 'CUSTOM')
      self.ops.append((name, list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())))
    # float16 models keep weights behind DEQUANTIZE ops: read through them.
    self.dequantized_from = {outs[0]: ins[0] for name, ins, outs in self.ops
                             if name == 'DEQUANTIZE'}

  def tensor_name(self, index: int) -> str:
    return self.graph.Tensors(index).Name().decode()

  def constant(self, index: int) -> np.ndarray:
    """The dequantized float32 value of a constant tensor."""
    index = self.dequantized_from.get(index, index)
    tensor = self.graph.Tensors(index)
    data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
    if isinstance(data, int) or tensor.Type() not in _DTYPES:  # no data: not a constant
      raise WeightsError(f'{self.path}: tensor {self.tensor_name(index)} holds no constant data')
    array = data.view(_DTYPES[tensor.Type()]).reshape(tensor.ShapeAsNumpy()).astype(np.float32)
    quantization = tensor.Quantization()
    if quantization is None or quantization.ScaleLength() == 0:
      return array
    shape = [1] * array.ndim
    scale, zero_point = quantization.ScaleAsNumpy(), quantization.ZeroPointAsNumpy()
    if np.size(scale) > 1:  # per-channel
      shape[quantization.QuantizedDimension()] = -1
    dequantized = (array - np.reshape(zero_point, shape)) * np.reshape(scale, shape)
    return dequantized.astype(np.float32)  # int64 zero points would make it float64


def _kernel_and_bias(graph: _Graph, op_index: int):
  name, inputs, _ = graph.ops[op_index]
  kernel = graph.constant(inputs[1])
  bias = graph.constant(inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else None
  if name == 'DEPTHWISE_CONV_2D':  # (1, k, k, C) -> Keras (k, k, C, 1)
    kernel = np.transpose(kernel, (1, 2, 3, 0))
  elif name == 'CONV_2D':  # (O, k, k, I) -> Keras (k, k, I, O)
    kernel = np.transpose(kernel, (1, 2, 3, 0))
  else:  # FULLY_CONNECTED (O, I) -> (1, 1, I, O)
    kernel = kernel.T[None, None]
  if bias is None:
    out_channels = kernel.shape[2] if name == 'DEPTHWISE_CONV_2D' else kernel.shape[3]
    bias = np.zeros(out_channels, np.float32)
  return name, kernel, bias


def read_tflite(path: str, layers) -> KerasWeights:
  """Reads the weights of the network of Keras layer table `layers` (with its classifier, if the
  file has one) from a TFLite file. Every conv and depthwise layer of the table must be followed
  by its BatchNorm. `WeightsError` for a file of another network or one that does not parse (a
  truncated download)."""
  try:
    return _read(_Graph(path), layers)
  except WeightsError:  # a file that parses but is not the network asked for
    raise
  except (struct.error, IndexError, ValueError) as e:  # offsets past the end of the file
    raise WeightsError(f'{path} is damaged (truncated?): its TFLite flatbuffer does not parse '
                       f'({e})') from e


def _read(graph: _Graph, table) -> KerasWeights:
  path = graph.path
  conv_ops = [i for i, (name, _, _) in enumerate(graph.ops) if name in _CONV_OPS]
  layers = [layer for layer in table if layer.kind in ('conv', 'depthwise')]
  if len(conv_ops) not in (len(layers), len(layers) + 1):
    raise WeightsError(f'{path}: {len(conv_ops)} convolution ops, the backbone has {len(layers)} '
                       'convolutions (plus an optional classifier)')
  batch_norms = {layer.name: table[layer.index + 1] for layer in layers}
  weights = {}
  channels = 3
  for layer, op_index in zip(layers, conv_ops):
    op_name, kernel, bias = _kernel_and_bias(graph, op_index)
    expected_op = 'DEPTHWISE_CONV_2D' if layer.kind == 'depthwise' else 'CONV_2D'
    in_channels = kernel.shape[2]
    out_channels = in_channels if layer.kind == 'depthwise' else kernel.shape[3]
    problem = None
    if op_name != expected_op:
      problem = f'is {op_name}, expected {expected_op}'
    elif kernel.shape[:2] != (layer.kernel_size,) * 2 or in_channels != channels:
      problem = f'has kernel {kernel.shape} for {channels} input channels'
    elif layer.features and out_channels != layer.features:
      problem = f'has {out_channels} output channels, expected {layer.features} (another width?)'
    if problem:
      raise WeightsError(f'{path}: op {op_index} ({graph.tensor_name(graph.ops[op_index][1][1])}) '
                         f'for Keras layer {layer.name} {problem}')
    weights[layer.name] = [kernel]
    ones = np.ones_like(bias)
    batch_norm = batch_norms[layer.name]
    weights[batch_norm.name] = [ones, bias, np.zeros_like(bias),
                                ones * np.float32(1.0 - batch_norm.epsilon)]
    channels = out_channels
  if len(conv_ops) > len(layers):
    _, kernel, bias = _kernel_and_bias(graph, conv_ops[-1])
    kernel = kernel.reshape(-1, kernel.shape[-1])
    if kernel.shape[0] != channels:
      raise WeightsError(f'{path}: classifier takes {kernel.shape[0]} features, '
                         f'the backbone gives {channels}')
    if kernel.shape[1] == 1001:  # TF-slim's background class
      kernel, bias = kernel[:, 1:], bias[1:]
    weights[table[-1].name] = [kernel, bias]
  return weights
