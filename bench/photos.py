"""What the export benchmarks share: their flags, labelled photos as exported models take them,
and the median latency of single-image calls."""
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def define_flags(workdir_help: str, runs: int):
  """--config, --workdir (required), --photos (the shared cats/dogs validation photos) and
  --runs (timed single-image calls per model, `runs` by default)."""
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'The training config.', lock_config=True)
  flags.DEFINE_string('workdir', None, workdir_help)
  flags.DEFINE_string('photos', str(ROOT.parent / 'shared' / 'data' / 'cats_vs_dogs_mini' /
                                    'validation'), 'Labelled photos, one folder per class.')
  flags.DEFINE_integer('runs', runs, 'Timed single-image calls per model.')
  flags.mark_flags_as_required(['config', 'workdir'])


def labelled_images(folder, class_names, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 (n, size, size, 3) images, labels) of the photos under `folder`/<class>/, decoded and
  resized as `--mode=predict --model` does, classes in `class_names` order."""
  import tensorflow as tf

  from tlflax.data import transforms
  paths, labels = [], []
  for label, name in enumerate(class_names):
    found = sorted((Path(folder) / name).glob('*'))
    paths += found
    labels += [label] * len(found)
  images = np.stack([transforms.exported_model_input(tf.io.read_file(str(p)), image_size).numpy()
                     for p in paths])
  return images, np.array(labels)


def median_ms(call, image, runs: int) -> float:
  """The median time of `runs` calls of `call(image)`, after a warm-up call, in milliseconds."""
  call(image)  # warm-up: compilation, tensor allocation
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    call(image)
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)
