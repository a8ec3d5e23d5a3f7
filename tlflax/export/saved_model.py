"""The classifier as a TensorFlow SavedModel, through `jax2tf` with native serialization: the
StableHLO of the JAX function, run by TensorFlow's `XlaCallModule` op, lowered for every platform
TensorFlow serves on, with a symbolic batch dimension, in the newest serialization version both
the installed JAX and TensorFlow support."""
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf
from tensorflow.compiler.tf2xla.python import xla

from tlflax import library_logs
from tlflax.classifier import Classifier
from tlflax.errors import ExportError
from tlflax.objectives import Objective

PLATFORMS = ('cpu', 'cuda', 'tpu')
SIGNATURE = 'serving_default'
INPUT_NAME = 'image'
OUTPUT_NAME = 'probabilities'


def serving_function(model: Classifier, variables: dict, objective: Objective) -> Callable:
  """uint8 (b, size, size, 3) RGB images -> float32 (b, classes) probabilities, computed in full
  float32 (whatever `compute.dtype` and the platform's default matmul precision) with the
  grouped-convolution depthwise (the op TensorFlow kernels know)."""
  model = model.clone(depthwise_implementation='grouped', dtype=jnp.float32)
  variables = jax.device_get(variables)

  def serve(images):
    with jax.default_matmul_precision('highest'):
      logits = model.apply(variables, model.spec.preprocessing(images.astype(jnp.float32)))
    return objective.probabilities(logits)
  return serve


def serialization_version() -> int:
  """The newest StableHLO calling-convention version JAX writes and TensorFlow's `XlaCallModule`
  runs; `ExportError` if they have none in common."""
  jax_default = jax.config.jax_export_calling_convention_version
  version = min(jax_default, xla.call_module_maximum_supported_version())
  if version < jax.export.minimum_supported_calling_convention_version:
    raise ExportError(f'TensorFlow {tf.__version__} runs serialization versions up to '
                      f'{version}, older than this JAX writes; upgrade TensorFlow')
  return version


def save(serve: Callable, path, image_size: int):
  """Writes `serve` (see `serving_function`) as a SavedModel whose `serving_default` signature
  takes `image` and returns `probabilities`."""
  converted = jax2tf.convert(serve, polymorphic_shapes=[f'(b, {image_size}, {image_size}, 3)'],
                             with_gradient=False, native_serialization_platforms=PLATFORMS)
  default = jax.config.jax_export_calling_convention_version
  jax.config.update('jax_export_calling_convention_version', serialization_version())
  try:
    _save_module(converted, path, image_size)
  finally:
    jax.config.update('jax_export_calling_convention_version', default)


def _save_module(converted, path, image_size: int):
  module = tf.Module()
  module.serve = tf.function(
      lambda image: {OUTPUT_NAME: converted(image)}, autograph=False,
      input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8, INPUT_NAME)])
  with library_logs.quiet():
    tf.saved_model.save(module, str(path), signatures={SIGNATURE: module.serve})


def load(path: Path) -> Callable[[np.ndarray], np.ndarray]:
  """A SavedModel written by `save`, as a function of a uint8 image batch."""
  signature = tf.saved_model.load(str(path)).signatures[SIGNATURE]
  return lambda images: signature(**{INPUT_NAME: tf.constant(images, tf.uint8)})[
      OUTPUT_NAME].numpy()
