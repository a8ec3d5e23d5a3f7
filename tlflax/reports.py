"""What a run leaves in its workdir besides checkpoints: strict JSON, final variables, figures."""
import json
import os
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from tlflax import plots
from tlflax.data import sources


def write_atomically(path: Path, content: bytes):
  """Writes a temporary file and renames it into place: a crash never leaves a truncated file."""
  temporary = path.with_name(f'.{path.name}.tmp')
  temporary.write_bytes(content)
  os.replace(temporary, path)


def write_json(path: Path, value):
  """Strict JSON (no NaN or Infinity), written atomically."""
  write_atomically(path, json.dumps(value, indent=2, allow_nan=False).encode())


# What a finished run leaves in its workdir for a person to open first.
MAIN_OUTPUTS = ('report.html', 'history.json', 'test_metrics.json', 'evaluation/',
                'learning_curves.png', 'predictions.png', 'final_variables.msgpack',
                'checkpoints/', 'phases/', 'tensorboard/', 'config.json', 'environment.json',
                'calibration.json')


def main_outputs(workdir) -> list[str]:
  """The `MAIN_OUTPUTS` that `workdir` holds."""
  return [name for name in MAIN_OUTPUTS if (Path(workdir) / name).exists()]


def write_reports(run, history: dict, variables: dict):
  """history.json, test_metrics.json, final_variables.msgpack and the two figures."""
  write_json(run.workdir / 'history.json', history)
  write_json(run.workdir / 'test_metrics.json', history['test'])
  write_atomically(run.workdir / 'final_variables.msgpack', serialization.to_bytes(variables))
  if history['epochs']:
    plots.learning_curves(history, run.workdir / 'learning_curves.png')
  # the tutorial's 3x3 grid, of test images chosen by seed (the split may be in class order)
  test, config = run.splits['test'], run.image_feed.config
  chosen = np.random.default_rng(run.config.seed).permutation(test.num_examples)[:9]
  found = sources.examples_at(test, chosen, config.image_size, config.max_pixels)
  images = np.stack([found[i][0] for i in chosen]).astype(np.float32)  # rounded, as in memory
  probabilities = np.asarray(run.objective.probabilities(
      jax.jit(run.model.apply)(variables, config.preprocessing(images))))
  plots.prediction_grid(images, [run.class_names[found[i][1]] for i in chosen],
                        [run.class_names[i] for i in probabilities.argmax(1)],
                        probabilities.max(1), run.workdir / 'predictions.png')
