"""The TensorFlow tutorial "Transfer learning with a pretrained ConvNet", as a config.

    python main.py --config=configs/cats_dogs.py --workdir=DIR          # the tutorial (internet)
    python main.py --config=configs/cats_dogs.py:local --workdir=DIR    # offline, ../shared data
    python main.py --config=configs/cats_dogs.py:local,cached ...       # no augmentation, caches

The recipe is `tlflax.config.defaults()`, where every key is defined once with its type and
comment. Every field can be overridden: `--config.phases.fine_tune.fine_tune_at=120`,
`--config.data.folder=PATH`, `--config.model.weights=PATH`, ... Phases run in the order of
`config.phase_order` (ConfigDict iterates keys sorted, so `config.phases` alone has no order).
"""
import ml_collections

from tlflax.config import defaults, phase  # noqa: F401  (phase: for configs built on this one)

SHARED = '../shared'


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The tutorial recipe. Variants (comma-separated): 'local' trains offline on `../shared` for
  2+2 epochs; 'cached' turns augmentation off and trains each phase on cached frozen activations."""
  config = defaults()
  variants = set(filter(None, variant.split(',')))
  if 'local' in variants:
    config.data.folder = f'{SHARED}/data/cats_vs_dogs_mini'
    config.model.weights = f'{SHARED}/weights/mobilenet_v2_1.0_224_ptq.tflite'
    config.phases.feature_extraction.epochs = 2
    config.phases.fine_tune.epochs = 2
  if 'cached' in variants:  # no augmentation, so each phase trains on cached activations
    config.data.flip = False
    config.data.rotation_factor = 0.0
    config.compute.cache_frozen = True
  if variants - {'local', 'cached'}:
    raise ValueError(f"unknown config variant {variant!r}; known: 'local', 'cached' "
                     "(comma-separated)")
  return config
