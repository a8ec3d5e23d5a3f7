"""The learning-rate range test (Smith, 2017; fastai's `lr_find`): `--mode=lr_find`.

A phase trains for up to `steps` batches from the weights it would start from, its learning rate
growing exponentially from `low` to `high` (the phase's schedule is set aside for the test). The
loss (with `train.accumulate_steps`, the mean of each update's batches) is smoothed (an
exponential moving average with fastai's 0.98, debiased), and the test stops
when it diverges: a loss that is not finite, or a smoothed loss above 4 times the lowest one.
The suggested rate is where the smoothed loss falls fastest against the log of the rate (fastai's
'steep'), among the steps before its minimum and after the first tenth (`suggestion`).

Nothing of the workdir's run changes: the test reads the config's data and weights (a later
phase: the previous phase's final model in WORKDIR/phases/), and writes only WORKDIR/lr_find/
`<phase>.json` (rates, losses, suggestion) and `<phase>.png`.
"""
import itertools
import math
from pathlib import Path
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from tqdm import tqdm

from tlflax import config as config_lib
from tlflax import devices, optim, parallel, plots
from tlflax import param_groups as param_groups_lib
from tlflax.classifier import abstract_variables, backbone_layers, init_variables
from tlflax.errors import ConfigError, DataError, TrainingDiverged
from tlflax.phases import phase_plan
from tlflax.reports import write_json
from tlflax.run_parts import (check_config, image_feed, load_splits, make_model, make_objective,
                              mixing_of, rngs)
from tlflax.steps import TrainState, make_train_step
from tlflax.workdir import writable

SMOOTHING = 0.98
DIVERGENCE = 4.0
FOLDER = 'lr_find'


def smoothed(losses) -> np.ndarray:
  """fastai's debiased exponential moving average of `losses`."""
  average, out = 0.0, []
  for step, loss in enumerate(losses, start=1):
    average = SMOOTHING * average + (1 - SMOOTHING) * loss
    out.append(average / (1 - SMOOTHING ** step))
  return np.asarray(out)


def no_descent(smooth: np.ndarray) -> bool:
  """Whether fewer than three updates lie between the first tenth and the smoothed minimum."""
  return int(np.argmin(smooth)) + 1 - len(smooth) // 10 < 3


def suggestion(rates: np.ndarray, smooth: np.ndarray) -> float:
  """The rate where `smooth` falls fastest against log(rate), after the first tenth of the steps
  (whose average is still settling) and before its minimum; where that leaves fewer than three
  steps, a tenth of the rate at the minimum (at least the first rate)."""
  start, end = len(smooth) // 10, int(np.argmin(smooth)) + 1
  if no_descent(smooth):
    return float(max(rates[end - 1] / 10, rates[0]))
  slopes = np.gradient(smooth[start:end], np.log(rates[start:end]))
  return float(rates[start + int(np.argmin(slopes))])


def parse_range(values) -> tuple[float, float]:
  """`--lr_range`'s two rates as numbers; `ConfigError` for anything else."""
  try:
    low, high = (float(v) for v in values)
  except ValueError:
    raise ConfigError(f'--lr_range must be two rates, low,high (e.g. 1e-7,1); got '
                      f'{",".join(values)}') from None
  return low, high


MIN_UPDATES = 5


def _check_range(low: float, high: float, steps: int, accumulate: int):
  if not (0 < low < high and math.isfinite(high)):
    raise ConfigError(f'--lr_range must be two rates 0 < low < high, got {low:g}, {high:g}')
  if steps // accumulate < MIN_UPDATES:
    raise ConfigError(f'--lr_steps={steps} makes {steps // accumulate} optimizer updates '
                      f'(train.accumulate_steps={accumulate}); the test needs at least '
                      f'{MIN_UPDATES}')


# What a later phase's start must agree on with the workdir's run.
_SAME_AS_RUN = ('model.backbone', 'model.backbone_args', 'model.head', 'image_size')


def _check_workdir(config, workdir: Path, needs_run: bool):
  """The workdir is not a file; for a later phase, its run was made with the config's model
  and data (`ConfigError` lists what differs)."""
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f'--workdir {workdir} is a file')
  if not needs_run or not (workdir / 'config.json').exists():
    return
  import json

  from tlflax import resume
  from tlflax.run_parts import data_differences
  stored = config_lib.upgrade_stored(json.loads((workdir / 'config.json').read_text()))
  changed = {**{key: values for key, values in config_lib.differences(
      stored, resume.config_as_json(config)).items() if key in _SAME_AS_RUN},
      **data_differences(stored, config)}
  if changed:
    raise ConfigError(f'{workdir} holds a run made with another model or data '
                      f'({resume.listing(changed)}): its phases/ do not fit this config')


def _starting_variables(config, model, workdir: Path, plan, index: int, mesh) -> dict:
  """The weights the phase starts from: the pretrained ones for the first phase, else the
  previous phase's final model kept in the workdir."""
  if index == 0:
    init_rng, _ = rngs(config)
    return parallel.replicate(init_variables(model, config.image_size, init_rng,
                                             config.model.weights), mesh)
  previous = plan[index - 1].name
  folder = workdir / 'phases' / previous
  if not folder.is_dir():
    raise DataError(f'phase {plan[index].name!r} starts from phase {previous!r}, whose final '
                    f'model is not in {folder}: train that phase first (or test phase '
                    f'{plan[0].name!r})')
  like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=parallel.replicated(mesh)),
                      abstract_variables(model, config.image_size))
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(folder.absolute(), like)


def range_test(config, workdir, phase_name: Optional[str] = None, low: float = 1e-7,
               high: float = 1.0, steps: int = 100) -> dict:
  """Runs the test for phase `phase_name` (default: the first) and writes its files; returns
  what `<phase>.json` holds."""
  check_config(config)
  _check_range(low, high, steps, config.train.accumulate_steps)
  plan = phase_plan(config)
  names = [phase.name for phase in plan]
  name = phase_name or names[0]
  if name not in names:
    raise ConfigError(f'--phase={name}: the config has phases {names}')
  index = names.index(name)
  phase = plan[index]
  workdir = Path(workdir)
  _check_workdir(config, workdir, needs_run=index > 0)
  mesh = parallel.data_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  devices.prepare(config.compute, config.batch_size)
  splits = load_splits(config)
  objective = make_objective(config, list(splits['train'].class_names),
                             splits['train'].class_counts)
  model = make_model(config, objective)
  feed = image_feed(config, model, objective, splits, mesh)
  try:
    variables = _starting_variables(config, model, workdir, plan, index, mesh)
    layers = backbone_layers(model)
    groups = param_groups_lib.param_groups(
        variables['params'], layers,
        config_lib.fine_tune_index(phase.settings, model.spec, layers),
        phase.settings.param_groups)
    if phase.settings.schedule.name != 'constant' or optim.warmup_steps(
        phase.settings, feed.steps_per_epoch):
      logging.info('lr_find: the phase\'s %s schedule is set aside for the test; its rate grows '
                   'from %g to %g', phase.settings.schedule.name, low, high)
    accumulate = config.train.accumulate_steps
    updates = -(-steps // accumulate)
    schedule = lambda step: low * (high / low) ** (  # noqa: E731
        (step // accumulate) / max(updates - 1, 1))
    tx = optim.make_optimizer(phase.settings, groups, feed.steps_per_epoch, accumulate, schedule)
    view = feed.training_view(param_groups_lib.first_trained_layer(groups, layers))
    _, dropout_rng = rngs(config)
    train_step = make_train_step(view.apply_fn, tx, groups, objective, dropout_rng, mesh,
                                 view.input_key, mixing_of(config))
    result = _run(train_step, parallel.replicate(TrainState.create(variables, tx), mesh), view,
                  schedule, steps, name, accumulate)
  finally:
    feed.release()
  out = writable(workdir) / FOLDER
  out.mkdir(exist_ok=True)
  if jax.process_index() == 0:
    write_json(out / f'{name}.json', result)
    plots.lr_find_curve(result, f'lr_find: phase {name}', out / f'{name}.png')
  logging.info('lr_find: suggested rate %.3g for phase %s (%s)', result['suggestion'], name,
               result['stopped'])
  if result['note']:
    logging.warning('lr_find: %s', result['note'])
  return result


def _endless(feed):
  """The feed's training batches, epoch after epoch."""
  for epoch in itertools.count():
    yield from feed.train(epoch)


def _run(train_step, state, feed, schedule, steps: int, name: str, accumulate: int) -> dict:
  """Steps until `steps` or divergence; the rates, losses (one per optimizer update: the mean of
  its `accumulate` batches) and the suggestion."""
  rates, losses, stopped = [], [], f'ran all {steps} steps'
  best, pending = math.inf, []
  with tqdm(total=steps, desc=f'lr_find {name}', unit='batch', leave=False,
            disable=None) as bar:
    whole_updates = steps - steps % accumulate  # a last partial update makes no step
    for step, batch in enumerate(itertools.islice(_endless(feed), whole_updates)):
      state, metrics = train_step(state, batch)
      pending.append(float(metrics['loss']) / max(float(metrics['count']), 1.0))
      bar.update(1)
      if len(pending) < accumulate:
        continue
      rates.append(float(schedule(step - len(pending) + 1)))
      losses.append(sum(pending) / len(pending))
      pending = []
      if math.isfinite(losses[-1]):
        best = min(best, smoothed(losses)[-1])
      if not math.isfinite(losses[-1]) or smoothed(losses)[-1] > DIVERGENCE * best:
        stopped = f'stopped at step {step + 1}: the loss diverged at rate {rates[-1]:.3g}'
        break
  finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
  if not finite:
    raise TrainingDiverged(f'lr_find: the loss was {losses[0]} from the first step, at rate '
                           f'{rates[0]:.3g}: lower --lr_range')
  smooth = smoothed(np.asarray(losses)[finite])
  note = ''
  if no_descent(smooth):
    note = (f'the smoothed loss was lowest at update {int(np.argmin(smooth)) + 1} of '
            f'{len(smooth)}, so the test saw no descent to read a rate from: start --lr_range '
            'lower (or give more --lr_steps); the suggestion is a tenth of the rate there')
  return {'rates': rates, 'losses': [loss if math.isfinite(loss) else None for loss in losses],
          'smoothed': smooth.tolist(), 'suggestion': suggestion(np.asarray(rates)[finite], smooth),
          'stopped': stopped, 'note': note, 'smoothing': SMOOTHING,
          'divergence_factor': DIVERGENCE}
