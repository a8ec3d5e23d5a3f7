"""Is training input-bound or compute-bound? Pipeline images/s beside training-step images/s.

    .venv/bin/python bench/input_pipeline.py \
        [--folder ../shared/data/cats_vs_dogs_mini] [--epochs 4]

Measures, in one run on the same machine (medians over epochs/steps after a warm-up):
1. the tf.data training pipeline on the folder's train split at 160x160, batch 32, with and without
   augmentation (flip + rotation 0.2), in images/s;
2. the trainer's own jitted step (`tlflax.steps`, random weights) at batch 32: a frozen backbone
   (head only) and fine-tuning from Keras layer 100;
3. where augmentation should run: its cost per batch in tf.data (pipeline time with minus without)
   against the same flip + rotation done inside a jitted JAX step (checked equal first), and
   phase-1 training fed by the pipeline with augmentation in either place.
It prints the ratios last: pipeline / step > 1 means the input pipeline keeps up with compute.
"""
import argparse
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from tlflax import optim, param_groups
from tlflax.config import phase
from tlflax.classifier import Classifier, backbone_layers, init_variables
from tlflax.data import transforms
from tlflax.data.pipeline import PipelineConfig, train_dataset
from tlflax.data.sources import folder_splits
from tlflax.objectives import Objective
from tlflax.steps import TrainState, make_train_step

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'cats_vs_dogs_mini'
tf.config.set_visible_devices([], 'GPU')


def pipeline_rate(source, config, epochs):
  """Median images/s of whole training epochs (the first one is a warm-up)."""
  rates = []
  for epoch in range(epochs + 1):
    start, images = time.perf_counter(), 0
    for batch in train_dataset(source, config, epoch).as_numpy_iterator():
      images += len(batch['label'])
    if epoch:
      rates.append(images / (time.perf_counter() - start))
  return statistics.median(rates)


def median_rate(call, batch_size, steps):
  """Median images/s of `call()` (blocked on), after one call to compile and warm up."""
  jax.block_until_ready(call())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return batch_size / statistics.median(times)


PHASES = (('frozen backbone (phase 1)', None), ('fine-tune from layer 100 (phase 2)', 100))


def trainer_step(fine_tune_at):
  """The trainer's own jitted step (tlflax.steps) and a fresh state, for random weights."""
  model = Classifier()
  variables = init_variables(model, 160, jax.random.key(1), 'none')
  groups = param_groups.param_groups(variables['params'], backbone_layers(model), fine_tune_at)
  tx = optim.make_optimizer(phase(1, 'adam', 1e-4), groups, steps_per_epoch=1)
  step = make_train_step(model.apply, tx, groups, Objective(2, sigmoid=True), jax.random.key(2))
  return step, TrainState.create(variables, tx)


def training_step_rates(batch_size, steps):
  batch = {'image': jax.random.uniform(jax.random.key(0), (batch_size, 160, 160, 3),
                                       minval=-1, maxval=1),
           'label': jnp.arange(batch_size) % 2, 'mask': jnp.ones(batch_size, bool)}
  rates = {}
  for name, fine_tune_at in PHASES:
    step, state = trainer_step(fine_tune_at)

    def call():
      nonlocal state  # the step donates its state: thread it through
      state, metrics = step(state, batch)
      return metrics

    rates[name] = median_rate(call, batch_size, steps)
  return rates


def end_to_end_rates(source, batch_size, batches):
  """Phase-1 training fed by the pipeline: augmentation in tf.data vs in a jitted device step."""
  augment = jax.jit(lambda images, key: rotate_on_device(
      images, jax.random.uniform(key, (images.shape[0],), minval=-0.4 * math.pi,
                                 maxval=0.4 * math.pi),
      jax.random.bernoulli(key, 0.5, (images.shape[0],))))
  placements = {
      'tf.data': (PipelineConfig(batch_size=batch_size), lambda images, i: images),
      'device': (PipelineConfig(batch_size=batch_size, flip=False, rotation_factor=0.0),
                 lambda images, i: augment(images, jax.random.key(i)))}
  rates = {}
  for name, (config, device_augment) in placements.items():
    step, state = trainer_step(None)
    for i, batch in enumerate(train_dataset(source, config, 0).as_numpy_iterator()):
      if i == 1:  # after compiling
        start = time.perf_counter()
      state, metrics = step(state, {**batch, 'image': device_augment(batch['image'], i)})
      if i == batches:
        jax.block_until_ready(metrics)
        break
    rates[name] = (batches * batch_size) / (time.perf_counter() - start)
  return rates


def rotate_on_device(images, angles, flips):
  """Flip + rotation (bilinear, reflect) inside a jitted step: the on-device candidate."""
  _, height, width, _ = images.shape
  y, x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                      indexing='ij')
  cx, cy = (width - 1) / 2, (height - 1) / 2

  def one(image, angle, flip):
    image = jnp.where(flip, image[:, ::-1], image)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x_in = cos * x - sin * y + cx - cx * cos + cy * sin
    y_in = sin * x + cos * y + cy - cx * sin - cy * cos
    def channel(c):
      return jax.scipy.ndimage.map_coordinates(c, [y_in, x_in], order=1, mode='reflect')
    return jax.vmap(channel, in_axes=2, out_axes=2)(image)

  return jax.vmap(one)(images, angles, flips)


def augmentation_placement(batch_size, steps):
  """Per-batch cost of flip + rotation on device, after checking it equals the tf.data version."""
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (batch_size, 160, 160, 3)).astype(np.float32)
  angles = rng.uniform(-0.4 * math.pi, 0.4 * math.pi, batch_size).astype(np.float32)
  flips = np.zeros(batch_size, bool)
  device = jax.jit(rotate_on_device)
  reference = np.stack([transforms.rotate(tf.constant(i), tf.constant(a)).numpy()
                        for i, a in zip(images[:4], angles[:4])])
  difference = float(np.abs(np.asarray(device(images[:4], angles[:4], flips[:4])) -
                            reference).max())
  rate = median_rate(lambda: device(images, angles, flips), batch_size, steps)
  return rate, difference


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--folder', default=str(DEFAULT_FOLDER))
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--steps', type=int, default=8)
  args = parser.parse_args()
  batch_size = 32
  print(f'{jax.device_count()} {jax.default_backend()} device(s), {os.cpu_count()} CPU cores, '
        f'batch {batch_size}, 160x160')
  source = folder_splits(args.folder)['train']
  augmented = pipeline_rate(source, PipelineConfig(batch_size=batch_size), args.epochs)
  plain = pipeline_rate(source, PipelineConfig(batch_size=batch_size, flip=False,
                                               rotation_factor=0.0), args.epochs)
  print(f'pipeline, augmented:       {augmented:8.1f} img/s')
  print(f'pipeline, no augmentation: {plain:8.1f} img/s')
  steps = training_step_rates(batch_size, args.steps)
  for name, rate in steps.items():
    print(f'training step, {name}: {rate:8.1f} img/s')
  device_rate, difference = augmentation_placement(batch_size, args.steps)
  tf_ms = 1000 * batch_size * (1 / augmented - 1 / plain)
  device_ms = 1000 * batch_size / device_rate
  print(f'augmentation per batch: tf.data {tf_ms:.1f} ms, '
        f'on device (jitted JAX) {device_ms:.1f} ms '
        f'(max difference {difference:.2g} on [0, 255] images)')
  end_to_end = end_to_end_rates(source, batch_size, args.steps * 2)
  for name, rate in end_to_end.items():
    print(f'phase-1 training fed by the pipeline, augmentation in {name}: {rate:8.1f} img/s')
  print('ratios (pipeline img/s / training-step img/s; > 1: input keeps up):')
  for name, rate in steps.items():
    print(f'  {name}: augmented {augmented / rate:.2f}, no augmentation {plain / rate:.2f}')
  print(f'  augmentation on device / in tf.data, time per batch: {device_ms / tf_ms:.2f}')
  print(f"  end-to-end phase-1 training, tf.data / device augmentation: "
        f"{end_to_end['tf.data'] / end_to_end['device']:.2f}")


if __name__ == '__main__':
  main()
