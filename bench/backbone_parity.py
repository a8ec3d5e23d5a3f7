"""The parity table: every family's smallest member against its Keras application.

    python bench/backbone_parity.py [--sizes 96,131] [--backbones ...]

Keras with every weight randomized by seed (`tests/keras_reference.py`), saved in the published
`.h5` layout and as `.weights.h5`, is ported; logits (with the top) and pooled features (without)
are compared on random images in full float32 precision. Prints one row per member, size, top and
file, with the largest absolute difference (the tests assert 1e-4; ResNet50's features 5e-4).
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / 'tests')]

import jax  # noqa: E402

from backbone_checks import check_parity  # noqa: E402
from backbones import SMALLEST  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--backbones', default=','.join(SMALLEST))
  parser.add_argument('--sizes', default='96,131')
  args = parser.parse_args()
  jax.config.update('jax_default_matmul_precision', 'highest')
  print('| backbone | size | top | file | max abs difference |\n|---|---|---|---|---|')
  for name in args.backbones.split(','):
    for size in map(int, args.sizes.split(',')):
      for include_top in (False, True):
        for file_format in ('h5', 'weights.h5'):
          with tempfile.TemporaryDirectory() as folder:
            difference = check_parity(Path(folder), name, {}, include_top, size, file_format,
                                      tolerance=float('inf'))
          print(f'| {name} | {size} | {"logits" if include_top else "features"} | '
                f'{file_format} | {difference:.2e} |', flush=True)


if __name__ == '__main__':
  main()
