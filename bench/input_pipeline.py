"""Where a training epoch's host time goes: the streamed tf.data pipeline against data kept on the
device, beside the training step.

    .venv/bin/python bench/input_pipeline.py \
        [--folder ../shared/data/cats_vs_dogs_mini] [--epochs 3] [--steps 8]

Measures, in one run on the same machine, at 160x160 and batch 32, on the folder's train split
(medians over epochs or steps after a warm-up), each in images/s and in CPU seconds per 1000
images (the process's user + system time, all threads):
1. making the batches alone, augmented (flip + rotation 0.2) and not: the streamed tf.data
   pipeline (`data.residency='stream'`: decode, resize, augment on the host), and the resident
   feed (`'device'`: images decoded once; gather, augmentation and scaling in a jitted call);
2. the trainer's jitted step alone (random weights) in phase 1 (head) and phase 2 (from layer 100);
3. whole augmented training epochs, phase 1 and phase 2, fed each way.
Prints the ratios resident / streamed last.
"""
import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tlflax import optim, param_groups, parallel  # noqa: E402
from tlflax.config import phase  # noqa: E402
from tlflax.classifier import Classifier, backbone_layers, init_variables  # noqa: E402
from tlflax.data.batching import PipelineConfig, prefetch_to_devices  # noqa: E402
from tlflax.data.pipeline import train_dataset  # noqa: E402
from tlflax.data.sources import folder_splits  # noqa: E402
from tlflax.objectives import Objective  # noqa: E402
from tlflax.resident_feed import ResidentFeed  # noqa: E402
from tlflax.steps import TrainState, make_train_step  # noqa: E402

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'cats_vs_dogs_mini'
BATCH = 32
PHASES = (('phase 1 (head)', None), ('phase 2 (from layer 100)', 100))
tf.config.set_visible_devices([], 'GPU')


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def timed(run, images: int, repeats: int) -> tuple[float, float]:
  """(median images/s, median CPU s per 1000 images) of `run()` over `repeats` calls after an
  untimed one; `run` blocks until its work is done."""
  run()
  rates, costs = [], []
  for _ in range(repeats):
    start, cpu = time.perf_counter(), cpu_seconds()
    run()
    rates.append(images / (time.perf_counter() - start))
    costs.append(1000 * (cpu_seconds() - cpu) / images)
  return statistics.median(rates), statistics.median(costs)


def feeds(splits, augmented: bool):
  """{'streamed': epoch -> batches, 'resident': epoch -> batches} and steps per epoch."""
  settings = {} if augmented else {'flip': False, 'rotation_factor': 0.0}
  config = PipelineConfig(batch_size=BATCH, **settings)
  resident = ResidentFeed(Classifier(), Objective(2, sigmoid=True), splits, config,
                          parallel.data_mesh(), 'device')
  resident.split('train')  # decoded once, before timing
  sharding = parallel.batch_sharding(parallel.data_mesh())
  return ({'streamed': lambda epoch: prefetch_to_devices(
              train_dataset(splits['train'], config, epoch).as_numpy_iterator(), sharding),
           'resident': resident.train}, resident.steps_per_epoch)


def trainer_step(fine_tune_at):
  """The trainer's own jitted step (tlflax.steps) and a fresh state, for random weights."""
  model = Classifier()
  variables = init_variables(model, 160, jax.random.key(1), 'none')
  groups = param_groups.param_groups(variables['params'], backbone_layers(model), fine_tune_at)
  tx = optim.make_optimizer(phase(1, 'adam', 1e-4), groups, steps_per_epoch=1)
  step = make_train_step(model.apply, tx, groups, Objective(2, sigmoid=True), jax.random.key(2))
  return step, parallel.replicate(TrainState.create(variables, tx), parallel.data_mesh())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--folder', default=str(DEFAULT_FOLDER))
  parser.add_argument('--epochs', type=int, default=3)
  parser.add_argument('--steps', type=int, default=8)
  args = parser.parse_args()
  print(f'{jax.device_count()} {jax.default_backend()} device(s), {os.cpu_count()} CPU cores, '
        f'batch {BATCH}, 160x160')
  splits = folder_splits(args.folder)
  results = {}
  for augmented in (True, False):
    made, steps = feeds(splits, augmented)
    for name, batches in made.items():
      def epoch(batches=batches):
        jax.block_until_ready(list(batches(0)))
      results['batches', name, augmented] = timed(epoch, steps * BATCH, args.epochs)
  made, steps = feeds(splits, augmented=True)
  one_batch = next(made['resident'](0))
  for phase_name, fine_tune_at in PHASES:
    step, state = trainer_step(fine_tune_at)

    def one_step():
      nonlocal state  # the step donates its state
      state, metrics = step(state, one_batch)
      jax.block_until_ready(metrics)
    results['step', phase_name] = timed(one_step, BATCH, args.steps)
    for name, batches in made.items():
      def whole_epoch(batches=batches):
        nonlocal state
        for batch in batches(0):
          state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
      results['epoch', phase_name, name] = timed(whole_epoch, steps * BATCH, args.epochs)
  def label(key, leave_out=()):
    return ', '.join(('augmented' if part else 'no augmentation') if isinstance(part, bool)
                     else part for part in key if part not in leave_out)
  print('| what | images/s | CPU s per 1000 images |')
  print('|---|---:|---:|')
  for key, (rate, cost) in results.items():
    print(f'| {label(key)} | {rate:.1f} | {cost:.1f} |')
  print('ratios, resident / streamed (images/s):')
  for key, (rate, _) in results.items():
    if 'resident' in key:
      streamed = results[tuple('streamed' if part == 'resident' else part for part in key)]
      print(f'  {label(key, ("resident",))}: {rate / streamed[0]:.2f}x')


if __name__ == '__main__':
  main()
