"""tlflax against Keras on TensorFlow, per backbone family: training-step and inference images/s.

    python bench/backbones.py [--backbones mobilenet_v2,resnet50,...] [--batch_size 32]
        [--steps 5]

For each family's smallest member (default), on random weights at 160x160, in one process on this
machine: the tutorial's phase-2 training step (Adam, the backbone frozen below its tutorial-style
layer, `fine_tune_at='default'`, BatchNorm in inference mode, dropout 0.2 and a one-logit head)
and inference (pooled features -> logits), as tlflax's jitted step and Keras's
`train_on_batch` / `predict_on_batch` of the same application with the same layers frozen. Medians
over `--steps` timed steps after compilation and warm-up; the table gives both rates and
tlflax / Keras.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from device_steps import IMAGE_SIZE, step_rate  # noqa: E402
from tlflax import backbones  # noqa: E402
from tlflax.classifier import Classifier, init_variables  # noqa: E402

SMALLEST = ('mobilenet_v2', 'mobilenet_v3_small', 'efficientnet_b0', 'efficientnetv2_b0',
            'resnet50', 'resnet50_v2', 'convnext_tiny')
WARMUP = 2


def median_rate(run, batch_size: int, steps: int) -> float:
  """images/s: `batch_size` over the median time of `run()` after `WARMUP` untimed calls."""
  times = []
  for i in range(steps + WARMUP):
    start = time.perf_counter()
    run()
    if i >= WARMUP:
      times.append(time.perf_counter() - start)
  return batch_size / statistics.median(times)


def tlflax_inference_rate(name: str, images, steps: int) -> float:
  model = Classifier(name)
  variables = init_variables(model, IMAGE_SIZE, jax.random.key(1), 'none')
  apply = jax.jit(model.apply)
  return median_rate(lambda: jax.block_until_ready(apply(variables, images)), len(images), steps)


def keras_rates(name: str, images, steps: int) -> tuple[float, float]:
  """(training, inference) images/s of the Keras application as the tutorial builds it."""
  import keras
  spec = backbones.get(name)
  base = spec.keras_application(keras, input_shape=images.shape[1:], include_top=False,
                                weights=None, pooling='avg',
                                **backbones.arguments(spec, None))
  frozen = backbones.layer_position(backbones.table(spec), spec.fine_tune_at)
  for layer in base.layers[:frozen]:
    layer.trainable = False
  inputs = keras.Input(images.shape[1:])
  x = base(inputs, training=False)
  x = keras.layers.Dropout(0.2)(x)
  model = keras.Model(inputs, keras.layers.Dense(1)(x))
  model.compile(optimizer=keras.optimizers.Adam(1e-4),
                loss=keras.losses.BinaryCrossentropy(from_logits=True))
  labels = (np.arange(len(images)) % 2).astype(np.float32)[:, None]
  training = median_rate(lambda: model.train_on_batch(images, labels), len(images), steps)
  inference = median_rate(lambda: model.predict_on_batch(images), len(images), steps)
  return training, inference


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--backbones', default=','.join(SMALLEST))
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=5)
  args = parser.parse_args()
  import tensorflow as tf
  device = jax.devices()[0]
  print(f'JAX {jax.__version__} on {device.device_kind} ({device.platform}), TensorFlow '
        f'{tf.__version__}, {os.cpu_count()} CPUs; batch {args.batch_size}, {IMAGE_SIZE}x'
        f'{IMAGE_SIZE}, median of {args.steps} steps', flush=True)
  images = np.random.default_rng(0).uniform(-1, 1, (args.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3))
  images = images.astype(np.float32)
  print('| backbone | tlflax train | Keras train | ratio | tlflax inference | Keras inference '
        '| ratio |\n|---|---|---|---|---|---|---|', flush=True)
  for name in args.backbones.split(','):
    train = step_rate(name, 'float32', True, args.batch_size, args.steps, 'auto')
    infer = tlflax_inference_rate(name, images, args.steps)
    keras_train, keras_infer = keras_rates(name, images, args.steps)
    print(f'| {name} | {train:.1f} | {keras_train:.1f} | {train / keras_train:.2f}x | '
          f'{infer:.1f} | {keras_infer:.1f} | {infer / keras_infer:.2f}x |', flush=True)


if __name__ == '__main__':
  main()
