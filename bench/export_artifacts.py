"""Size, single-image CPU latency and int8 accuracy of the models `--mode=export` wrote.

    .venv/bin/python bench/export_artifacts.py --config=configs/cats_dogs.py:local --workdir=DIR \
        [--photos=../shared/data/cats_vs_dogs_mini/validation] [--runs=100]

DIR must hold an export with every format and `--quantize=int8`. Each model classifies one image
at a time, `--runs` times after a warm-up call, and the median is printed, with its ratio to
tlflax's own jit-compiled forward of the same checkpoint measured in the same run. Then every
model classifies all photos under `--photos` (one folder per class, in labels.txt order), and the
int8 TFLite model's accuracy and top-1 agreement are printed against the float one's.
"""
import json
import os
import sys
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from photos import define_flags, labelled_images, median_ms  # noqa: E402  (bench/)

define_flags('A trained workdir with an export/ folder.', runs=100)
FLAGS = flags.FLAGS


def main(_):
  import jax
  import keras
  import numpy as np
  import tensorflow as tf

  from tlflax import parallel
  from tlflax.export import saved_model
  from tlflax.export.exporter import size_on_disk
  from tlflax.export.tflite import TFLiteClassifier
  from tlflax.train import restore_for_inference
  tf.config.set_visible_devices([], 'GPU')
  folder = Path(FLAGS.workdir) / 'export'
  record = json.loads((folder / 'export.json').read_text())
  files = record['files']
  images, labels = labelled_images(FLAGS.photos, record['classes'], record['input']['shape'][1])

  trained = restore_for_inference(FLAGS.config, FLAGS.workdir, parallel.data_mesh())
  apply = jax.jit(lambda x: trained.objective.probabilities(trained.model.apply(
      trained.variables, trained.model.spec.preprocessing(x.astype(np.float32)))))
  keras_net = keras.models.load_model(folder / files['keras'])
  models = {
      'tlflax (jit, checkpoint)': lambda x: np.asarray(apply(x)),
      'saved_model': saved_model.load(folder / files['saved_model']),
      'keras': lambda x: keras_net(x, training=False).numpy(),
      'tflite': TFLiteClassifier(folder / files['tflite']),
      'tflite_int8': TFLiteClassifier(folder / files['tflite_int8']),
  }
  results = {}
  print(f'{len(labels)} photos, {os.cpu_count()} CPUs; single image, median of {FLAGS.runs}:')
  for name, call in models.items():
    latency = median_ms(call, images[:1], FLAGS.runs)
    batches = [call(images[i:i + 32]) for i in range(0, len(images), 32)]
    probabilities = np.concatenate(batches)
    kind = name if name in files else None
    results[name] = {'latency_ms': latency, 'probabilities': probabilities,
                     'size_mib': size_on_disk(folder / files[kind]) / 2**20 if kind else None,
                     'accuracy': float(np.mean(probabilities.argmax(1) == labels))}
  reference = results['tlflax (jit, checkpoint)']
  for name, result in results.items():
    size_text = f'{result["size_mib"]:6.1f} MiB' if result['size_mib'] else ' ' * 10
    difference = np.max(np.abs(result['probabilities'] - reference['probabilities']))
    print(f'  {name:<26} {size_text}  {result["latency_ms"]:7.2f} ms '
          f'({reference["latency_ms"] / result["latency_ms"]:.2f}x tlflax)  accuracy '
          f'{result["accuracy"]:.4f}  max |p - tlflax| {difference:.1e}')
  agreement = np.mean(results['tflite_int8']['probabilities'].argmax(1)
                      == results['tflite']['probabilities'].argmax(1))
  print(f'int8 TFLite: accuracy {results["tflite_int8"]["accuracy"]:.4f} against float '
        f'{results["tflite"]["accuracy"]:.4f}; top-1 agreement {agreement:.4f} '
        f'({len(labels)} photos)')


if __name__ == '__main__':
  app.run(main)
