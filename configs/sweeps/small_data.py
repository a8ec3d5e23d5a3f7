"""The sweep that chose `configs/small_data.py`: on the tutorial's recipe (10 + 10 epochs,
MobileNetV2 from layer 100), two changes on and off, x 2 seeds:

- rates: the tutorial's (Adam 1e-4, then RMSprop 1e-5) or AdamW 1e-3 then 1e-4, each phase with
  one warmup epoch and cosine decay, weight decay 0.01;
- regularisation: the tutorial's flip and rotation, or flip, random-resized crops (0.25..1 of
  the image) and RandAugment (2 ops at magnitude 9) with mixup (0.2), cutmix (1.0) and label
  smoothing 0.1.

Every trial keeps an average of its weights (`train.ema_decay=0.99`), reported beside them (it
changes nothing else). Trials take 4 to 10 minutes each on a 2-core CPU, so the two changes are
not split further.

    python -m tlflax.sweep --config=configs/flowers.py:local \
        --sweep=configs/sweeps/small_data.py --workdir=runs/sweep_small_data

Results: bench/results/sweep_small_data.md (docs/small_data.md).
"""
from tlflax.sweep import product, seeds

TUTORIAL_RATES = {}
MODERN_RATES = {
    **{f'phases.{name}.{key}': value for name, rate in (('feature_extraction', 1e-3),
                                                        ('fine_tune', 1e-4))
       for key, value in (('optimizer', 'adamw'), ('learning_rate', rate),
                          ('weight_decay', 0.01), ('schedule.name', 'warmup_cosine'),
                          ('schedule.warmup_epochs', 1.0))}}
TUTORIAL_AUGMENTATION = {}
STRONG_AUGMENTATION = {'data.rotation_factor': 0.0,
                       'data.augment_ops': 'random_resized_crop((0.25, 1.0))|randaugment(2, 9)'}
MIXING = {'data.mixup_alpha': 0.2, 'data.cutmix_alpha': 1.0, 'loss.label_smoothing': 0.1}


def get_trials():
  return product([TUTORIAL_RATES, MODERN_RATES],
                 [TUTORIAL_AUGMENTATION, {**STRONG_AUGMENTATION, **MIXING}],
                 [{'train.ema_decay': 0.99}], seeds(2))
