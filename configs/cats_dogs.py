"""The TensorFlow tutorial "Transfer learning with a pretrained ConvNet", as a config.

    python main.py --config=configs/cats_dogs.py --workdir=DIR          # the tutorial (internet)
    python main.py --config=configs/cats_dogs.py:local --workdir=DIR    # offline, ../shared data
    python main.py --config=configs/cats_dogs.py:local,cached ...       # no augmentation, caches

Every field can be overridden: `--config.phases.fine_tune.fine_tune_at=120`,
`--config.data.folder=PATH`, `--config.model.weights=PATH`, ... Phases run in the order of
`config.phase_order` (ConfigDict iterates keys sorted, so `config.phases` alone has no order).
"""
import ml_collections
from ml_collections import config_dict

SHARED = '../shared'


def phase(epochs: int, optimizer: str, learning_rate: float, fine_tune_at=None):
  """One training phase. `fine_tune_at`: first Keras layer index of the backbone to train (the
  tutorial's `base_model.layers[fine_tune_at:]`); None keeps the whole backbone frozen."""
  return ml_collections.ConfigDict({
      'epochs': epochs,
      'optimizer': optimizer,  # adam | rmsprop | sgd
      'learning_rate': learning_rate,
      'fine_tune_at': config_dict.placeholder(int) if fine_tune_at is None else fine_tune_at,
  })


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """The tutorial recipe. Variants (comma-separated): 'local' trains offline on `../shared` for
  2+2 epochs; 'cached' turns augmentation off and trains each phase on cached frozen activations."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.image_size = 160
  config.batch_size = 32

  config.model = ml_collections.ConfigDict()
  config.model.alpha = 1.0
  # 'imagenet' (the Keras download), a .h5/.weights.h5/.tflite/.msgpack path, or 'none' (random).
  config.model.weights = 'imagenet'
  config.model.dropout = 0.2
  config.model.depthwise_implementation = 'auto'

  config.data = ml_collections.ConfigDict()
  config.data.folder = ''  # an ImageFolder root; empty: TFDS
  config.data.tfds_name = 'cats_vs_dogs'
  config.data.split_scheme = 'original'  # original (80/10/10) | later (test from validation)
  config.data.data_dir = ''  # empty: $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.data.shuffle_buffer = 1000
  config.data.flip = True
  config.data.rotation_factor = 0.2
  # Images larger than this (decoded pixels) are skipped with a warning; JPEGs are decoded at 1/2,
  # 1/4 or 1/8 scale first where that brings them under it.
  config.data.max_pixels = 50_000_000

  config.compute = ml_collections.ConfigDict()
  config.compute.dtype = 'float32'  # or 'bfloat16': mixed precision (parameters stay float32)
  # Without augmentation, run each phase's frozen layers once and train on their cached outputs.
  config.compute.cache_frozen = False
  config.compute.cache_limit_gb = 8.0  # per process; above it a phase trains on images instead
  config.compute.prefetch = 2  # batches put on the devices ahead of the step

  config.phases = ml_collections.ConfigDict()
  config.phases.feature_extraction = phase(10, 'adam', 1e-4)
  config.phases.fine_tune = phase(10, 'rmsprop', 1e-5, fine_tune_at=100)  # base rate / 10
  config.phase_order = ('feature_extraction', 'fine_tune')

  config.checkpoints_to_keep = 3

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
