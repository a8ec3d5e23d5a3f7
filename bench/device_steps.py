"""Training-step speed and matmul precision on whatever JAX device is there (GPU, TPU or CPU).

    python bench/device_steps.py [--backbone mobilenet_v2] [--batch_sizes 32,256] [--steps 30]
        [--depthwise auto] [--weights ../shared/weights/mobilenet_v2_1.0_224_ptq.tflite]

Needs jax, flax, optax and numpy, and the `tflite` package for a .tflite weights file, but no
TensorFlow (so the tutorial's Adam is built here with optax, not from a config): it runs where the
input pipeline's dependencies are not installed, such as a bare GPU machine. Measures, in one run:
1. the trainer's jitted step (`tlflax.steps`, random weights, 160x160) of `--backbone` in
   images/s, median over timed steps after compilation, for phase 1 (head only) and phase 2 (from
   the backbone's tutorial-style layer, `fine_tune_at='default'`), at each batch size, in float32
   and bfloat16, for each depthwise implementation asked for;
2. how far the default matmul precision moves the backbone's pooled features from 'highest'
   precision, on `--weights` (on NVIDIA GPUs the default computes float32 convolutions and matrix
   products in TF32).
Prints a table, then the ratios bfloat16 / float32.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tlflax import backbones, param_groups  # noqa: E402
from tlflax.classifier import Classifier, backbone_layers, init_variables  # noqa: E402
from tlflax.objectives import Objective  # noqa: E402
from tlflax.steps import TrainState, make_train_step  # noqa: E402

IMAGE_SIZE = 160
PHASES = (('phase 1 (head)', False), ('phase 2 (fine_tune_at default)', True))


def make_step(backbone: str, dtype, fine_tunes: bool, depthwise: str = 'auto'):
  """(model, jitted train step, initial state): the trainer's step with the tutorial's Adam at a
  constant rate, random weights, phase 1 (head) or phase 2 (`fine_tunes`)."""
  model = Classifier(backbone, dtype=jnp.dtype(dtype), depthwise_implementation=depthwise)
  variables = init_variables(model, IMAGE_SIZE, jax.random.key(1), 'none')
  layers = backbone_layers(model)
  fine_tune_at = (backbones.layer_position(layers, model.spec.fine_tune_at) if fine_tunes
                  else None)
  groups = param_groups.param_groups(variables['params'], layers, fine_tune_at)
  tx = optax.multi_transform({param_groups.TRAINABLE: optax.adam(1e-4, eps=1e-7),
                              param_groups.FROZEN: optax.set_to_zero()}, groups)
  step = make_train_step(model.apply, tx, groups, Objective(2, sigmoid=True), jax.random.key(2))
  return model, step, TrainState.create(variables, tx)


def step_rate(backbone: str, dtype, fine_tunes: bool, batch_size: int, steps: int,
              depthwise: str) -> float:
  """Median images/s of the jitted train step on one batch kept on the device."""
  _, step, state = make_step(backbone, dtype, fine_tunes, depthwise)
  batch = {'image': jax.random.uniform(jax.random.key(0), (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3),
                                       minval=-1, maxval=1),
           'label': jnp.arange(batch_size) % 2, 'mask': jnp.ones(batch_size, bool)}
  times = []
  for i in range(steps + 3):  # 3 untimed: compilation and warm-up
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    if i >= 3:
      times.append(time.perf_counter() - start)
  return batch_size / statistics.median(times)


def precision_effect(backbone: str, weights: str) -> tuple[float, float]:
  """(max |difference|, max |feature|) of the pooled backbone features on random images, default
  precision against 'highest'."""
  model = Classifier(backbone)
  variables = init_variables(model, IMAGE_SIZE, jax.random.key(1), weights)
  images = jax.random.uniform(jax.random.key(0), (8, IMAGE_SIZE, IMAGE_SIZE, 3), minval=-1,
                              maxval=1)

  def features(v, x):
    return model.apply(v, x, method=lambda m, x: m.features(x))
  default = np.asarray(jax.jit(features)(variables, images))
  with jax.default_matmul_precision('highest'):
    highest = np.asarray(jax.jit(features)(variables, images))
  return float(np.abs(default - highest).max()), float(np.abs(highest).max())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--backbone', default=backbones.DEFAULT_BACKBONE,
                      help=f'one of {", ".join(backbones.names())}')
  parser.add_argument('--batch_sizes', default='32,256')
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--depthwise', default='auto', help='comma-separated implementations')
  parser.add_argument('--weights', default='none', help='backbone weights for the precision check')
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f'JAX {jax.__version__} on {jax.device_count()} x {device.device_kind} '
        f'({device.platform}), backbone {args.backbone}', flush=True)
  rates = {}
  difference, size = precision_effect(args.backbone, args.weights)
  print(f'default vs highest matmul precision, weights {args.weights}: max |feature difference| '
        f'{difference:.2e} (features up to {size:.2f})', flush=True)
  for depthwise in args.depthwise.split(','):
    for batch_size in map(int, args.batch_sizes.split(',')):
      for dtype in ('float32', 'bfloat16'):
        for name, fine_tunes in PHASES:
          rate = step_rate(args.backbone, dtype, fine_tunes, batch_size, args.steps, depthwise)
          rates[depthwise, batch_size, dtype, name] = rate
          print(f'{depthwise:8s} batch {batch_size:4d}  {dtype:8s}  {name:26s}  {rate:10.1f} '
                'images/s', flush=True)
  for (depthwise, batch_size, dtype, name), rate in rates.items():
    if dtype == 'bfloat16':
      print(f'bfloat16 / float32, {depthwise}, batch {batch_size}, {name}: '
            f'{rate / rates[depthwise, batch_size, "float32", name]:.2f}x')


if __name__ == '__main__':
  main()
