"""Orbax checkpoints in the workdir.

`WORKDIR/checkpoints/<epoch>/` holds, after every epoch, three items: `model` (params and
batch_stats: all that evaluation and prediction need), `train` (the whole `TrainState`, optimizer
included) and `meta` (phase, epoch, class names, config, history), with the epoch's validation
metrics; a run that averages its weights (`train.ema_decay`) adds `ema`, the average's `model`.
Orbax keeps the latest `keep` checkpoints and the best one by the `best_metric` (`LatestN` and
`BestN` preservation policies); `select` finds 'latest', 'best' or an epoch. At the
end of each phase, `WORKDIR/phases/<name>/` keeps that phase's final model. Orbax writes to a
temporary folder and renames it when complete, so a run killed mid-save leaves the previous
checkpoint intact. A checkpoint that does not restore (a damaged file) is skipped for the one before
it (`restore_newest`).
"""
import ast
import copy
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from tlflax.errors import CheckpointError, ConfigError, RunError

T = TypeVar('T')
# the metrics a best checkpoint can use (ema_: of the weights' average, `train.ema_decay`)
BEST_METRICS = {'val_loss': 'min', 'val_accuracy': 'max', 'ema_val_loss': 'min',
                'ema_val_accuracy': 'max'}


class Checkpoints:
  """Per-epoch checkpoints and per-phase models of one workdir."""

  def __init__(self, workdir, keep: int = 3, sharding: Optional[jax.sharding.Sharding] = None,
               best_metric: str = 'val_loss'):
    """`sharding`: where restored arrays go (default: the first device)."""
    self.workdir = Path(workdir).absolute()
    self.sharding = sharding
    self.best_metric = best_metric
    self._closed = False
    policy = ocp.checkpoint_managers.AnyPreservationPolicy([
        ocp.checkpoint_managers.LatestN(keep),
        ocp.checkpoint_managers.BestN(get_metric_fn=self._rank, n=1,
                                      keep_checkpoints_without_metrics=False)])
    self.manager = ocp.CheckpointManager(
        self.workdir / 'checkpoints', item_names=('model', 'ema', 'train', 'meta'),
        options=ocp.CheckpointManagerOptions(
            create=True, preservation_policy=policy,
            # orbax writes a checkpoint's metrics only when it tracks a best one
            best_fn=lambda metrics: metrics.get(best_metric, self._worst),
            best_mode=BEST_METRICS[best_metric]))

  @property
  def _worst(self) -> float:
    """The rank of a checkpoint saved without the best metric (an ema_ metric added since)."""
    return math.inf if BEST_METRICS[self.best_metric] == 'min' else -math.inf

  def _rank(self, metrics: dict) -> tuple:
    """Higher is better: the best metric's value, then the earlier epoch."""
    sign = -1 if BEST_METRICS[self.best_metric] == 'min' else 1
    return sign * metrics.get(self.best_metric, self._worst), -metrics['epoch']

  def save(self, epoch: int, state, meta: dict, metrics: dict):
    """Saves `state` (a `TrainState`) and the JSON-able `meta` as epoch `epoch`, with its
    validation `metrics` (`BEST_METRICS`' keys). Orbax writes in the background, so `meta` is
    copied: later changes to it do not reach this checkpoint."""
    average = ({} if state.ema_variables is None
               else {'ema': ocp.args.StandardSave(state.ema_variables)})
    self.manager.save(epoch, args=ocp.args.Composite(
        model=ocp.args.StandardSave(state.variables), train=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(copy.deepcopy(meta)), **average),
        metrics={**{key: float(metrics[key]) for key in BEST_METRICS if key in metrics},
                 'epoch': epoch})

  def epochs(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def best_epoch(self) -> Optional[int]:
    """The kept epoch with the best `best_metric` (the earliest of equals); None if no kept
    checkpoint has metrics."""
    ranked = [(self._rank(metrics), epoch) for epoch in self.epochs()
              if (metrics := self.manager.metrics(epoch)) and self.best_metric in metrics]
    return max(ranked)[1] if ranked else None

  def select(self, which: str) -> Optional[int]:
    """The epoch `which` names: 'latest' is None (the newest that restores, see
    `restore_newest`), 'best' the `best_epoch`, or an epoch number that is kept. `ConfigError`
    says what is there when it names none."""
    if which == 'latest':
      return None
    kept = self.epochs()
    epoch = self.best_epoch() if which == 'best' else int(which) if which.isdigit() else None
    if epoch is None or epoch not in kept:
      raise ConfigError(f'--checkpoint={which}: {self.manager.directory} has no such checkpoint '
                        f"(kept epochs: {kept}; use 'latest', 'best' or one of them)")
    return epoch

  def restore_meta(self, epoch: int) -> dict:
    return self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def _restore(self, epoch: int, item: str, like):
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.sharding), like)
    restored = self.manager.restore(epoch, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(abstract)}))
    return restored[item]

  def restore_state(self, epoch: int, like):
    """The `TrainState` saved at `epoch`, restored into the structure of `like`. A state saved
    without an average of the weights (by a run without one, or by a tlflax from before
    `ema_params`) restores into `like` without one."""
    if like.ema_params is None and 'ema_params' not in self._saved_fields(epoch, 'train'):
      fields = {name: getattr(like, name) for name in ('step', 'params', 'batch_stats',
                                                       'opt_state')}
      return type(like)(**self._restore(epoch, 'train', fields), ema_params=None)
    return self._restore(epoch, 'train', like)

  def _saved_fields(self, epoch: int, item: str) -> set:
    """The top-level keys of the tree saved as `item` at `epoch` (from orbax's metadata file)."""
    path = self.manager.directory / str(epoch) / item / '_METADATA'
    keys = json.loads(path.read_text())['tree_metadata']
    return {ast.literal_eval(key)[0] for key in keys}

  def restore_model(self, epoch: int, like: dict, average: bool = False) -> dict:
    """`{'params', 'batch_stats'}` saved at `epoch`, in the structure of `like`; with `average`,
    those of the weights' average (`train.ema_decay`), which a run without one did not save
    (`CheckpointError`)."""
    if not average:
      return self._restore(epoch, 'model', like)
    if not (self.manager.directory / str(epoch) / 'ema').is_dir():
      raise CheckpointError(f'the checkpoint of epoch {epoch} holds no average of the weights: '
                            'its run had no train.ema_decay')
    return self._restore(epoch, 'ema', like)

  def restore_newest(self, restore: Callable[[int], T],
                     set_aside: bool = False) -> Optional[tuple[int, T]]:
    """(epoch, `restore(epoch)`) for the newest epoch whose checkpoint restores; None if there
    is none. A checkpoint that fails to restore is logged and the one before it tried; with
    `set_aside`, the failed newer ones are then moved to `WORKDIR/corrupt_checkpoints/`, so that
    training can save those epochs again. `RunError`s (a config that does not match the run)
    are not damage: they propagate. If no checkpoint restores, raises `CheckpointError`. With
    several processes, all must restore the same epoch, or `CheckpointError` says so."""
    epochs = sorted(self.manager.all_steps(), reverse=True)
    for epoch in epochs:
      try:
        result = restore(epoch)
      except RunError:
        raise
      except Exception as e:  # orbax and tensorstore raise many kinds for damaged files
        logging.warning('Checkpoint %s does not restore (%s); trying the one before it',
                        self.manager.directory / str(epoch), _summary(e))
        continue
      break
    else:
      if epochs:
        raise CheckpointError(f'none of the checkpoints in {self.manager.directory} restores '
                              f'(epochs {sorted(epochs)}; see the warnings above). Move them '
                              'away to start this run afresh, or use another workdir.')
      return None
    if jax.process_count() > 1:
      multihost_utils.assert_equal(np.int64(epoch), 'the processes restored checkpoints of '
                                   'different epochs (see the warnings above)')
    newer = [e for e in epochs if e > epoch]
    if newer:
      logging.warning('Using checkpoint %d, the newest that restores', epoch)
      if set_aside:
        self._set_aside(newer)
    return epoch, result

  def restore_epoch(self, epoch: int, restore: Callable[[int], T], hint: str) -> T:
    """`restore(epoch)` for that epoch alone: if its checkpoint does not restore, a
    `CheckpointError` names it and ends with `hint`. `RunError`s propagate."""
    try:
      return restore(epoch)
    except RunError:
      raise
    except Exception as e:  # orbax and tensorstore raise many kinds for damaged files
      raise CheckpointError(f'the checkpoint of epoch {epoch} in {self.manager.directory} does '
                            f'not restore ({_summary(e)}); {hint}') from e

  def _set_aside(self, epochs):
    if jax.process_index() == 0:
      target = self.workdir / 'corrupt_checkpoints'
      target.mkdir(exist_ok=True)
      for epoch in epochs:
        destination = target / f'{epoch}-{time.strftime("%Y%m%d-%H%M%S")}'
        shutil.move(self.manager.directory / str(epoch), destination)
        logging.warning('Moved the damaged checkpoint of epoch %d to %s', epoch, destination)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('tlflax: damaged checkpoints set aside')
    self.manager.reload()

  def save_phase(self, name: str, variables: dict):
    """Keeps `variables` (`{'params', 'batch_stats'}`) as phase `name`'s final model."""
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(self.workdir / 'phases' / name, variables, force=True)

  def close(self):
    """Waits for the checkpoints being written, then closes the manager (once)."""
    if not self._closed:
      self.manager.wait_until_finished()
      self.manager.close()
      self._closed = True


def _summary(error: Exception) -> str:
  """An exception's type and the first line of its message."""
  message = str(error)
  return f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"
