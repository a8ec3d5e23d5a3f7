"""TFLite files of the classifier, converted from its Keras model (`tlflax.export.keras_model`) by
Keras's own LiteRT exporter with TFLite's built-in ops only (no TensorFlow "Flex" ops, which phones
and LiteRT's interpreter lack), float32 or with int8 post-training quantization, and a runner for
them.

From the Keras model rather than from the jax2tf SavedModel: both convert, but on MobileNetV2 at
160x160 (a 2-core x86 CPU, one image at a time, measured side by side with the interpreter's
default threads) the Keras route ran a float image in 3.4 ms against 9.0 ms for the StableHLO
route (whose symbolic batch leaves shape arithmetic around every layer), and quantized to int8 in
1.7 ms against 44 ms, agreeing with the float model's top-1 class on 99% of 100 photos against 91%
(`bench/export_artifacts.py` measures the files an export writes).
"""
import os
from pathlib import Path

import numpy as np

from tlflax.errors import ExportError


def save(keras_model, path, representative_images=None):
  """Writes `keras_model` (Keras on TensorFlow: `keras_model.check_backend`) as a TFLite file:
  float32, or with `representative_images` (uint8, (n, size, size, 3)) int8 weights and
  activations calibrated on them (input and output stay uint8 images and float32
  probabilities)."""
  import tensorflow as tf
  options = {'target_spec': {'supported_ops': [tf.lite.OpsSet.TFLITE_BUILTINS]}}
  if representative_images is not None:
    def representative_dataset():
      for image in representative_images:
        yield [image[None]]
    options.update(optimizations=[tf.lite.Optimize.DEFAULT],
                   representative_dataset=representative_dataset)
  keras_model.export(str(path), format='litert', verbose=False, **options)


def _interpreter(path: str):
  """LiteRT's interpreter (`ai_edge_litert`), or TensorFlow's older copy of it where LiteRT is not
  installed."""
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    import tensorflow as tf
    Interpreter = tf.lite.Interpreter
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return Interpreter(model_path=path, num_threads=cores)


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
