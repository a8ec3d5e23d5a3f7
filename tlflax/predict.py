"""Classifying a user's images with a trained workdir: `predict` and the image listing it reads.

`predict` uses a checkpoint of a workdir, `predict_exported` an exported TFLite file. Rows go to a
CSV file (`output_path`: the one asked for, else `WORKDIR/predictions_<source>.csv`; an existing
file is never replaced), written with the `csv` module as each batch is classified, so an
interrupted run keeps what it did: `path,label,probability` (the top class and its probability),
then `class_i,probability_i` for the top k = min(5, classes) classes. Images are
read and decoded in parallel (`tlflax.data.decoders`: TensorFlow, or Pillow without it). File
names that are not valid UTF-8 appear with backslash escapes.
"""
import csv
import glob
import itertools
import os
from pathlib import Path
from typing import Iterator, Optional

import jax
import numpy as np
from absl import logging

from tlflax import calibration, chunking, interrupts, parallel, tta
from tlflax.classifier import backbone_layers
from tlflax.data import decoders
from tlflax.data.folders import IMAGE_EXTENSIONS, printable, too_large
from tlflax.errors import DataError, ExportError
from tlflax.objectives import TOP_K
from tlflax.run_parts import check_config, restore_for_inference, temperature_for
from tlflax.workdir import writable


def list_images(inputs: str) -> list[Path]:
  """A file, a folder (searched recursively) or a glob pattern -> image paths, sorted, each file
  once (links and link loops that reach a file again are dropped)."""
  path = Path(inputs).expanduser()
  if path.is_file():
    return [path]
  if not path.exists() and not any(c in inputs for c in '*?['):  # a path, not a pattern
    raise DataError(f'--inputs {inputs} does not exist')
  candidates = path.rglob('*') if path.is_dir() else map(Path, glob.glob(str(path), recursive=True))
  images, seen = [], set()
  for candidate in sorted(candidates):
    if candidate.is_file() and candidate.suffix.lower() in IMAGE_EXTENSIONS:
      real = os.path.realpath(candidate)
      if real not in seen:
        seen.add(real)
        images.append(candidate)
  if not images:
    raise DataError(f'no images found at {inputs}')
  return images


def source_name(model: Optional[str], checkpoint: str) -> str:
  """What a predictions CSV is named by: the exported model file (its name without the suffix),
  else the checkpoint ('checkpoint_latest', 'checkpoint_best', 'checkpoint_7')."""
  return Path(model).stem if model else f'checkpoint_{checkpoint}'


def output_path(workdir, output: Optional[str], source: str) -> Path:
  """Where predictions go: `output`, if given, which must not exist yet; else
  `WORKDIR/predictions_<source>.csv`, or `..._2.csv`, `..._3.csv`, ... when that is taken. No
  earlier file is ever replaced (`DataError`)."""
  if output:
    path = Path(output).expanduser()
    if path.exists():
      raise DataError(f'--output {path} exists: predict never replaces a file; name another one '
                      'or remove it')
    return path
  folder = Path(workdir)
  path = folder / f'predictions_{source}.csv'
  for number in itertools.count(2):
    if not path.exists():
      return path
    path = folder / f'predictions_{source}_{number}.csv'


def image_batches(paths: list[Path], batch_size: int, size: int, max_pixels: int,
                  rounded: bool):
  """(paths, images) batches of the paths that decode (`decoders.decoded_batches`: float32, or
  uint8 if `rounded`); warns about each path that does not."""
  small = [path for path in paths if not too_large(path, max_pixels)]
  for path in sorted(set(paths) - set(small)):
    logging.warning('skipped %s: over data.max_pixels=%d', printable(path), max_pixels)
  if not small:
    return
  expected = 0
  for indices, images in decoders.decoded_batches(small, batch_size, size, max_pixels, rounded):
    for skipped in range(expected, indices[-1]):
      if skipped not in indices:
        logging.warning('skipped %s: not a readable image', printable(small[skipped]))
    expected = indices[-1] + 1
    yield [small[i] for i in indices], images
  for skipped in range(expected, len(small)):
    logging.warning('skipped %s: not a readable image', printable(small[skipped]))


class RowsFile:
  """A new CSV file (never an existing one) written as results come, for `with`: `write(rows)`
  adds rows and flushes them; on leaving, a file that holds no row is removed (a header alone is
  of no use, and would block a retry with --output), and an `interrupts.Interrupted` says what
  was kept. `what` names the rows ('classified', 'explained')."""

  def __init__(self, path, header: list, what: str):
    self.path, self.what, self.written = Path(path), what, 0
    try:
      self.file = open(path, 'x', newline='', encoding='utf-8')
    except FileExistsError as e:
      raise DataError(f'{path} exists: it is never replaced') from e
    self.writer = csv.writer(self.file)
    try:
      self.writer.writerow(header)
    except BaseException:
      self.__exit__(None, None, None)
      raise

  def write(self, rows: list):
    self.writer.writerows(rows)
    self.file.flush()
    self.written += len(rows)

  def __enter__(self) -> 'RowsFile':
    return self

  def __exit__(self, kind, error, traceback):
    self.file.close()
    if isinstance(error, interrupts.Interrupted):
      error.outcome = (f'{self.path} holds the {self.written} image(s) {self.what} before'
                       if self.written else f'no image was {self.what} yet, so no CSV was kept')
    if not self.written:
      self.path.unlink(missing_ok=True)


def _classified(batches, count: int, classify, class_names, batch_size: int,
                csv_path) -> Iterator[tuple]:
  """Rows (path, class name, probability, top k) of `classify`'s (b, classes) probabilities for
  each batch (of `count` images in all), padded to `batch_size`, written to the new file
  `csv_path` as they come. A file that would hold no row is removed; no readable image at all
  is a `DataError`."""
  k = min(TOP_K, len(class_names))
  logging.info('Writing the predictions to %s', csv_path)
  writable(Path(csv_path).parent, 'the folder of the predictions CSV')
  header = ['path', 'label', 'probability', *(
      f'{what}_{i}' for i in range(1, k + 1) for what in ('class', 'probability'))]
  with RowsFile(csv_path, header, 'classified') as table:
    for paths, images in batches:
      rows = _rows(paths, classify(padded(images, batch_size)), class_names, k)
      table.write([[path, label, f'{p:.6f}', *(v for name, q in ranked
                                               for v in (name, f'{q:.6f}'))]
                   for path, label, p, ranked in rows])
      yield from rows
    if not table.written:
      raise DataError(f'none of the {count} image(s) could be classified (each skipped one is '
                      'named above)')


def padded(images: np.ndarray, batch_size: int) -> np.ndarray:
  """`images` padded with zeros to `batch_size` (one compilation or allocation serves all)."""
  batch = np.zeros((batch_size, *images.shape[1:]), images.dtype)
  batch[:len(images)] = images
  return batch


def _rows(paths, probabilities, class_names, k: int) -> list[tuple]:
  """(path, class name, probability, [(class, probability)] top k) per path."""
  probabilities = np.asarray(probabilities)[:len(paths)]
  top = np.argsort(-probabilities, axis=1, kind='stable')[:, :k]
  rows = []
  for path, p, classes in zip(paths, probabilities, top):
    ranked = [(class_names[c], float(p[c])) for c in classes]
    rows.append((printable(path), *ranked[0], ranked))
  return rows


def predict(config, workdir, inputs: str, checkpoint: str = 'latest',
            output: Optional[str] = None, calibrated: bool = True) -> Iterator[tuple]:
  """Yields (path, class name, probability, [(class, probability)] top k) for each readable image
  of `inputs`, k = min(5, classes), classified with a checkpoint of the workdir ('latest', 'best',
  'ema' or an epoch: `restore_for_inference`) `batch_size` at a time, and writes the rows as they
  come to `output_path(workdir, output, 'checkpoint_<checkpoint>')`. The probabilities are the
  `calibrated` ones (`run_parts.temperature_for`) and the mean over `eval.tta`'s views."""
  check_config(config)
  mesh = parallel.data_mesh()
  trained = restore_for_inference(config, workdir, mesh, checkpoint)
  temperature = temperature_for(config, workdir, trained, mesh) if calibrated else None
  variables = (trained.variables if temperature is None
               else calibration.scaled_head(trained.variables, temperature))
  chunk = chunking.resolve(config.compute.frozen_chunk)  # the images go to one device
  apply = jax.jit(chunking.frozen_in_chunks(trained.model, len(backbone_layers(trained.model)),
                                            chunk))
  preprocessing = trained.model.spec.preprocessing

  def probabilities(images):
    scaled = preprocessing(images.astype(np.float32))
    shown = [scaled] if config.eval.tta == 'none' else tta.views(scaled, config.eval.tta)
    return sum(trained.objective.probabilities(apply(variables, view))
               for view in shown) / len(shown)
  paths = list_images(inputs)
  # rounded to uint8 as the data kept in memory for training and evaluation is
  batches = image_batches(paths, config.batch_size, config.image_size, config.data.max_pixels,
                          rounded=True)
  yield from _classified(
      batches, len(paths), probabilities, trained.class_names, config.batch_size,
      output_path(workdir, output, source_name(None, checkpoint)))


def exported_labels(model_path) -> list[str]:
  """The class names in `labels.txt` beside an exported model."""
  path = Path(model_path).parent / 'labels.txt'
  if not path.is_file():
    raise ExportError(f'{path} is missing: an exported model needs the labels.txt written with it')
  return path.read_text(encoding='utf-8').splitlines()


def predict_exported(model_path, workdir, inputs: str, batch_size: int, max_pixels: int,
                     output: Optional[str] = None) -> Iterator[tuple]:
  """`predict` with an exported TFLite file (`tlflax.export`) instead of a checkpoint: the same
  rows, from images decoded and resized as for the checkpoint and rounded to the uint8 the model
  takes (`transforms.exported_model_input`), written to `output_path(workdir, output, <the
  model file's name without .tflite>)`."""
  from tlflax.export.tflite import TFLiteClassifier
  if not Path(model_path).is_file():
    raise ExportError(f'--model {model_path} ' + ('is not a file' if Path(model_path).exists()
                                                  else 'does not exist'))
  model = TFLiteClassifier(model_path)
  class_names = exported_labels(model_path)
  if model.num_classes != len(class_names):
    raise ExportError(f'{model_path} gives {model.num_classes} probabilities; the labels.txt '
                      f'beside it names {len(class_names)} classes')
  paths = list_images(inputs)
  batches = image_batches(paths, batch_size, model.image_size, max_pixels, rounded=True)
  yield from _classified(batches, len(paths), model, class_names, batch_size,
                         output_path(workdir, output, source_name(model_path, '')))
