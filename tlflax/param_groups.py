"""Which parameters a phase trains, and at what learning-rate multiplier.

Every leaf of the classifier's `{'backbone', 'head'}` params gets a label (optax's "labels" for
`multi_transform`): 'frozen', 'trainable' (the phase's learning rate) or 'trainable*M' (M times
it). A phase chooses them in two steps:

- `fine_tune_at=k`: the backbone's Keras layers below index k are frozen (the tutorial's
  `base_model.layers[:k]`); None freezes the whole backbone. The layers from k on and the head
  train at the phase's rate, unless
- `param_groups=('REGEX=VALUE', ...)` gives rules for them: on layer names (the Keras names of the
  backbone's layers, 'head' for the head), as in big_vision's `schedule=[(regex, ...)]` and
  `lr_mults`. The first rule whose REGEX matches the whole name decides; VALUE is a learning-rate
  multiplier or 'freeze'. A layer from k on that no rule matches, and a rule that decides no such
  layer, are errors.
"""
import math
import re
from typing import Optional, Sequence

import jax
import numpy as np

from tlflax.backbones import trainable_mask

FROZEN, TRAINABLE = 'frozen', 'trainable'
HEAD = 'head'  # the name the rules match for the classifier's head


def parse_rules(rules: Sequence[str]) -> list[tuple[str, Optional[float]]]:
  """[(regex, multiplier or None for 'freeze')] of 'REGEX=VALUE' strings; ValueError naming the
  rule that is not one."""
  parsed = []
  for rule in rules:
    pattern, sep, value = rule.rpartition('=')
    if not sep or not pattern:
      raise ValueError(f'param_groups rule {rule!r} is not REGEX=VALUE (VALUE: a learning-rate '
                       "multiplier or 'freeze')")
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f'param_groups rule {rule!r}: bad regex ({e})') from e
    if value.strip() == 'freeze':
      parsed.append((pattern, None))
      continue
    try:
      multiplier = float(value)
    except ValueError:
      multiplier = -1.0
    if not (multiplier >= 0 and math.isfinite(multiplier)):
      raise ValueError(f"param_groups rule {rule!r}: VALUE must be a multiplier >= 0 or 'freeze'")
    parsed.append((pattern, multiplier or None))  # a multiplier of 0 is frozen
  return parsed


def label_of(multiplier: Optional[float]) -> str:
  if multiplier is None:
    return FROZEN
  return TRAINABLE if multiplier == 1 else f'{TRAINABLE}*{multiplier!r}'


def multiplier_of(label: str) -> float:
  """The learning-rate multiplier a trainable label stands for."""
  return 1.0 if label == TRAINABLE else float(label.split('*')[1])


def assign(names: Sequence[str], rules: Sequence[str]) -> dict[str, str]:
  """{layer name: label} by the first rule matching each name. ValueError naming the layers no
  rule matches, or the rules that decide no layer (a typo, or one shadowed by a rule before it)."""
  parsed = parse_rules(rules)
  labels, used = {}, set()
  for name in names:
    for i, (pattern, multiplier) in enumerate(parsed):
      if re.fullmatch(pattern, name):
        labels[name] = label_of(multiplier)
        used.add(i)
        break
  uncovered = [name for name in names if name not in labels]
  if uncovered:
    raise ValueError(f'param_groups leaves {len(uncovered)} layer(s) uncovered: '
                     f'{", ".join(uncovered[:10])}{" ..." if len(uncovered) > 10 else ""} '
                     "(add a rule such as '.*=freeze' last)")
  unused = [rules[i] for i in range(len(parsed)) if i not in used]
  if unused:
    raise ValueError(f'param_groups rule(s) {unused} decide no layer: no name matches them, or '
                     'an earlier rule takes every name they match')
  return labels


def trained_layer_names(layers, fine_tune_at: Optional[int]) -> list[str]:
  """The names the rules decide: backbone layers with variables from `fine_tune_at` on (none for
  None), in Keras order, then the head."""
  start = len(layers) if fine_tune_at is None else fine_tune_at
  return [layer.name for layer in layers[start:] if layer.has_variables] + [HEAD]


def param_groups(params: dict, layers, fine_tune_at: Optional[int] = None,
                 rules: Sequence[str] = ()) -> dict:
  """A label for every leaf of `params` (`{'backbone': {layer: ...}, 'head': ...}`): frozen below
  `fine_tune_at`, from `rules` (if any, else 'trainable') above."""
  start = len(layers) if fine_tune_at is None else fine_tune_at
  trainable = trainable_mask(params['backbone'], layers, start)  # checks the layer names
  names = trained_layer_names(layers, fine_tune_at)
  labels = assign(names, rules) if rules else dict.fromkeys(names, TRAINABLE)

  def label(name):
    return lambda leaf_trainable: labels[name] if leaf_trainable else FROZEN
  return {'backbone': {name: jax.tree.map(label(name), subtree)
                       for name, subtree in trainable.items()},
          'head': jax.tree.map(lambda _: labels[HEAD], params['head'])}


def first_trained_layer(groups: dict, layers) -> int:
  """The Keras index of the lowest backbone layer with a trained parameter (`len(layers)`: none):
  everything below it is frozen, so its activations can be cached."""
  trained = {name for name, subtree in groups['backbone'].items()
             if any(label != FROZEN for label in jax.tree.leaves(subtree))}
  return min((layer.index for layer in layers if layer.name in trained), default=len(layers))


def layers_with_trained_kernels(groups: dict) -> list[str]:
  """The backbone layers whose kernel (a convolution's weights) `groups` train."""
  return [name for name, leaves in groups['backbone'].items()
          if leaves.get('kernel', FROZEN) != FROZEN]


def count_params(params: dict, groups: dict) -> dict[str, int]:
  """Numbers of trainable and frozen parameters (the tutorial's model summary counts)."""
  counts = {TRAINABLE: 0, FROZEN: 0}
  for leaf, label in zip(jax.tree.leaves(params), jax.tree.leaves(groups)):
    counts[FROZEN if label == FROZEN else TRAINABLE] += int(np.size(leaf))
  return counts
