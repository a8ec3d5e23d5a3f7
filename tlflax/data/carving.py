"""Carving the validation and test splits a dataset lacks out of those it has: per class, by seed.

The same rules serve image folders and TFDS datasets (`split_scheme='auto'`):
- only train: validation and test take `HOLDOUT` fractions of it;
- train and test: validation takes `HOLDOUT[0]` of train;
- train and validation: test takes `TEST_FRACTION` of validation (as the tutorial carves its test
  batches out of the validation set).
Each class is divided in these proportions separately (stratified), after a shuffle by `seed`;
each part keeps its examples in their original order.
"""
import numpy as np

SPLITS = ('train', 'validation', 'test')
HOLDOUT = (0.1, 0.1)  # validation and test fractions of train, when train is the only split
TEST_FRACTION = 0.2  # test fraction of validation, when there is no test split


def stratified_split(labels, fractions, seed: int) -> list[np.ndarray]:
  """Sorted indices of `labels` for parts of the given fractions, each class divided alike."""
  rng = np.random.default_rng(seed)
  parts = [[] for _ in fractions]
  labels = np.asarray(labels)
  for label in np.unique(labels):
    indices = rng.permutation(np.flatnonzero(labels == label))
    bounds = np.round(np.cumsum(fractions) / np.sum(fractions) * len(indices)).astype(int)
    for part, chunk in zip(parts, np.split(indices, bounds[:-1])):
      part.extend(chunk.tolist())
  return [np.array(sorted(part), np.int64) for part in parts]


def carve(labels: dict, seed: int) -> dict[str, tuple[str, np.ndarray]]:
  """{split: (the existing split it is read from, indices into that split)} for train,
  validation and test, given the labels of each existing split (train must be one)."""
  whole = {name: (name, np.arange(len(values), dtype=np.int64)) for name, values in labels.items()
           if name in SPLITS}
  validation, test_of_train = HOLDOUT
  if 'validation' not in labels and 'test' in labels:
    train, held = stratified_split(labels['train'], (1 - validation, validation), seed)
    whole.update(train=('train', train), validation=('train', held))
  elif 'validation' not in labels:
    train, held, test = stratified_split(
        labels['train'], (1 - validation - test_of_train, validation, test_of_train), seed)
    whole.update(train=('train', train), validation=('train', held), test=('train', test))
  elif 'test' not in labels:
    held, test = stratified_split(labels['validation'], (1 - TEST_FRACTION, TEST_FRACTION), seed)
    whole.update(validation=('validation', held), test=('validation', test))
  return whole
