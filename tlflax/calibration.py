"""Temperature scaling (Guo et al., 2017): one number T that divides the head's logits, fitted on
the validation split by negative log-likelihood, so that the probabilities say how often the
model is right. It never changes the predicted class (dividing by T > 0 keeps the argmax and the
sign of the sigmoid head's logit).

The expected calibration error (ECE) is the mean, over 15 equal-width bins of confidence (the
predicted class's probability), of |accuracy - confidence|, weighted by the bin's share of the
examples.

A run fits T after training for the weights it ends with and keeps it in
`WORKDIR/calibration.json`, one entry per checkpoint and weights (`source_key`, with a
`fingerprint` of the weights): evaluation, prediction and export of other weights
(`--checkpoint=best`, `ema`, an epoch) fit theirs on first use, on the training run's validation
split. Scaling the head's kernel and bias by 1/T (`scaled_head`) gives a model whose logits are the
calibrated ones: that is what prediction and export use.
"""
import hashlib
import json
from pathlib import Path
from typing import Optional

import jax
import numpy as np
import scipy.optimize
from absl import logging

from tlflax import parallel
from tlflax.errors import DataError
from tlflax.objectives import Objective
from tlflax.reports import write_json

FILE = 'calibration.json'
BINS = 15
LIMITS = (0.05, 20.0)  # the temperatures the fit considers


def negative_log_likelihood(objective: Objective, logits, labels, temperature: float) -> float:
  return float(np.mean(np.asarray(objective.losses(np.asarray(logits) / temperature, labels))))


def fit_temperature(objective: Objective, logits: np.ndarray, labels: np.ndarray,
                    split: str = 'validation') -> float:
  """The T in `LIMITS` that minimises the NLL of `logits / T`; `DataError` for a split with no
  examples or with examples of one class (on those the fit says nothing about the others)."""
  labels = np.asarray(labels)
  if len(labels) == 0:
    raise DataError(f'the {split} split is empty: there is nothing to fit a temperature on')
  present = np.unique(labels)
  if len(present) < 2:
    raise DataError(f'the {split} split holds examples of one class only (class {present[0]}): '
                    'a temperature fitted there would say nothing of the others; give it '
                    'examples of every class')
  fit = scipy.optimize.minimize_scalar(
      lambda log_t: negative_log_likelihood(objective, logits, labels, float(np.exp(log_t))),
      bounds=tuple(np.log(LIMITS)), method='bounded', options={'xatol': 1e-4})
  temperature = float(np.exp(fit.x))
  if not LIMITS[0] * 1.01 < temperature < LIMITS[1] / 1.01:
    logging.warning('The temperature fitted on the %s split, %.3g, is at the limit of %s: the '
                    'probabilities are far from calibrated (the split may be too small or the '
                    'model %s)', split, temperature, LIMITS,
                    'never wrong on it' if temperature < 1 else 'no better than chance')
  return temperature


def reliability(objective: Objective, logits, labels) -> dict:
  """ECE and the per-bin table {'ece', 'bins': [{'low', 'high', 'count', 'confidence',
  'accuracy'}]} of `logits`' probabilities (empty bins left out)."""
  probabilities = np.asarray(objective.probabilities(np.asarray(logits)))
  confidence = probabilities.max(axis=1)
  correct = probabilities.argmax(axis=1) == np.asarray(labels)
  edges = np.linspace(0.0, 1.0, BINS + 1)
  which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, BINS - 1)
  bins, ece = [], 0.0
  for b in range(BINS):
    inside = which == b
    if inside.any():
      bins.append({'low': float(edges[b]), 'high': float(edges[b + 1]),
                   'count': int(inside.sum()), 'confidence': float(confidence[inside].mean()),
                   'accuracy': float(correct[inside].mean())})
      ece += inside.mean() * abs(bins[-1]['accuracy'] - bins[-1]['confidence'])
  return {'ece': float(ece), 'bins': bins}


def calibration_report(objective: Objective, logits, labels, temperature: float) -> dict:
  """NLL and ECE of `logits` before and after dividing them by `temperature`."""
  before, after = (reliability(objective, np.asarray(logits) / t, labels)
                   for t in (1.0, temperature))
  return {'temperature': temperature,
          'nll_before': negative_log_likelihood(objective, logits, labels, 1.0),
          'nll_after': negative_log_likelihood(objective, logits, labels, temperature),
          'ece_before': before['ece'], 'ece_after': after['ece'],
          'bins_before': before['bins'], 'bins_after': after['bins']}


def scaled_head(variables: dict, temperature: float) -> dict:
  """`variables` with the head's kernel and bias divided by `temperature`: its logits are the
  calibrated logits."""
  head = {name: value / temperature for name, value in variables['params']['head'].items()}
  return {**variables, 'params': {**variables['params'], 'head': head}}


def source_key(epoch: int, average: bool) -> str:
  """The entry of `FILE` for the weights of checkpoint `epoch` (or their average)."""
  return f'epoch {epoch}' + (' average' if average else '')


def fingerprint(variables: dict) -> str:
  """A hash of the head's parameters (replicated arrays), which every training step
  changes: an entry of `FILE` counts only for the weights it was fitted on."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(parallel.to_host(variables['params']['head'])):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def stored(workdir, key: str, variables: Optional[dict] = None):
  """The entry `key` of the workdir's `FILE`, or None; with `variables`, only if it was fitted on
  them (`fingerprint`)."""
  path = Path(workdir) / FILE
  if not path.exists():
    return None
  try:
    entry = json.loads(path.read_text()).get(key)
  except ValueError as e:
    logging.warning('%s does not read (%s): the temperature is fitted again', path, e)
    return None
  if entry is not None and variables is not None and entry.get('weights') != fingerprint(
      variables):
    return None
  return entry


def store(workdir, key: str, entry: dict):
  """Adds (or replaces) entry `key` of the workdir's `FILE` (process 0 writes); a workdir that
  cannot be written keeps nothing, with a warning (the temperature is then fitted again)."""
  if jax.process_index() != 0:
    return
  path = Path(workdir) / FILE
  try:
    try:
      entries = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:  # a damaged file: replaced by this entry
      entries = {}
    write_json(path, {**entries, key: entry})
  except OSError as e:
    logging.warning('The temperature was not kept in %s: %s', path, e)
