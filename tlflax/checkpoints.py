"""Orbax checkpoints in the workdir.

`WORKDIR/checkpoints/<epoch>/` holds, after every epoch (the last `keep` of them), three items:
`model` (params and batch_stats: all that evaluation and prediction need), `train` (the whole
`TrainState`, optimizer included) and `meta` (phase, epoch, class names, history). At the end of each
phase, `WORKDIR/phases/<name>/` keeps that phase's final model. Orbax writes to a temporary folder
and renames it when complete, so a run killed mid-save leaves the previous checkpoint intact.
"""
from pathlib import Path
from typing import Optional

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Per-epoch checkpoints and per-phase models of one workdir."""

  def __init__(self, workdir, keep: int = 3, sharding: Optional[jax.sharding.Sharding] = None):
    """`sharding`: where restored arrays go (default: the first device)."""
    self.workdir = Path(workdir).absolute()
    self.sharding = sharding
    self.manager = ocp.CheckpointManager(
        self.workdir / 'checkpoints', item_names=('model', 'train', 'meta'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_epoch(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, epoch: int, state, meta: dict):
    model = {'params': state.params, 'batch_stats': state.batch_stats}
    self.manager.save(epoch, args=ocp.args.Composite(
        model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(meta)))

  def restore_meta(self, epoch: int) -> dict:
    return self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def _restore(self, epoch: int, item: str, like):
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.sharding), like)
    restored = self.manager.restore(epoch, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(abstract)}))
    return restored[item]

  def restore_state(self, epoch: int, like):
    """The `TrainState` saved at `epoch`, restored into the structure of `like`."""
    return self._restore(epoch, 'train', like)

  def restore_model(self, epoch: int, like: dict) -> dict:
    """`{'params', 'batch_stats'}` saved at `epoch`, in the structure of `like`."""
    return self._restore(epoch, 'model', like)

  def save_phase(self, name: str, state):
    path = self.workdir / 'phases' / name
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, {'params': state.params, 'batch_stats': state.batch_stats},
                        force=True)

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
