"""The tutorial's recipe on each family's smallest backbone, x 2 seeds.

    python -m tlflax.sweep --config=configs/cats_dogs.py:local,cached \
        --sweep=configs/sweeps/backbones.py --workdir=runs/sweep_backbones

Each trial downloads its backbone's Keras ImageNet weights on first use (`model.weights`), and
phase 2 fine-tunes from the backbone's own tutorial-style layer (`fine_tune_at='default'`).
Variant 'all' sweeps every registered backbone with ImageNet weights instead.
"""
from tlflax import backbones
from tlflax.sweep import product, seeds, sweep

SMALLEST = ('mobilenet_v2', 'mobilenet_v3_small', 'efficientnet_b0', 'efficientnetv2_b0',
            'resnet50', 'resnet50_v2', 'convnext_tiny')


def get_trials(variant: str = ''):
  if variant not in ('', 'all'):
    raise ValueError(f"unknown sweep variant {variant!r}; known: 'all'")
  names = ([name for name in backbones.names() if backbones.get(name).imagenet_weights]
           if variant else SMALLEST)
  return product(sweep('model.backbone', names), sweep('model.weights', ['imagenet']), seeds(2))
