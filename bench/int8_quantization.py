"""Where int8 TFLite files of a trained workdir lose agreement with it, variant by variant.

    .venv/bin/python bench/int8_quantization.py --config=configs/cats_dogs.py:local \
        --workdir=DIR [--photos=../shared/data/cats_vs_dogs_mini/validation] [--runs=50]

For the workdir's checkpoint (trained with that config), each variant of the TFLite conversion
classifies every photo under `--photos` (one folder per class, in the class order), as uint8
images resized as `--mode=predict --model` does. Printed per variant: top-1 agreement with the
checkpoint (tlflax in float32 on the same images), accuracy, largest probability difference, file
size, and the median single-image latency of `--runs` calls with its ratio to the float TFLite
file's, measured in the same run. Then TFLite's quantization debugger's error per layer
(RMSE / quantization step; rounding alone gives about 0.29) of the all-int8 model, for the
layers from the first fine-tuned one up and for those below it.

Variants: float32; all int8 (`--quantize=int8_full`) calibrated on 200 (the default) and 500
training images; all int8 but the head; all int8 with one weight scale per kernel instead of per
channel; int16 activations with int8 weights; int8 below the first fine-tuned layer and float32
from there up (`--quantize=int8`), on 200 and 500 images. The all-int8 file is what Keras's own
LiteRT exporter wrote (the same converter and settings; measured equal on these photos).
"""
import csv
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from photos import define_flags, labelled_images, median_ms  # noqa: E402  (bench/)

define_flags('A trained workdir.', runs=50)
FLAGS = flags.FLAGS


def main(_):
  from tlflax import library_logs
  library_logs.hide()
  import jax
  import numpy as np
  import tensorflow as tf

  from tlflax import parallel
  from tlflax.export import exporter, keras_model, saved_model, tflite
  from tlflax.train import restore_for_inference
  tf.config.set_visible_devices([], 'GPU')
  config = FLAGS.config
  trained = restore_for_inference(config, FLAGS.workdir, parallel.data_mesh())
  images, labels = labelled_images(FLAGS.photos, trained.class_names, config.image_size)
  serve = jax.jit(saved_model.serving_function(trained.model, trained.variables,
                                               trained.objective))
  reference = np.concatenate([np.asarray(serve(images[i:i + 50]))
                              for i in range(0, len(images), 50)])
  model = keras_model.keras_classifier(
      trained.model, jax.device_get(trained.variables), config.image_size,
      len(trained.class_names), trained.objective.sigmoid)
  pool = exporter.training_images(config, exporter.CHECK_IMAGES + 500)[exporter.CHECK_IMAGES:]
  first_fine_tuned = exporter.fine_tuned_from(config, trained.model)
  folder = Path(tempfile.mkdtemp(prefix='tlflax-int8-'))

  def per_tensor_weights(path, calibration):  # one scale per kernel instead of per channel
    with tempfile.TemporaryDirectory() as saved, library_logs.quiet():
      converter = tflite.calibrated(tflite.tflite_converter(model, saved), calibration)
      converter._experimental_disable_per_channel = True
      path.write_bytes(converter.convert())

  def int16_activations(path, calibration):
    with tempfile.TemporaryDirectory() as saved, library_logs.quiet():
      converter = tflite.calibrated(tflite.tflite_converter(model, saved), calibration)
      converter.target_spec.supported_ops = [  # the builtins for ops 16x8 lacks (CAST)
          tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
          tf.lite.OpsSet.TFLITE_BUILTINS]
      path.write_bytes(converter.convert())

  variants = {
      'float32': lambda path: tflite.save(model, path),
      'all int8, 200 calibration images (--quantize=int8_full)': lambda path: tflite.save(
          model, path, pool[:200]),
      'all int8, 500 calibration images': lambda path: tflite.save(model, path, pool),
      'all int8 but the head, 200 images': lambda path: tflite.save(
          model, path, pool[:200], keras_model.HEAD_NAME),
      'all int8, per-tensor weights, 200 images': lambda path: per_tensor_weights(
          path, pool[:200]),
      'int16 activations, int8 weights, 200 images': lambda path: int16_activations(
          path, pool[:200]),
      f'float32 from {first_fine_tuned} up, 200 images (--quantize=int8)': lambda path: (
          tflite.save(model, path, pool[:200], first_fine_tuned)),
      f'float32 from {first_fine_tuned} up, 500 images': lambda path: tflite.save(
          model, path, pool, first_fine_tuned),
  }
  print(f'{len(labels)} photos of {len(trained.class_names)} classes; checkpoint accuracy '
        f'{np.mean(reference.argmax(1) == labels):.4f}; {len(pool)} calibration images in the '
        f'pool; first fine-tuned layer {first_fine_tuned}; {os.cpu_count()} CPUs; single image, '
        f'median of {FLAGS.runs}\n')
  print('| variant | top-1 agreement | accuracy | max abs p difference | size MiB | latency ms '
        '| latency / float32 |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  float_latency = None
  for index, (name, write) in enumerate(variants.items()):
    path = folder / f'{index}.tflite'
    write(path)
    run = tflite.TFLiteClassifier(path)
    probabilities = np.concatenate([run(images[i:i + 50]) for i in range(0, len(images), 50)])
    latency = median_ms(run, images[:1], FLAGS.runs)
    float_latency = float_latency or latency
    flips = probabilities.argmax(1) != reference.argmax(1)
    print(f'| {name} | {1 - flips.mean():.4f} ({flips.sum()} flips) | '
          f'{np.mean(probabilities.argmax(1) == labels):.4f} | '
          f'{np.abs(probabilities - reference).max():.3f} | {path.stat().st_size / 2**20:.2f} | '
          f'{latency:.2f} | {latency / float_latency:.2f} |', flush=True)

  with tempfile.TemporaryDirectory() as saved, library_logs.quiet():
    converter = tflite.calibrated(tflite.tflite_converter(model, saved), pool)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([images[i:i + 1]] for i in
                                                    range(0, len(images), 4)))
    debugger.run()
  dump = io.StringIO()
  debugger.layer_statistics_dump(dump)
  trained_ops = set(tflite.ops_from((folder / '0.tflite').read_bytes(), first_fine_tuned))
  errors = {'fine-tuned': [], 'frozen': []}
  for row in csv.DictReader(io.StringIO(dump.getvalue())):
    if float(row['scale']):
      error = float(row['mean_squared_error']) ** 0.5 / float(row['scale'])
      errors['fine-tuned' if row['tensor_name'] in trained_ops else 'frozen'].append(error)
  shutil.rmtree(folder)
  print('\nAll int8, 500 images: error per op in quantization steps (RMSE / scale), from the first '
        'fine-tuned layer up and below it')
  for kind, values in errors.items():
    print(f'- {kind} ({len(values)} ops): median {np.median(values):.3f}, max '
          f'{np.max(values):.3f}')


if __name__ == '__main__':
  app.run(main)
