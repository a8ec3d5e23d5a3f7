"""TFLite files of the classifier, converted from its Keras model (`tlflax.export.keras_model`) the
way Keras's LiteRT exporter does it (a SavedModel of the Keras model, then TensorFlow's
`TFLiteConverter`), with TFLite's built-in ops only (no TensorFlow "Flex" ops, which phones and
LiteRT's interpreter lack): float32, or int8 with post-training quantization; and a runner for
them.

An int8 file can keep the top of the network in float32 (`float_from`), which the export does from
the first layer a run fine-tuned (`tlflax.export.exporter.fine_tuned_from`): fine-tuning moves
weights by less than an int8 step, so rounding them takes much of the fine-tuning back. Measured
on the shared validation photos (`bench/int8_quantization.py`, results in `bench/results/`).

From the Keras model rather than from the jax2tf SavedModel: both convert, but on MobileNetV2 at
160x160 (a 2-core x86 CPU, one image at a time, measured side by side with the interpreter's
default threads) the Keras route ran a float image in 3.4 ms against 9.0 ms for the StableHLO
route (whose symbolic batch leaves shape arithmetic around every layer), and quantized to int8 in
1.7 ms against 44 ms (`bench/export_artifacts.py` measures the files an export writes).
"""
import functools
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from tlflax import library_logs
from tlflax.errors import ExportError


def tflite_converter(keras_model, saved_model_dir: str):
  """TensorFlow's TFLite converter of `keras_model`, through a SavedModel of its inference call
  written to `saved_model_dir` (Keras's own LiteRT route), built-in ops only. Call it inside
  `library_logs.quiet()`, which undoes what writing the SavedModel does to the log level."""
  import keras
  import tensorflow as tf
  archive = keras.export.ExportArchive()
  archive.track(keras_model)
  image = keras_model.inputs[0]
  archive.add_endpoint('serve', functools.partial(keras_model.__call__, training=False),
                       input_signature=[tf.TensorSpec(image.shape, image.dtype)])
  archive.write_out(saved_model_dir, verbose=False)
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  return converter


def computes(op_name: str, layer: str) -> bool:
  """Whether a TFLite op's (fused) output name mentions the Keras layer `layer`, as in
  'model/block_16_project_BN_1/batchnorm/add_1;model/block_16_project_1/convolution' for
  block_16_project and block_16_project_BN (Keras adds _1, _2 to names it reuses)."""
  parts = (part for scope in op_name.split(';') for part in scope.split('/'))
  pattern = re.compile(re.escape(layer) + r'(_\d+)?')
  return any(pattern.fullmatch(part) for part in parts)


def ops_from(model_content: bytes, layer: str) -> list[str]:
  """The output names of a TFLite model's ops, in execution order, from the first that computes
  the Keras layer `layer` to the last (the rest of the network); `ExportError` if none does."""
  interpreter = _interpreter(model_content=model_content)
  names = {detail['index']: detail['name'] for detail in interpreter.get_tensor_details()}
  outputs = [names[output] for op in interpreter._get_ops_details()  # as the quantization
             for output in op['outputs']]                            # debugger reads them
  first = next((i for i, name in enumerate(outputs) if computes(name, layer)), None)
  if first is None:
    raise ExportError(f'no op of the TFLite model computes the layer {layer}')
  return outputs[first:]


def calibrated(converter, images):
  """`converter` (`tflite_converter`) set for int8 weights and activations, calibrated on
  `images` (uint8, (n, size, size, 3)) one at a time."""
  import tensorflow as tf
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([image[None]] for image in images)
  return converter


def save(keras_model, path, representative_images=None, float_from=None):
  """Writes `keras_model` (Keras on TensorFlow: `keras_model.check_backend`) as a TFLite file:
  float32, or with `representative_images` (uint8, (n, size, size, 3)) int8 weights and
  activations calibrated on them, except that from the Keras layer `float_from` on (the rest of
  the network, head included) the ops stay float32. Input and output stay uint8 images and
  float32 probabilities. What the converter prints is `library_logs.quiet`."""
  import tensorflow as tf
  with tempfile.TemporaryDirectory() as saved_model_dir, library_logs.quiet():
    converter = tflite_converter(keras_model, saved_model_dir)
    if representative_images is None:
      Path(path).write_bytes(converter.convert())
      return
    kept = ops_from(converter.convert(), float_from) if float_from else None
    calibrated(converter, representative_images)
    # the converter's own selective quantization (TFLite's quantization debugger)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=converter.representative_dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=kept))
    Path(path).write_bytes(debugger.get_nondebug_quantized_model())


def _interpreter(path: str = None, model_content: bytes = None):
  """LiteRT's interpreter (`ai_edge_litert`) of a file or of bytes, or TensorFlow's older copy of
  it where LiteRT is not installed."""
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    import tensorflow as tf
    Interpreter = tf.lite.Interpreter
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return Interpreter(model_path=path, model_content=model_content, num_threads=cores)


class TFLiteClassifier:
  """Runs a TFLite classifier file on uint8 image batches, returning float32 probabilities."""

  def __init__(self, path):
    self.path = Path(path)
    try:
      self.interpreter = _interpreter(str(self.path))
    except (ValueError, RuntimeError) as e:
      raise ExportError(f'{path} is not a readable TFLite model: {e}') from e
    self._input = self.interpreter.get_input_details()[0]
    self._output = self.interpreter.get_output_details()[0]
    shape = self._input['shape_signature']
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or self._input['dtype'] != np.uint8:
      raise ExportError(f'{path} does not take uint8 (batch, size, size, 3) images '
                        f'(its input: {self._input["dtype"].__name__} {list(shape)})')
    self.image_size = int(shape[1])
    self.num_classes = int(self._output['shape_signature'][-1])
    self._batch = None

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.uint8)
    try:
      if self._batch != len(images):
        with library_logs.quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
          self.interpreter.resize_tensor_input(self._input['index'], images.shape)
          self.interpreter.allocate_tensors()
        self._batch = len(images)
      self.interpreter.set_tensor(self._input['index'], images)
      self.interpreter.invoke()
    except (ValueError, RuntimeError) as e:  # e.g. an op this interpreter does not have
      raise ExportError(f'{self.path} does not run: {e}') from e
    outputs = np.array(self.interpreter.get_tensor(self._output['index']), np.float32)
    scale, zero_point = self._output['quantization']
    return (outputs - zero_point) * scale if scale else outputs  # a quantized output, or float
