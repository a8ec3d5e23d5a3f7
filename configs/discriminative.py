"""An ablation: phase 2 trains the whole backbone with layer-wise decaying learning rates.

    python main.py --config=configs/discriminative.py:local --workdir=DIR

The head trains at the phase's rate, `Conv_1` at `DECAY` times it, block 16 at `DECAY**2`, ...,
block 0 (`expanded_conv_*`) at `DECAY**18` and the stem (`Conv1`, `bn_Conv1`) at `DECAY**19`:
"discriminative fine-tuning" (ULMFiT), in `param_groups` rules on the Keras layer names.
"""
from configs.cats_dogs import get_config as tutorial_config

DECAY = 0.8  # each block's rate, relative to the block above it


def layerwise_rules(decay: float = DECAY) -> tuple:
  """'REGEX=MULTIPLIER' rules from the head (x1) down to the stem (x decay**19)."""
  rules = ['head=1', f'Conv_1(_bn)?={decay:g}']
  for depth, block in enumerate(range(16, 0, -1), start=2):
    rules.append(f'block_{block}_.*={decay ** depth:.6g}')
  rules.append(f'expanded_conv_.*={decay ** 18:.6g}')
  rules.append(f'Conv1|bn_Conv1={decay ** 19:.6g}')
  return tuple(rules)


def get_config(variant: str = ''):
  config = tutorial_config(variant)
  config.phases.fine_tune.fine_tune_at = 0  # the rules decide for every layer
  config.phases.fine_tune.param_groups = layerwise_rules()
  return config
