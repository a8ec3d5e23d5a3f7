"""A local image folder in ImageFolder layout: `root/{train,validation[,test]}/{class}/*.jpg`.

Classes are the sub-folders of `train/` in sorted order (label i = i-th name). Before any training,
every file is checked: files that are not images by extension, images that do not decode and images
over `max_pixels` (read from the file's header; JPEGs count at 1/8 scale, see
`transforms.decode_rgb`) are skipped with a counted warning; file names that are not valid UTF-8 are
read as bytes; a wrong root, a missing `train/`, a class folder missing from a split or an empty
training class stop with an error naming the path. Greyscale, RGBA, CMYK, PNG, GIF and BMP images
decode to RGB. Missing splits are carved out of the others per class by `seed` (`carving`: 10% +
10% of `train/` when it is alone; 20% of `validation/` as test when there is no `test/`). A split
that ends up empty is an error naming it.
"""
import dataclasses
import os
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from tlflax.data import carving, decoders
from tlflax.data.pillow_decoding import JPEG_SCALES
from tlflax.errors import DataError  # noqa: F401  (re-exported)

SPLITS = carving.SPLITS
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp')


@dataclasses.dataclass(frozen=True)
class LabelledFiles:
  """One split of a folder: image paths and their integer labels."""
  paths: tuple[str, ...]
  labels: tuple[int, ...]

  def subset(self, indices) -> 'LabelledFiles':
    return LabelledFiles(tuple(self.paths[i] for i in indices),
                         tuple(self.labels[i] for i in indices))


def printable(path) -> str:
  """`path` as text, with bytes that are not UTF-8 as backslash escapes."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')


def _visible_entries(folder: Path):
  return sorted((e for e in os.scandir(folder) if not e.name.startswith('.')), key=lambda e: e.name)


def too_large(path, max_pixels: int) -> bool:
  """Whether the image at `path` has more than `max_pixels` pixels (JPEGs: at their smallest
  decoding, 1/8 scale), from its header alone. Unreadable headers are left to `decodable`."""
  bomb_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the limit here is ours
  try:
    with Image.open(path) as image:
      width, height = image.size
      jpeg = image.format == 'JPEG'
  except Exception:  # not an image Pillow knows: decoding will tell
    return False
  finally:
    Image.MAX_IMAGE_PIXELS = bomb_limit
  return width * height / (JPEG_SCALES[-1] ** 2 if jpeg else 1) > max_pixels


def _scan_split(folder: Path, class_names, max_pixels: int) -> LabelledFiles:
  """Lists a split's images, skipping (with a counted warning) what is not a readable image."""
  present = sorted(e.name for e in _visible_entries(folder) if e.is_dir())
  if present != list(class_names):
    raise DataError(f'{folder} has class folders {present}, but train/ has {list(class_names)}')
  candidates, labels, not_images = [], [], []
  for label, name in enumerate(class_names):
    for entry in _visible_entries(folder / name):
      if not entry.is_file():
        continue
      if entry.name.lower().endswith(IMAGE_EXTENSIONS):
        candidates.append(entry.path)
        labels.append(label)
      else:
        not_images.append(entry.path)
  small = np.array([not too_large(p, max_pixels) for p in candidates], bool)
  ok = small.copy()
  ok[small] = decoders.decodable([p for p, fits in zip(candidates, small) if fits], max_pixels)
  unreadable = [p for p, good, fits in zip(candidates, ok, small) if fits and not good]
  oversized = [p for p, fits in zip(candidates, small) if not fits]
  for kind, skipped in (('files that are not images', not_images),
                        ('images that do not decode', unreadable),
                        (f'images over data.max_pixels={max_pixels}', oversized)):
    if skipped:
      logging.warning('%s: skipped %d %s, e.g. %s', folder, len(skipped), kind, skipped[:3])
  files = LabelledFiles(tuple(p for p, good in zip(candidates, ok) if good),
                        tuple(label for label, good in zip(labels, ok) if good))
  for label, name in enumerate(class_names):
    if label not in files.labels:
      logging.warning('%s has no usable images', folder / name)
  return files


def scan_image_folder(root, seed: int = 0, max_pixels: int = 50_000_000):
  """Returns ({split: LabelledFiles} for train, validation and test, class names)."""
  root = Path(root).expanduser()
  if not root.is_dir():
    raise DataError(f'image folder {root} does not exist or is not a folder')
  if not (root / 'train').is_dir():
    raise DataError(f'{root} has no train/ folder; expected {root}/train/<class>/<image> '
                    '(and optionally validation/ and test/)')
  class_names = tuple(e.name for e in _visible_entries(root / 'train') if e.is_dir())
  if len(class_names) < 2:
    raise DataError(f'{root / "train"} needs at least two class folders, found {class_names}')
  found = {s: _scan_split(root / s, class_names, max_pixels) for s in SPLITS
           if (root / s).is_dir()}
  for label, name in enumerate(class_names):
    if label not in found['train'].labels:
      raise DataError(f'{root / "train" / name} has no usable images')
  splits = {split: found[parent].subset(indices) for split, (parent, indices)
            in carving.carve({s: files.labels for s, files in found.items()}, seed).items()}
  for split, files in splits.items():
    if not files.paths:
      made = ('' if (root / split).is_dir() else
              f' (there is no {split}/ folder, so it was carved out of the others)')
      raise DataError(f'{root}: the {split} split has no usable images{made}; add images to '
                      f'{root / split} or to the split it is carved from')
  return splits, class_names
