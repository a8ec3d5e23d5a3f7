"""An ablation: the tutorial, then a third phase that unfreezes from layer 50 at a lower rate.

    python main.py --config=configs/gradual_unfreeze.py:local --workdir=DIR
"""
from configs.cats_dogs import get_config as tutorial_config
from configs.cats_dogs import phase


def get_config(variant: str = ''):
  config = tutorial_config(variant)
  config.phases.fine_tune_more = phase(config.phases.fine_tune.epochs, 'rmsprop', 3e-6,
                                       fine_tune_at=50)
  config.phase_order += ('fine_tune_more',)
  return config
