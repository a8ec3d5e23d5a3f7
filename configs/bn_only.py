"""An ablation: phase 2 trains only the head and the backbone's BatchNorm scales and offsets.

    python main.py --config=configs/bn_only.py:local --workdir=DIR

Every other backbone parameter stays frozen (BatchNorm keeps using its moving statistics, as in the
tutorial); "BatchNorm-only" fine-tuning in `param_groups` rules on the Keras layer names. The rate
is ten times the tutorial's phase 2 rate (not tuned: a starting point).
"""
from configs.cats_dogs import get_config as tutorial_config

BATCH_NORM_LAYERS = r'bn_Conv1|.*_BN|Conv_1_bn'


def get_config(variant: str = ''):
  config = tutorial_config(variant)
  config.phases.fine_tune.fine_tune_at = 0  # the rules decide for every layer
  config.phases.fine_tune.param_groups = (f'{BATCH_NORM_LAYERS}=1', 'head=1', '.*=freeze')
  config.phases.fine_tune.learning_rate = 1e-4
  return config
