"""What running the frozen layers in chunks (`compute.frozen_chunk`) gains, on this machine.

    .venv/bin/python bench/frozen_chunks.py [--batch 32] [--rounds 10] [--chunks 1,2,4,8,16]

MobileNetV2 (random weights, 160x160) at one batch size, in one process, each program compiled
first and then timed in interleaved rounds (medians): the forward pass (evaluation, phase 1's
frozen backbone) on the whole batch and in chunks of each size; phase 2's training step (from
Keras layer 100) with its frozen part on the whole batch, in chunks of 4, and with the trained
layers in chunks too (gradients through the loop); and the step's two parts alone: the trained
part from the frozen part's activations, and the frozen part in chunks of 4. Also counts the
minor page faults per call (fresh buffers the operating system has to map). Prints a table and
each chunked variant's speed-up over the whole batch last.
"""
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tlflax import chunking, optim, param_groups  # noqa: E402
from tlflax.classifier import Classifier, backbone_layers, init_variables  # noqa: E402
from tlflax.config import phase  # noqa: E402
from tlflax.objectives import Objective  # noqa: E402
from tlflax.steps import TrainState, make_train_step  # noqa: E402

flags.DEFINE_integer('batch', 32, 'Batch size.')
flags.DEFINE_integer('rounds', 10, 'Timed calls of each program (interleaved).')
flags.DEFINE_list('chunks', ['1', '2', '4', '8', '16'], 'Chunk sizes of the forward pass.')
FLAGS = flags.FLAGS


def programs(batch: int, chunks) -> dict:
  """{name: a call running one jitted program to completion}."""
  model = Classifier()
  variables = init_variables(model, 160, jax.random.key(1), 'none')
  images = jax.random.uniform(jax.random.key(0), (batch, 160, 160, 3), minval=-1, maxval=1)
  layers = len(backbone_layers(model))
  calls = {}
  for chunk in [0, *chunks]:
    forward = jax.jit(chunking.frozen_in_chunks(model, layers, chunk))
    calls[f'forward, chunk {chunk or "none (whole batch)"}'] = (
        lambda forward=forward: forward(variables, images))
  groups = param_groups.param_groups(variables['params'], backbone_layers(model), 100)
  tx = optim.make_optimizer(phase(1, 'rmsprop', 1e-5), groups, steps_per_epoch=1)
  batch_dict = {'image': images, 'label': jnp.arange(batch) % 2, 'mask': jnp.ones(batch, bool)}
  first_trained = param_groups.first_trained_layer(groups, backbone_layers(model))
  frozen = jax.jit(chunking.frozen_part(model, first_trained, 4))
  activations = {**batch_dict, 'activations': frozen(variables, images)}
  steps = {  # name: (apply_fn, input key)
      'phase-2 step, chunk none (whole batch)': (model.apply, 'image'),
      'phase-2 step, chunk 4': (chunking.frozen_in_chunks(model, first_trained, 4), 'image'),
      'phase-2 step, chunk 4, trained layers too': (
          chunking.frozen_in_chunks(model, layers, 4), 'image'),
      'phase-2 trained part alone': (
          lambda *args, **kwargs: model.apply(*args, start=first_trained, **kwargs),
          'activations')}
  for name, (apply_fn, input_key) in steps.items():
    step = make_train_step(apply_fn, tx, groups, Objective(2, sigmoid=True), jax.random.key(2),
                           input_key=input_key)
    state = [TrainState.create(jax.tree.map(jnp.array, variables), tx)]

    def train(step=step, state=state, batch=activations if input_key == 'activations'
              else batch_dict):
      state[0], metrics = step(state[0], batch)
      return metrics
    calls[name] = train
  calls['phase-2 frozen part alone, chunk 4'] = lambda: frozen(variables, images)
  return calls


def main(_):
  calls = programs(FLAGS.batch, [int(c) for c in FLAGS.chunks])
  for call in calls.values():  # compile and warm up
    jax.block_until_ready(call())
  times = {name: [] for name in calls}
  faults = {name: [] for name in calls}
  for _ in range(FLAGS.rounds):
    for name, call in calls.items():
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(time.perf_counter() - start)
      faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  print(f'batch {FLAGS.batch}, 160x160, {FLAGS.rounds} interleaved rounds, medians, on '
        f'{jax.devices()[0].device_kind} ({jax.device_count()} device(s))')
  print(f"{'program':45s} {'ms':>8s} {'page faults':>12s}")
  ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
  for name in calls:
    print(f'{name:45s} {ms[name]:8.1f} {statistics.median(faults[name]):12.0f}')
  for kind in ('forward', 'phase-2 step'):
    whole = ms[f'{kind}, chunk none (whole batch)']
    for name in calls:
      if name.startswith(f'{kind},') and 'whole' not in name:
        print(f'{name}: {whole / ms[name]:.2f}x the whole batch')


if __name__ == '__main__':
  app.run(main)
