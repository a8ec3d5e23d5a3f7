"""Pure train and eval steps on a `TrainState`; `make_train_step` and `make_eval_step` jit them."""
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from tlflax import parallel
from tlflax.mixing import Mixing
from tlflax.objectives import Objective
from tlflax.param_groups import FROZEN


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes (the checkpointed state)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any = None  # the average of the weights (`train.ema_decay`), if kept

  @classmethod
  def create(cls, variables: dict, tx, step: int = 0, ema: bool = False) -> 'TrainState':
    """A state at `step` for `{'params', 'batch_stats'}` with a fresh `tx` optimizer state (and,
    with `ema`, an average that starts at the parameters)."""
    return cls(step=jnp.asarray(step, jnp.int32), params=variables['params'],
               batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']),
               ema_params=jax.tree.map(jnp.copy, variables['params']) if ema else None)

  @property
  def variables(self) -> dict:
    """`{'params', 'batch_stats'}`: the model's variables, as `model.apply` takes them."""
    return {'params': self.params, 'batch_stats': self.batch_stats}

  @property
  def ema_variables(self) -> Optional[dict]:
    """The model's variables with the averaged parameters (None without an average)."""
    if self.ema_params is None:
      return None
    return {'params': self.ema_params, 'batch_stats': self.batch_stats}


def train_step(state: TrainState, batch, *, apply_fn, tx, param_groups, objective: Objective,
               dropout_rng, input_key='image', mixing: Mixing = Mixing(), ema_decay: float = 0.0):
  """One optimizer step on `batch[input_key]` with the `objective`'s class-weighted loss, the
  images mixed first where `mixing` is active. Only parameters outside the 'frozen' group are
  differentiated, so the backward pass stops at the freeze boundary; frozen leaves get zeros,
  which `set_to_zero` ignores. With `ema_decay`, the trained leaves' average moves towards the
  new parameters whenever they changed (under `optax.MultiSteps`, once per accumulated batch)."""
  flat = traverse_util.flatten_dict(state.params)
  flat_groups = traverse_util.flatten_dict(param_groups)
  trainable = {k: v for k, v in flat.items() if flat_groups[k] != FROZEN}
  step_rng = jax.random.fold_in(dropout_rng, state.step)
  if mixing.active:
    images, targets, labels = mixing(batch[input_key], batch['label'], objective.num_classes,
                                     jax.random.fold_in(step_rng, 1))
    batch = {**batch, input_key: images, 'target': targets, 'label': labels}

  def loss_fn(trainable):
    params = traverse_util.unflatten_dict({**flat, **trainable})
    logits = apply_fn({'params': params, 'batch_stats': state.batch_stats}, batch[input_key],
                      train=True, rngs={'dropout': step_rng})
    metrics = objective.metric_sums(logits, batch, weighted=True)
    return metrics['loss'] / jnp.maximum(metrics['count'], 1), metrics

  grads, metrics = jax.grad(loss_fn, has_aux=True)(trainable)
  grads = traverse_util.unflatten_dict(
      {k: grads[k] if k in grads else jnp.zeros_like(v) for k, v in flat.items()})
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if ema_params is not None:
    moved = _averaged(ema_params, params, flat_groups, ema_decay)
    # `optax.MultiSteps` updates the parameters when its count of micro-batches returns to 0
    updated = opt_state.mini_step == 0 if isinstance(opt_state, optax.MultiStepsState) else True
    ema_params = jax.tree.map(lambda new, old: jnp.where(updated, new, old), moved, ema_params)
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        ema_params=ema_params)
  return state, metrics


def _averaged(ema_params, params, flat_groups: dict, decay: float):
  """`optax.incremental_update` of the trained leaves' average (frozen leaves stay as they are:
  they equal the parameters)."""
  flat_ema, flat_params = (traverse_util.flatten_dict(t) for t in (ema_params, params))
  return traverse_util.unflatten_dict({
      k: v if flat_groups[k] == FROZEN
      else optax.incremental_update(flat_params[k], v, 1.0 - decay)
      for k, v in flat_ema.items()})


def eval_step(params, batch_stats, batch, *, apply_fn, objective: Objective, input_key='image'):
  """Metric sums (`Objective.metric_sums`, unweighted) for a (possibly padded) evaluation batch."""
  logits = apply_fn({'params': params, 'batch_stats': batch_stats}, batch[input_key],
                    train=False)
  return objective.metric_sums(logits, batch)


def logits_step(params, batch_stats, batch, *, apply_fn, input_key='image'):
  """The logits of an evaluation batch, one row per example (padding included)."""
  return apply_fn({'params': params, 'batch_stats': batch_stats}, batch[input_key], train=False)


def make_train_step(apply_fn, tx, param_groups, objective: Objective, dropout_rng, mesh=None,
                    input_key='image', mixing: Mixing = Mixing(), ema_decay: float = 0.0):
  """The jit-compiled train step for one phase; it donates its state. With a `mesh`, the batch is
  split over its devices and the state replicated (data parallelism)."""
  step = functools.partial(train_step, apply_fn=apply_fn, tx=tx, param_groups=param_groups,
                           objective=objective, dropout_rng=dropout_rng, input_key=input_key,
                           mixing=mixing, ema_decay=ema_decay)
  if mesh is None:
    return jax.jit(step, donate_argnums=0)
  replicated = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=0, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=replicated)


def jit_evaluation(step, mesh, out_sharding):
  """`step(params, batch_stats, batch)` jitted; with a `mesh`, the batch split over it, the
  variables replicated and the output laid out by `out_sharding(mesh)`."""
  if mesh is None:
    return jax.jit(step)
  replicated = parallel.replicated(mesh)
  return jax.jit(step, in_shardings=(replicated, replicated, parallel.batch_sharding(mesh)),
                 out_shardings=out_sharding(mesh))


def make_eval_step(apply_fn, objective: Objective, mesh=None, input_key='image'):
  """The jit-compiled eval step (batch split over the `mesh`'s devices, if given)."""
  return jit_evaluation(functools.partial(eval_step, apply_fn=apply_fn, objective=objective,
                                           input_key=input_key), mesh, parallel.replicated)


def make_logits_step(apply_fn, mesh=None, input_key='image'):
  """The jit-compiled `logits_step`; its logits stay split over the mesh like the batch."""
  return jit_evaluation(functools.partial(logits_step, apply_fn=apply_fn, input_key=input_key),
                         mesh, parallel.batch_sharding)
