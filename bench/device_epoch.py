"""Whole training epochs from data kept on the device, against the bare training step.

    python bench/device_epoch.py [--backbone mobilenet_v2] [--batch_sizes 32,256]
        [--dtypes float32,bfloat16] [--images 4096] [--folder PATH] [--epochs 3] [--steps 30]

Runs without TensorFlow (Pillow decodes where it is missing), so it runs on a bare accelerator
machine. The data: `--images` synthetic 160x160 photos written as PNG files to a temporary folder,
or an image folder (`--folder`, ImageFolder layout), decoded once into device memory
(`data.residency=device`). For each batch size, dtype and phase (1: head; 2: from the backbone's
tutorial-style layer), in one process:

  step   images/s of `bench/device_steps.py`'s jitted step on one batch already on the device
         (median of `--steps` steps after compilation): the most an epoch could give;
  epoch  images/s of whole epochs through `tlflax.resident_feed.ResidentFeed` (the epoch's
         permutation, gather, flip and rotation and scaling on the device, then the same step):
         median of the `--epochs` epochs after a first, untimed one.

Prints a table and each epoch / step ratio (the issue's target: at least 0.8).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_steps import IMAGE_SIZE, PHASES, make_step, step_rate  # noqa: E402

from tlflax import backbones, parallel  # noqa: E402
from tlflax.data import decoders  # noqa: E402
from tlflax.data.batching import PipelineConfig  # noqa: E402
from tlflax.data.sources import folder_splits  # noqa: E402
from tlflax.objectives import Objective  # noqa: E402
from tlflax.resident_feed import ResidentFeed  # noqa: E402


def synthetic_folder(root: Path, images: int) -> Path:
  """`images` noisy 160x160 PNGs in two classes (train), and a tenth as many (at least 20) for
  validation (a fifth of which becomes the test split)."""
  rng = np.random.default_rng(0)
  for split, count in (('train', images), ('validation', max(20, images // 10))):
    for name in ('a', 'b'):
      (root / split / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
      pixels = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
      Image.fromarray(pixels).save(root / split / 'ab'[i % 2] / f'{i}.png', compress_level=0)
  return root


def epoch_rate(splits, backbone: str, dtype, fine_tunes: bool, batch_size: int,
               epochs: int) -> float:
  """Median images/s of whole resident epochs (the untimed first one compiles)."""
  model, step, state = make_step(backbone, dtype, fine_tunes)
  mesh = parallel.data_mesh()
  config = PipelineConfig(image_size=IMAGE_SIZE, batch_size=batch_size,
                          preprocessing=model.spec.preprocessing)
  feed = ResidentFeed(model, Objective(2, sigmoid=True), splits, config, mesh, 'device')
  feed.split('train')  # decoded before timing
  state = parallel.replicate(state, mesh)
  rates = []
  for epoch in range(epochs + 1):
    start = time.perf_counter()
    for batch in feed.train(epoch):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    if epoch:
      rates.append(feed.steps_per_epoch * batch_size / (time.perf_counter() - start))
  return statistics.median(rates)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--backbone', default=backbones.DEFAULT_BACKBONE)
  parser.add_argument('--batch_sizes', default='32,256')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--images', type=int, default=4096, help='synthetic training images')
  parser.add_argument('--folder', default='', help='an image folder instead of synthetic images')
  parser.add_argument('--epochs', type=int, default=3, help='timed epochs (after one untimed)')
  parser.add_argument('--steps', type=int, default=30, help='timed steps for the step rate')
  args = parser.parse_args()
  device = jax.devices()[0]
  with tempfile.TemporaryDirectory() as scratch:
    folder = args.folder or synthetic_folder(Path(scratch), args.images)
    splits = folder_splits(folder)
    print(f'JAX {jax.__version__} on {jax.device_count()} x {device.device_kind} '
          f'({device.platform}), backbone {args.backbone}, {splits["train"].num_examples} '
          f'training images decoded with {decoders.name()}', flush=True)
    print('| batch | dtype | phase | step images/s | epoch images/s | epoch / step |')
    print('|---:|---|---|---:|---:|---:|')
    for batch_size in map(int, args.batch_sizes.split(',')):
      for dtype in args.dtypes.split(','):
        for name, fine_tunes in PHASES:
          step = step_rate(args.backbone, dtype, fine_tunes, batch_size, args.steps, 'auto')
          epoch = epoch_rate(splits, args.backbone, dtype, fine_tunes, batch_size, args.epochs)
          print(f'| {batch_size} | {dtype} | {name} | {step:.1f} | {epoch:.1f} | '
                f'{epoch / step:.2f} |', flush=True)


if __name__ == '__main__':
  main()
