"""The tutorial recipe three ways on one machine: tlflax, Keras 3 on TensorFlow, Keras 3 on JAX.

    .venv/bin/python bench/keras_comparison.py [--train_images 320] [--val_images 160] [--epochs 3]
                                               [--rounds 2] [--out bench/results]

Same data (a class-balanced subset of ../shared/data/cats_vs_dogs_mini, linked, not copied), same
weights (the shared ImageNet MobileNetV2 TFLite file, ported once), 160x160, batch 32, both phases
(head with Adam 1e-4; then from layer 100 with RMSprop 1e-5), each for `--epochs` epochs. Runs:

    tlflax          the recipe as configured (augmentation in tf.data, every step runs the backbone)
    tlflax-cached   configs/cats_dogs.py:cached (no augmentation; frozen-part caches)
    tlflax-whole-batch  the recipe with compute.frozen_chunk=0: the frozen layers on the whole
                    batch, not in chunks of 4 (what chunking gains; not run by default)
    keras-tf        the tutorial's Keras code (augmentation layers in the model), TensorFlow backend
    keras-jax       the same code on Keras's JAX backend

Each run is its own process; the runs are interleaved (A B C D A B C D ...) so that machine noise
hits all alike. Per phase: training images/s (median over the epochs after each phase's first),
evaluation images/s (validation, same epochs), the first step's time less a typical step
(compilation), the phase's wall time (compile, caches, every epoch and its validation) and the
process's peak resident memory; per run, the whole process's wall time (start-up, weights, both
phases, and for tlflax its test pass, reports and plots).

Prediction, after each round's tlflax run: `main.py --mode=predict` on the 2000 photos of the
shared mini set with that run's workdir, and Keras's `model.predict` on
`image_dataset_from_directory` of the same folder with the same network (the ported weights and a
one-logit head), each a whole process, timed from start to end.

tlflax's runs and predictions share a compilation cache (`compute.compilation_cache_dir`) that
starts empty with the benchmark: each tlflax run of the first round compiles its programs, later
rounds find them compiled, as a user's second run would. The JSON keeps every round.

Writes OUT/keras_comparison.{md,json,png} and prints the ratios last.
"""
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tlflax import xla_flags  # noqa: E402  (after the path set-up above)

SHARED = ROOT.parent / 'shared'
DATA = SHARED / 'data' / 'cats_vs_dogs_mini'
WEIGHTS = SHARED / 'weights' / 'mobilenet_v2_1.0_224_ptq.tflite'
XLA_DEFAULTS = ('--xla_cpu_enable_concurrency_optimized_scheduler=true',)
RUNS = ('tlflax', 'tlflax-cached', 'tlflax-whole-batch', 'keras-tf', 'keras-jax')
DEFAULT_RUNS = ('tlflax', 'tlflax-cached', 'keras-tf', 'keras-jax')
PHASES = ('feature_extraction', 'fine_tune')
IMAGE_SIZE, BATCH, FINE_TUNE_AT = 160, 32, 100

flags.DEFINE_integer('train_images', 320, 'Training images (half per class).')
flags.DEFINE_integer('val_images', 160, 'Validation images (half per class).')
flags.DEFINE_integer('epochs', 3, 'Epochs per phase; the first of each phase is warm-up.')
flags.DEFINE_integer('rounds', 2, 'Times each run is repeated (interleaved).')
flags.DEFINE_string('out', str(ROOT / 'bench' / 'results'), 'Results folder.')
flags.DEFINE_list('runs', list(DEFAULT_RUNS), f'Which runs, of {RUNS}.')
flags.DEFINE_bool('predict', True, 'Also time prediction (needs the tlflax and keras-tf runs).')
flags.DEFINE_string('worker', None, 'Internal: run one framework and print its JSON.')
flags.DEFINE_string('workdir', None, 'Internal: the subset and ported weights.')
FLAGS = flags.FLAGS


TEST_IMAGES = 32  # tlflax's final test pass needs a test/ split; Keras's recipe skips it
COMPILATION_CACHE = 'jax_compilation_cache'  # in the benchmark's folder: empty at its start


def make_subset(workdir: Path, train_images: int, val_images: int):
  """train/, validation/ and test/ with n/2 images of each class, as symlinks."""
  for split, source, first, count in (('train', 'train', 0, train_images),
                                      ('validation', 'validation', 0, val_images),
                                      ('test', 'validation', val_images // 2, TEST_IMAGES)):
    for class_dir in sorted((DATA / source).iterdir()):
      target = workdir / 'data' / split / class_dir.name
      target.mkdir(parents=True)
      for image in sorted(class_dir.iterdir())[first:first + count // 2]:
        (target / image.name).symlink_to(image)


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- tlflax
def run_tlflax(workdir: Path, cached: bool, frozen_chunk=None) -> dict:
  from configs import cats_dogs
  from tlflax.train import train_and_evaluate
  config = cats_dogs.get_config('local,cached' if cached else 'local')
  config.compute.frozen_chunk = frozen_chunk
  config.compute.compilation_cache_dir = str(workdir / COMPILATION_CACHE)
  config.data.folder = str(workdir / 'data')
  config.model.weights = str(workdir / 'weights.msgpack')
  for phase in config.phases.values():
    phase.epochs = FLAGS.epochs
  run_dir = tempfile.mkdtemp(prefix='run-cached-' if cached else 'run-', dir=workdir)
  history = train_and_evaluate(config, run_dir).history  # a fresh workdir: no resuming
  (workdir / 'latest_tlflax_run').write_text(run_dir)
  phases = {}
  for name in PHASES:
    epochs = [e for e in history['epochs'] if e['phase'] == name]
    steady = epochs[1:] or epochs
    phases[name] = {
        'train_images_per_s': [e['images_per_second'] for e in steady],
        'eval_images_per_s': [e['val_images_per_second'] for e in steady],
        'first_step_s': epochs[0]['first_step_seconds'],
        'step_s': BATCH / statistics.median(e['images_per_second'] for e in steady),
        'wall_s': history['phases'][name]['seconds']}
  return phases


# ---------------------------------------------------------------------------- Keras
def keras_base_with_ported_weights(keras, variables):
  """keras.applications.MobileNetV2 without top, its weights set from the ported Flax variables."""
  import numpy as np
  base = keras.applications.MobileNetV2(input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                        include_top=False, weights=None)
  params, stats = variables['params'], variables['batch_stats']
  for layer in base.layers:
    if layer.name not in params:
      continue
    p = params[layer.name]
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.set_weights([p['scale'], p['bias'], stats[layer.name]['mean'],
                         stats[layer.name]['var']])
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
      layer.set_weights([np.transpose(p['kernel'], (0, 1, 3, 2))])
    else:
      layer.set_weights([p['kernel']])
  return base


class PhaseTimer:
  """Keras callback: per-epoch first-step, training and validation times, and the fit's wall."""

  def __init__(self, keras):
    self.callback = keras.callbacks.LambdaCallback(
        on_train_begin=lambda logs: self._mark('fit'),
        on_epoch_begin=lambda epoch, logs: self._mark('epoch'),
        on_train_batch_end=lambda batch, logs: batch == 0 and self._mark('first'),
        on_test_begin=lambda logs: self._mark('test'),
        on_test_end=lambda logs: self._mark('test_end'),
        on_epoch_end=lambda epoch, logs: self._epoch_end())
    self.marks, self.epochs = {}, []

  def _mark(self, name):
    self.marks[name] = time.perf_counter()

  def _epoch_end(self):
    m = self.marks
    self.epochs.append({'first_step_s': m['first'] - m['epoch'], 'train_after_first_s':
                        m['test'] - m['first'], 'eval_s': m['test_end'] - m['test']})


def run_keras(workdir: Path) -> dict:
  import keras
  import tensorflow as tf

  from tlflax.weights.native import load_variables
  variables, _ = load_variables(workdir / 'weights.msgpack')
  kwargs = dict(batch_size=BATCH, image_size=(IMAGE_SIZE, IMAGE_SIZE), seed=0)
  train = keras.utils.image_dataset_from_directory(workdir / 'data' / 'train', shuffle=True,
                                                   **kwargs).prefetch(tf.data.AUTOTUNE)
  validation = keras.utils.image_dataset_from_directory(
      workdir / 'data' / 'validation', shuffle=False, **kwargs).prefetch(tf.data.AUTOTUNE)
  augmentation = keras.Sequential([keras.layers.RandomFlip('horizontal'),
                                   keras.layers.RandomRotation(0.2)])
  base = keras_base_with_ported_weights(keras, variables)
  base.trainable = False
  inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
  x = keras.applications.mobilenet_v2.preprocess_input(augmentation(inputs))
  x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
  outputs = keras.layers.Dense(1)(keras.layers.Dropout(0.2)(x))
  model = keras.Model(inputs, outputs)
  loss = keras.losses.BinaryCrossentropy(from_logits=True)
  metrics = [keras.metrics.BinaryAccuracy(threshold=0.0)]
  steps = FLAGS.train_images // BATCH
  phases = {}
  for name in PHASES:
    if name == 'fine_tune':
      base.trainable = True
      for layer in base.layers[:FINE_TUNE_AT]:
        layer.trainable = False
      optimizer = keras.optimizers.RMSprop(1e-5)
    else:
      optimizer = keras.optimizers.Adam(1e-4)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    timer = PhaseTimer(keras)
    start = time.perf_counter()
    model.fit(train, epochs=FLAGS.epochs, validation_data=validation, callbacks=[timer.callback],
              verbose=0)
    wall = time.perf_counter() - start
    steady = timer.epochs[1:] or timer.epochs
    train_rates = [(steps - 1) * BATCH / e['train_after_first_s'] for e in steady]
    phases[name] = {
        'train_images_per_s': train_rates,
        'eval_images_per_s': [FLAGS.val_images / e['eval_s'] for e in steady],
        'first_step_s': timer.epochs[0]['first_step_s'],
        'step_s': BATCH / statistics.median(train_rates), 'wall_s': wall}
  return phases


def keras_predict(workdir: Path) -> int:
  """Keras's `model.predict` over every photo of the mini set (its class folders as given, the
  labels unused): the network of `run_keras`; returns the number of images."""
  import keras
  import tensorflow as tf

  from tlflax.weights.native import load_variables
  variables, _ = load_variables(workdir / 'weights.msgpack')
  images = keras.utils.image_dataset_from_directory(
      DATA, labels=None, batch_size=BATCH, image_size=(IMAGE_SIZE, IMAGE_SIZE),
      shuffle=False).prefetch(tf.data.AUTOTUNE)
  base = keras_base_with_ported_weights(keras, variables)
  inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
  x = keras.layers.GlobalAveragePooling2D()(
      base(keras.applications.mobilenet_v2.preprocess_input(inputs), training=False))
  model = keras.Model(inputs, keras.layers.Dense(1)(x))
  return len(model.predict(images, verbose=0))


def tlflax_predict_command(workdir: Path, output: Path) -> list[str]:
  """`main.py --mode=predict` on the mini set with the latest tlflax run's workdir and config,
  writing `output`."""
  run_dir = (workdir / 'latest_tlflax_run').read_text()
  return [sys.executable, str(ROOT / 'main.py'), '--config=configs/cats_dogs.py:local',
          f'--workdir={run_dir}', '--mode=predict', f'--inputs={DATA}', f'--output={output}',
          f'--config.data.folder={workdir / "data"}',
          f'--config.model.weights={workdir / "weights.msgpack"}',
          f'--config.compute.compilation_cache_dir={workdir / COMPILATION_CACHE}',
          *(f'--config.phases.{phase}.epochs={FLAGS.epochs}' for phase in PHASES)]


def timed_prediction(name: str, workdir: Path) -> dict:
  """A prediction process over the mini set, timed from its start to its end."""
  csv = workdir / 'tlflax_predictions.csv'
  if name == 'tlflax':
    csv.unlink(missing_ok=True)  # predict writes a new file only
    command = tlflax_predict_command(workdir, csv)
  else:
    command = [sys.executable, __file__, '--worker=keras-predict', f'--workdir={workdir}']
  start = time.perf_counter()
  result = subprocess.run(command, env=worker_env(name), cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if result.returncode:
    raise RuntimeError(f'{name} prediction failed:\n{result.stdout[-3000:]}\n'
                       f'{result.stderr[-3000:]}')
  if name == 'tlflax':
    images = len(csv.read_text().splitlines()) - 1
  else:
    images = int(next(line for line in result.stdout.splitlines()
                      if line.startswith('IMAGES '))[len('IMAGES '):])
  return {'wall_s': wall, 'images': images, 'images_per_s': images / wall}


# ---------------------------------------------------------------------------- driver
def worker(name: str, workdir: Path):
  if name == 'keras-predict':
    print(f'IMAGES {keras_predict(workdir)}')
    return
  if name.startswith('tlflax'):
    phases = run_tlflax(workdir, cached=name == 'tlflax-cached',
                        frozen_chunk=0 if name == 'tlflax-whole-batch' else None)
  else:
    phases = run_keras(workdir)
  print('RESULT ' + json.dumps({'phases': phases, 'peak_rss_mb': peak_rss_mb()}))


def worker_env(name: str) -> dict:
  """The environment of a worker process for run `name`."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
             KERAS_BACKEND='jax' if name == 'keras-jax' else 'tensorflow')
  if name.startswith('keras'):  # XLA's defaults, not the flags importing tlflax would add
    env['XLA_FLAGS'] = xla_flags.with_flags(env.get('XLA_FLAGS', ''), XLA_DEFAULTS)
  return env


def run_worker(name: str, workdir: Path) -> dict:
  env = worker_env(name)
  command = [sys.executable, __file__, f'--worker={name}', f'--workdir={workdir}',
             f'--epochs={FLAGS.epochs}', f'--train_images={FLAGS.train_images}',
             f'--val_images={FLAGS.val_images}']
  start = time.perf_counter()
  result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  lines = [line for line in result.stdout.splitlines() if line.startswith('RESULT ')]
  if result.returncode or not lines:
    raise RuntimeError(f'{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
  return {**json.loads(lines[-1][len('RESULT '):]), 'process_wall_s': wall}


def summarize(samples: dict) -> dict:
  """Medians over rounds (and over steady epochs for the rates)."""
  table = {}
  for name, runs in samples.items():
    if name == 'prediction':
      continue
    table[name] = {'peak_rss_mb': statistics.median(r['peak_rss_mb'] for r in runs),
                   'process_wall_s': statistics.median(r['process_wall_s'] for r in runs)}
    for phase in PHASES:
      per = [r['phases'][phase] for r in runs]
      table[name][phase] = {
          'train_images_per_s': statistics.median(x for p in per for x in p['train_images_per_s']),
          'eval_images_per_s': statistics.median(x for p in per for x in p['eval_images_per_s']),
          'compile_s': statistics.median(max(p['first_step_s'] - p['step_s'], 0) for p in per),
          'wall_s': statistics.median(p['wall_s'] for p in per)}
  if samples.get('prediction'):
    table['prediction'] = {
        who: {key: statistics.median(r[who][key] for r in samples['prediction'])
              for key in ('wall_s', 'images_per_s')} for who in ('tlflax', 'keras-tf')}
  return table


METRICS = (('train_images_per_s', 'train img/s', True), ('eval_images_per_s', 'eval img/s', True),
           ('compile_s', 'compile s', False), ('wall_s', 'phase wall s', False))


def ratios(table: dict) -> list[str]:
  """tlflax (or tlflax-cached) over each Keras run, and tlflax over tlflax-whole-batch: > 1
  means the first is better."""
  lines = []
  for ours, others in (('tlflax', ('keras-tf', 'keras-jax', 'tlflax-whole-batch')),
                       ('tlflax-cached', ('keras-tf', 'keras-jax'))):
    for theirs in others:
      if ours not in table or theirs not in table:
        continue
      lines.append(f'{ours} / {theirs}, whole process: wall s '
                   f"{table[theirs]['process_wall_s'] / table[ours]['process_wall_s']:.2f}x")
      for phase in PHASES:
        parts = []
        for key, label, higher_is_better in METRICS:
          a, b = table[ours][phase][key], table[theirs][phase][key]
          if a > 0 and b > 0:
            parts.append(f'{label} {a / b if higher_is_better else b / a:.2f}x')
        lines.append(f'{ours} / {theirs}, {phase}: ' + ', '.join(parts))
  if 'prediction' in table:
    ours, theirs = table['prediction']['tlflax'], table['prediction']['keras-tf']
    lines.append(f"prediction (2000 photos, whole process), tlflax / keras-tf: images/s "
                 f"{ours['images_per_s'] / theirs['images_per_s']:.2f}x")
  return lines


def markdown(table: dict, machine: str) -> str:
  header = ('| run | phase | train img/s | eval img/s | compile s | phase wall s | peak RSS MB |\n'
            '|---|---|---:|---:|---:|---:|---:|\n')
  runs = {name: r for name, r in table.items() if name != 'prediction'}
  rows = ''.join(
      f"| {name} | {phase} | {r[phase]['train_images_per_s']:.1f} | "
      f"{r[phase]['eval_images_per_s']:.1f} | {r[phase]['compile_s']:.1f} | "
      f"{r[phase]['wall_s']:.1f} | {r['peak_rss_mb']:.0f} |\n"
      for name, r in runs.items() for phase in PHASES)
  rows += '\n| run | whole process wall s |\n|---|---:|\n' + ''.join(
      f"| {name} | {r['process_wall_s']:.1f} |\n" for name, r in runs.items())
  if 'prediction' in table:
    rows += ('\n| prediction, 2000 photos | process wall s | images/s |\n|---|---:|---:|\n'
             + ''.join(f"| {who} | {r['wall_s']:.1f} | {r['images_per_s']:.1f} |\n"
                       for who, r in table['prediction'].items()))
  return (f'# tlflax vs Keras: the tutorial recipe\n\n{machine}\n\n'
          f'`bench/keras_comparison.py --train_images={FLAGS.train_images} '
          f'--val_images={FLAGS.val_images} --epochs={FLAGS.epochs} --rounds={FLAGS.rounds}`: '
          f'160x160, batch 32, medians over {FLAGS.rounds} interleaved rounds and the epochs after '
          "each phase's first. Ratios are tlflax's advantage (higher is better for tlflax).\n\n"
          + header + rows + '\n' + '\n'.join(f'- {line}' for line in ratios(table)) + '\n')


def bar_chart(table: dict, path: Path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(METRICS), figsize=(4.5 * len(METRICS), 4))
  names = [name for name in table if name != 'prediction']
  for ax, (key, label, _) in zip(axes, METRICS):
    for i, phase in enumerate(PHASES):
      values = [table[n][phase][key] for n in names]
      ax.bar([j + 0.4 * i for j in range(len(names))], values, width=0.4, label=phase)
    ax.set_xticks([j + 0.2 for j in range(len(names))], names, rotation=20)
    ax.set_title(label)
    if key.endswith('images_per_s'):
      ax.set_yscale('log')
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def machine_description() -> str:
  import platform

  import jax
  devices = ', '.join(sorted({d.device_kind for d in jax.devices()}))
  return (f'Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), '
          f'JAX devices: {jax.default_backend()} ({devices}). No GPU was measured unless listed.')


def main(argv):
  del argv
  if FLAGS.worker:
    worker(FLAGS.worker, Path(FLAGS.workdir))
    return
  if not DATA.is_dir() or not WEIGHTS.is_file():
    sys.exit(f'error: the benchmark needs {DATA} and {WEIGHTS} (see ../shared/README.md)')
  unknown = set(FLAGS.runs) - set(RUNS)
  if unknown:
    sys.exit(f'error: unknown runs {sorted(unknown)}; known: {RUNS}')
  from tlflax.weights import load_pretrained
  from tlflax.weights.native import save_variables
  workdir = Path(tempfile.mkdtemp(prefix='tlflax-bench-'))
  make_subset(workdir, FLAGS.train_images, FLAGS.val_images)
  save_variables(workdir / 'weights.msgpack',
                 load_pretrained(str(WEIGHTS), include_top=False, input_size=IMAGE_SIZE),
                 backbone='mobilenet_v2', backbone_args={'alpha': 1.0}, source=str(WEIGHTS))
  samples = {name: [] for name in FLAGS.runs}
  predicting = FLAGS.predict and {'tlflax', 'keras-tf'} <= set(FLAGS.runs)
  samples['prediction'] = []
  try:
    for round_index in range(FLAGS.rounds):
      for name in FLAGS.runs:
        start = time.perf_counter()
        samples[name].append(run_worker(name, workdir))
        print(f'round {round_index + 1}/{FLAGS.rounds}: {name} took '
              f'{time.perf_counter() - start:.0f} s', flush=True)
        if name == 'tlflax' and predicting:  # its workdir is the latest run's
          samples['prediction'].append({who: timed_prediction(who, workdir)
                                        for who in ('tlflax', 'keras-tf')})
          print(f"round {round_index + 1}/{FLAGS.rounds}: prediction {samples['prediction'][-1]}",
                flush=True)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  table = summarize(samples)
  out = Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'keras_comparison.json').write_text(json.dumps({'table': table, 'samples': samples},
                                                         indent=2))
  (out / 'keras_comparison.md').write_text(markdown(table, machine_description()))
  bar_chart(table, out / 'keras_comparison.png')
  print((out / 'keras_comparison.md').read_text())
  print('\n'.join(ratios(table)))


if __name__ == '__main__':
  app.run(main)
