"""Classifying a user's images with a trained workdir: `predict` and the image listing it reads.

Rows go to `WORKDIR/predictions.csv` (`path,label,probability`, written with the `csv` module) as
each batch is classified, so an interrupted run keeps what it did. File names that are not valid
UTF-8 appear with backslash escapes.
"""
import csv
import glob
import itertools
import os
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
from absl import logging

from tlflax import parallel
from tlflax.classifier import class_probabilities
from tlflax.data import transforms
from tlflax.data.folders import IMAGE_EXTENSIONS, too_large
from tlflax.errors import DataError
from tlflax.train import check_config, restore_for_inference


def list_images(inputs: str) -> list[Path]:
  """A file, a folder (searched recursively) or a glob pattern -> image paths, sorted, each file
  once (links and link loops that reach a file again are dropped)."""
  path = Path(inputs).expanduser()
  if path.is_file():
    return [path]
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


def printable(path) -> str:
  """`path` as text, with bytes that are not UTF-8 as backslash escapes."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')


def _readable_images(paths: list[Path], image_size: int, max_pixels: int):
  """(path, preprocessed image) for each path that decodes; warns about the others."""
  for path in paths:
    if too_large(path, max_pixels):
      logging.warning('skipped %s: over data.max_pixels=%d', printable(path), max_pixels)
      continue
    try:
      yield path, transforms.preprocess(path.read_bytes(), image_size, max_pixels).numpy()
    except Exception as e:  # TF raises assorted errors for files that are not images
      logging.warning('skipped %s: not a readable image (%s)', printable(path), type(e).__name__)


def predict(config, workdir, inputs: str) -> Iterator[tuple[str, str, float]]:
  """Yields (path, class name, probability) for each readable image of `inputs`, classified with
  the workdir's newest checkpoint `batch_size` at a time (the last batch padded, so one
  compilation serves all), and writes the rows to WORKDIR/predictions.csv as they come."""
  check_config(config)
  model, variables, class_names = restore_for_inference(config, workdir, parallel.data_mesh())
  apply = jax.jit(model.apply)
  images = _readable_images(list_images(inputs), config.image_size, config.data.max_pixels)
  with open(Path(workdir) / 'predictions.csv', 'w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(['path', 'label', 'probability'])
    while chunk := list(itertools.islice(images, config.batch_size)):
      paths, arrays = zip(*chunk)
      batch = np.zeros((config.batch_size, *arrays[0].shape), np.float32)
      batch[:len(arrays)] = arrays
      names, probabilities = class_probabilities(apply(variables, batch)[:len(paths)],
                                                 class_names)
      rows = list(zip(map(printable, paths), names, map(float, probabilities)))
      writer.writerows((path, label, f'{p:.6f}') for path, label, p in rows)
      f.flush()
      yield from rows
