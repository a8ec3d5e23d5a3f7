"""`export` writes WORKDIR/export/ from a checkpoint of a trained workdir:

- `saved_model/`: a TensorFlow SavedModel through jax2tf (`tlflax.export.saved_model`);
- `model.keras`: the backbone's Keras application and the head with the trained weights
  (`tlflax.export.keras_model`), for Keras's own exporters (TF.js, ONNX, LiteRT);
- `model.tflite`, and with `quantize='int8'` also `model_int8.tflite` (`tlflax.export.tflite`):
  int8 below the first layer the run fine-tuned, float32 from there up, head included
  (`fine_tuned_from`); `quantize='int8_full'` quantizes everything (smaller, less faithful);
- `labels.txt` (the class names, in output order) and `export.json` (input and output spec, classes,
  source checkpoint, versions, and the checks below); WORKDIR/report.html is refreshed to show
  them (`tlflax.report`).

Every model takes uint8 RGB images of `image_size` squared (resized, not preprocessed: the
backbone's preprocessing is inside) and returns float32 class probabilities. Each file is read
back after it is written and run on `CHECK_IMAGES` training images that int8 calibration does
not use: a float model whose probabilities differ from tlflax's (in full float32 precision) by
more than `FLOAT_TOLERANCE` stops the export, which then leaves any earlier `export/` as it was.
"""
import dataclasses
import os
import shutil
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from tlflax import config as config_lib
from tlflax import calibration, interrupts, param_groups, parallel, reports, tracking
from tlflax.classifier import abstract_variables, backbone_layers
from tlflax.data import sources
from tlflax.errors import ConfigError, ExportError
from tlflax.export import keras_model, saved_model, tflite
from tlflax.run_parts import check_config, load_splits, restore_for_inference, temperature_for
from tlflax.workdir import writable
from tlflax.report import run_page

FORMATS = ('saved_model', 'tflite', 'keras')
QUANTIZATIONS = ('none', 'int8', 'int8_full')
FILES = {'saved_model': 'saved_model', 'keras': 'model.keras', 'tflite': 'model.tflite',
         'tflite_int8': 'model_int8.tflite'}
REPRESENTATIVE_IMAGES = 200  # int8 calibration images from the training split
CHECK_IMAGES = 16  # training images each written model is checked on
FLOAT_TOLERANCE = 1e-4
INT8_WARNING, INT8_BROKEN = 0.9, 0.5  # top-1 agreement of the int8 model on the check images


def parse_formats(text: str) -> tuple[str, ...]:
  """'tflite,keras' -> ('tflite', 'keras'); unknown or no formats are a `ConfigError`."""
  formats = tuple(dict.fromkeys(name.strip() for name in text.split(',') if name.strip()))
  unknown = [name for name in formats if name not in FORMATS]
  if unknown or not formats:
    raise ConfigError(f'--formats: {", ".join(unknown) or "none given"}; choose from '
                      f'{", ".join(FORMATS)}')
  return formats


def training_images(config, count: int) -> np.ndarray:
  """`count` images of the training split (fewer if it is smaller), chosen by `config.seed`, in
  that order, as exported models take them: uint8 (n, size, size, 3)."""
  source = load_splits(config)['train']
  chosen = np.random.default_rng(config.seed).permutation(source.num_examples)[:count]
  found = sources.images_at(source, chosen, config.image_size, config.data.max_pixels)
  return np.stack([found[i] for i in chosen])


def fine_tuned_from(config, model) -> str:
  """The Keras name of the lowest backbone layer whose kernel `config`'s phases train, or of the
  head's dense layer if they train none: where int8 keeps the network in float32."""
  params = abstract_variables(model, config.image_size)['params']
  layers = backbone_layers(model)
  trained = set()
  for _, phase in config_lib.ordered_phases(config):
    if phase.epochs:
      trained |= set(param_groups.layers_with_trained_kernels(param_groups.param_groups(
          params, layers, config_lib.fine_tune_index(phase, model.spec, layers),
          phase.param_groups)))
  return next((layer.name for layer in layers if layer.name in trained), keras_model.HEAD_NAME)


def _compare(name: str, probabilities: np.ndarray, expected: np.ndarray, exact: bool) -> dict:
  check = {'images': len(expected),
           'max_abs_difference': float(np.max(np.abs(probabilities - expected))),
           'top1_agreement': float(np.mean(probabilities.argmax(1) == expected.argmax(1)))}
  logging.info('%s: max |p - tlflax| %.2e on %d training images, top-1 agreement %.3f', name,
               check['max_abs_difference'], check['images'], check['top1_agreement'])
  if exact and not check['max_abs_difference'] <= FLOAT_TOLERANCE:
    raise ExportError(f'the exported {name} gives probabilities {check["max_abs_difference"]:.3g} '
                      f'away from tlflax\'s (tolerance {FLOAT_TOLERANCE}); nothing was exported')
  return check


def _replace_folder(new: Path, final: Path):
  """Puts `new` at `final`; an earlier `final` is removed only once `new` is in place."""
  previous = final.with_name(final.name + '.previous')
  shutil.rmtree(previous, ignore_errors=True)
  if final.exists():
    os.replace(final, previous)
  os.replace(new, final)
  shutil.rmtree(previous, ignore_errors=True)


def export(config, workdir, formats=FORMATS, checkpoint: str = 'latest',
           quantize: str = 'none', calibrated: bool = True) -> dict:
  """Writes WORKDIR/export/ (see the module) from a checkpoint of the workdir ('latest', 'best',
  'ema' or an epoch), its head divided by the weights' temperature where `calibrated`
  (`run_parts.temperature_for`), and returns what it wrote to export.json."""
  check_config(config)
  if quantize not in QUANTIZATIONS:
    raise ConfigError(f'--quantize must be one of {", ".join(QUANTIZATIONS)}, got {quantize!r}')
  if quantize != 'none' and 'tflite' not in formats:
    raise ConfigError('--quantize applies to TFLite: add tflite to --formats')
  if jax.process_count() > 1:
    raise ConfigError('export runs in one process: start it without --num_processes')
  if 'keras' in formats or 'tflite' in formats:
    keras_model.check_backend()
  trained = restore_for_inference(config, workdir, parallel.data_mesh(), checkpoint)
  writable(workdir)  # for WORKDIR/export.partial, then export/
  if trained.config['image_size'] != config.image_size:
    raise ConfigError(f'{workdir} was trained at image_size={trained.config["image_size"]}; the '
                      f'config has {config.image_size}: export with the training config')
  temperature = (temperature_for(config, workdir, trained, parallel.data_mesh()) if calibrated
                 else None)
  if temperature is not None:  # the exported probabilities are the calibrated ones
    trained = dataclasses.replace(
        trained, variables=calibration.scaled_head(trained.variables, temperature))
  serve = saved_model.serving_function(trained.model, trained.variables, trained.objective)
  images = training_images(
      config, CHECK_IMAGES + (REPRESENTATIVE_IMAGES if quantize != 'none' else 0))
  out = Path(workdir) / 'export.partial'
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  try:
    float_from = (fine_tuned_from(ml_collections.ConfigDict(trained.config), trained.model)
                  if quantize == 'int8' else None)  # what the checkpoint's run trained
    files, checks, calibrated_on = _write_models(out, formats, quantize, config, trained, serve,
                                                 images, float_from)
    (out / 'labels.txt').write_text(''.join(f'{name}\n' for name in trained.class_names),
                                    encoding='utf-8')
    record = _record(config, workdir, checkpoint, trained, files, checks, calibrated_on, quantize,
                     float_from, temperature)
    reports.write_json(out / 'export.json', record)
  except BaseException as e:
    shutil.rmtree(out, ignore_errors=True)
    if isinstance(e, interrupts.Interrupted):
      e.outcome = ('export/ was not changed' if (Path(workdir) / 'export').is_dir() else
                   'nothing was exported')
    raise
  with interrupts.held('the export\'s move into place'):
    _replace_folder(out, Path(workdir) / 'export')
  run_page.write_after(workdir, 'The export')  # its export section
  return record


def _write_models(out: Path, formats, quantize: str, config, trained, serve, images, float_from):
  """Writes the models into `out`, checking each on the first `CHECK_IMAGES` images (the rest
  calibrate int8, which is float32 from the layer `float_from` on); returns ({kind: file name},
  {kind: check}, the number of int8 calibration images)."""
  check_images, calibration_images = images[:CHECK_IMAGES], images[CHECK_IMAGES:]
  if not len(calibration_images):  # a training split of at most CHECK_IMAGES images
    calibration_images = check_images
  expected = np.asarray(jax.jit(serve)(check_images))
  files, checks = {}, {}

  def written(kind: str, run):
    files[kind] = FILES[kind]
    checks[kind] = _compare(kind, run(check_images), expected, exact=kind != 'tflite_int8')

  if 'saved_model' in formats:
    with interrupts.during('the SavedModel export'):
      saved_model.save(serve, out / FILES['saved_model'], config.image_size)
      written('saved_model', saved_model.load(out / FILES['saved_model']))
  if 'keras' in formats or 'tflite' in formats:
    with interrupts.during('the Keras model\'s construction'):
      model = keras_model.keras_classifier(
          trained.model, jax.device_get(trained.variables), config.image_size,
          len(trained.class_names), trained.objective.sigmoid)
    if 'keras' in formats:
      with interrupts.during('the Keras export'):
        model.save(out / FILES['keras'])
        written('keras', keras_model.load(out / FILES['keras']))
    if 'tflite' in formats:
      with interrupts.during('the TFLite export'):
        tflite.save(model, out / FILES['tflite'])
        written('tflite', tflite.TFLiteClassifier(out / FILES['tflite']))
    if quantize != 'none':
      with interrupts.during('the int8 TFLite export'):
        tflite.save(model, out / FILES['tflite_int8'], representative_images=calibration_images,
                    float_from=float_from)
        written('tflite_int8', tflite.TFLiteClassifier(out / FILES['tflite_int8']))
      _check_int8_agreement(checks['tflite_int8']['top1_agreement'])
  return files, checks, len(calibration_images) if quantize != 'none' else 0


def _check_int8_agreement(agreement: float):
  """Below `INT8_BROKEN`, int8 calibration failed; below `INT8_WARNING` it lost much."""
  if agreement < INT8_BROKEN:
    raise ExportError(f'the int8 TFLite model agrees with tlflax\'s top-1 class on only '
                      f'{agreement:.0%} of the check images: its calibration failed')
  if agreement < INT8_WARNING:
    logging.warning('The int8 TFLite model agrees with tlflax\'s top-1 class on %.0f%% of the '
                    'check images only: prefer the float model', 100 * agreement)


def _record(config, workdir, checkpoint: str, trained, files, checks, calibration_images: int,
            quantize: str, float_from, temperature) -> dict:
  """What export.json says: input and output spec, classes, files, checks and source."""
  return {
      'input': {'name': saved_model.INPUT_NAME, 'dtype': 'uint8',
                'shape': [None, config.image_size, config.image_size, 3],
                'meaning': 'RGB images resized (bilinear) to image_size, values 0..255; the '
                           'models preprocess them as their backbone does: '
                           + trained.model.spec.preprocessing.description()},
      'output': {'name': saved_model.OUTPUT_NAME, 'dtype': 'float32',
                 'shape': [None, len(trained.class_names)],
                 'meaning': 'class probabilities, in labels.txt order'
                            + ('' if temperature is None else
                               f', calibrated: the logits divided by temperature {temperature:.6g}'
                               ' (fitted on the validation split)')},
      'temperature': temperature,
      'classes': trained.class_names,
      'files': files,
      'quantize': quantize,
      'int8_calibration_images': calibration_images,
      'int8_float_from': float_from,
      'checks': checks,
      'source': {'workdir': str(Path(workdir).resolve()), 'checkpoint': checkpoint,
                 'epoch': trained.epoch, 'weights': 'average' if trained.average else 'trained',
                 'config': trained.config},
      'versions': {name: tracking.package_version(name)
                   for name in ('tlflax', 'jax', 'tensorflow', 'keras')},
      **({'jax_serialization_version': saved_model.serialization_version()}
         if 'saved_model' in files else {}),
  }


def size_on_disk(path: Path) -> int:
  """Bytes of a file, or of the files under a folder."""
  return path.stat().st_size if path.is_file() else sum(
      p.stat().st_size for p in path.rglob('*') if p.is_file())


def summary(record: dict, folder) -> str:
  """What `export` wrote: a line per model with its size and check."""
  lines = [f'Exported epoch {record["source"]["epoch"]} ({len(record["classes"])} classes) to '
           f'{folder}:']
  for kind, name in record['files'].items():
    check = record['checks'][kind]
    size = size_on_disk(Path(folder) / name) / 2**20
    lines.append(f'  {name:<18} {size:6.1f} MiB  max |p - tlflax| '
                 f'{check["max_abs_difference"]:.1e}, top-1 agreement '
                 f'{check["top1_agreement"]:.3f} ({check["images"]} training images)')
  lines.append('  labels.txt, export.json')
  return '\n'.join(lines)
