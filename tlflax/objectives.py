"""What the head's logits mean: loss, predicted class and class probabilities, for 2 or N classes.

Two classes keep the tutorial: one logit and sigmoid binary cross-entropy (Keras
`BinaryCrossentropy(from_logits=True)`). More classes, or `head='softmax'` for two: one logit per
class and softmax cross-entropy with integer labels (Keras
`SparseCategoricalCrossentropy(from_logits=True)`). Soft targets (mixup and cutmix, see
`tlflax.mixing`) replace the labels in the loss: Keras's `BinaryCrossentropy` against the second
class's share, `CategoricalCrossentropy` against the whole target. Label smoothing is Keras's
`label_smoothing=` (targets `y (1 - s) + s / 2` for the sigmoid, `optax.smooth_labels` for
softmax), on hard and soft targets alike. Class weights
scale each training example's loss by its class's weight, and the sum is divided by the number of
examples, as Keras's `fit(class_weight=...)` does; evaluation losses are unweighted (Keras's
`evaluate` takes no class weights), label smoothing included as in Keras. Accuracies are never
weighted (Keras's `fit` also weights its training metrics).
"""
import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

HEADS = ('auto', 'sigmoid', 'softmax')
TOP_K = 5  # top-k accuracy is reported when there are more than this many classes


@dataclasses.dataclass(frozen=True)
class Objective:
  """The loss and predictions of a classifier head over `num_classes` classes."""
  num_classes: int
  sigmoid: bool  # one logit and binary cross-entropy; else one logit per class and softmax
  label_smoothing: float = 0.0
  class_weights: Optional[tuple[float, ...]] = None  # per class, for training losses

  @property
  def outputs(self) -> int:
    """The head's width: 1 for the sigmoid head, else the number of classes."""
    return 1 if self.sigmoid else self.num_classes

  def losses(self, logits, labels, targets=None):
    """Per-example cross-entropy of (b, outputs) logits against integer labels, or against soft
    `targets` ((b, num_classes) class probabilities, `tlflax.mixing`) where given (unweighted)."""
    if self.sigmoid:
      positive = (labels.astype(jnp.float32) if targets is None
                  else targets[:, 1].astype(jnp.float32))
      if self.label_smoothing:
        positive = positive * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
      return optax.sigmoid_binary_cross_entropy(logits[:, 0], positive)
    if targets is None and not self.label_smoothing:
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if targets is None:
      targets = jax.nn.one_hot(labels, self.num_classes)
    if self.label_smoothing:
      targets = optax.smooth_labels(targets, self.label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)

  def predictions(self, logits):
    """The predicted class of each example."""
    if self.sigmoid:
      return (logits[:, 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def probabilities(self, logits):
    """(b, num_classes) class probabilities. The sigmoid head's are a softmax over [0, logit],
    which is [1 - sigmoid(logit), sigmoid(logit)]: one formula for both heads, the one the
    exported models' softmax layer computes (`tlflax.export.keras_model.probability_head`)."""
    if self.sigmoid:
      logits = jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)
    return jax.nn.softmax(logits, axis=-1)

  def logits_of(self, probabilities):
    """Logits in the head's form whose `probabilities` are `probabilities` ((b, num_classes)):
    log-odds of the second class for the sigmoid head, log-probabilities for softmax (each
    probability at least 1e-30, so that none is infinite)."""
    logs = jnp.log(jnp.maximum(probabilities, 1e-30))
    if self.sigmoid:
      return logs[:, 1:] - logs[:, :1]
    return logs

  def metric_sums(self, logits, batch, weighted: bool = False) -> dict:
    """Sums over the real (mask True) examples of `batch`: 'loss' (against its soft 'target'
    where it has one; class-weighted if `weighted` and the objective has class weights, a soft
    target's weight its mix of its classes' weights), 'correct' and, above `TOP_K` classes,
    'correct_top_k'; and their 'count'."""
    labels, targets = batch['label'], batch.get('target')
    mask = batch['mask'].astype(jnp.float32)
    losses = self.losses(logits, labels, targets)
    if weighted and self.class_weights is not None:
      weights = jnp.asarray(self.class_weights, jnp.float32)
      losses = losses * (weights[labels] if targets is None else targets @ weights)
    correct = (self.predictions(logits) == labels).astype(jnp.float32)
    sums = {'loss': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}
    if self.num_classes > TOP_K:
      _, top = jax.lax.top_k(logits, TOP_K)
      sums['correct_top_k'] = jnp.sum(jnp.any(top == labels[:, None], axis=-1) * mask)
    return sums


def uses_sigmoid(head: str, num_classes: int) -> bool:
  """Whether `head` ('auto', 'sigmoid' or 'softmax', see `tlflax.config`) means one sigmoid logit
  for data with `num_classes` classes; 'sigmoid' for more than two is a `ValueError`."""
  if head not in HEADS:
    raise ValueError(f'must be one of {HEADS}, got {head!r}')
  if head == 'sigmoid' and num_classes != 2:
    raise ValueError(f"'sigmoid' is a head for two classes; the data has {num_classes}")
  return head == 'sigmoid' or (head == 'auto' and num_classes == 2)


def parse_class_weights(setting: str):
  """`loss.class_weights` as None (''), 'balanced', or a tuple of positive floats ('1,2.5,1');
  anything else is a `ValueError`."""
  setting = setting.strip()
  if setting in ('', 'balanced'):
    return setting or None
  try:
    weights = tuple(float(w) for w in setting.split(','))
  except ValueError:
    raise ValueError(f"must be '', 'balanced' or comma-separated numbers, got {setting!r}") \
        from None
  if not all(np.isfinite(w) and w > 0 for w in weights):
    raise ValueError(f'weights must be positive numbers, got {setting!r}')
  return weights


def class_weights(setting: str, train_counts: Sequence[int]) -> Optional[tuple[float, ...]]:
  """Per-class weights for `loss.class_weights` given the training split's class counts.
  'balanced' is scikit-learn's `compute_class_weight('balanced')`, `n / (classes * count)`;
  explicit weights must name every class."""
  parsed = parse_class_weights(setting)
  if parsed is None:
    return None
  if parsed == 'balanced':
    counts = np.asarray(train_counts, np.float64)
    return tuple(float(w) for w in counts.sum() / (len(counts) * counts))
  if len(parsed) != len(train_counts):
    raise ValueError(f'{len(parsed)} weights given for {len(train_counts)} classes')
  return parsed
