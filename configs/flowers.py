"""The tutorial's recipe on five classes of flowers (TFDS `tf_flowers`, 3670 photos).

    python main.py --config=configs/flowers.py --workdir=DIR          # tf_flowers (internet)
    python main.py --config=configs/flowers.py:local --workdir=DIR    # offline, ../shared photos
    python main.py --config=configs/flowers.py:local,cached ...       # no augmentation, caches

Everything but the data is `configs/cats_dogs.py`'s recipe (10 + 10 epochs); with five classes the
head has five logits and a softmax cross-entropy loss. `tf_flowers` has only a `train` split:
validation and test are carved out of it, 10% each per class, by `config.seed`
(`data.split_scheme=auto`). 'local' trains on `../shared/data/flowers_mini` (500 training and 125
validation photos; test is 20% of those, per class) with the real ImageNet MobileNetV2 from its
TFLite file.
"""
from configs import cats_dogs


def get_config(variant: str = ''):
  variants = set(filter(None, variant.split(',')))
  if variants - {'local', 'cached'}:
    raise ValueError(f"unknown config variant {variant!r}; known: 'local', 'cached' "
                     "(comma-separated)")
  config = cats_dogs.get_config(','.join(variants & {'cached'}))
  config.data.tfds_name = 'tf_flowers'
  config.data.split_scheme = 'auto'
  if 'local' in variants:
    config.data.folder = f'{cats_dogs.SHARED}/data/flowers_mini'
    config.model.weights = f'{cats_dogs.SHARED}/weights/mobilenet_v2_1.0_224_ptq.tflite'
  return config
