"""Test-time augmentation (`eval.tta`): a classifier's probabilities averaged over views of each
image, as fastai's `tta` and the ten-crop evaluation of the ImageNet papers do.

- 'flip': the image and its mirror (2 views);
- 'crops': the whole image, its centre and its four corners at 7/8 of the side (resized back to
  the image's size), and the mirror of each (12 views).

The views are taken of the preprocessed images: flips and bilinear resizing commute with every
backbone's preprocessing, which is per-pixel affine.
"""
import functools

import jax
import jax.numpy as jnp

from tlflax import parallel
from tlflax.data import image_ops
from tlflax.objectives import Objective
from tlflax.steps import jit_evaluation

MODES = ('none', 'flip', 'crops')
CROP = 7 / 8  # side of the 'crops' views, as a fraction of the image's


def views(images: jax.Array, mode: str) -> list:
  """The `mode`'s views of a (B, H, W, C) batch, the batch itself first."""
  if mode not in MODES[1:]:
    raise ValueError(f'eval.tta must be one of {MODES}, got {mode!r}')
  shown = [images]
  if mode == 'crops':
    count, height, width = images.shape[:3]
    side_h, side_w = round(height * CROP), round(width * CROP)
    corners = [(0, 0), (0, width - side_w), (height - side_h, 0), (height - side_h, width - side_w),
               ((height - side_h) // 2, (width - side_w) // 2)]
    full = lambda value: jnp.full((count,), value, jnp.int32)  # noqa: E731
    shown += [image_ops.resized_crops(images, full(top), full(left), full(side_h), full(side_w))
              .astype(images.dtype) for top, left in corners]
  return shown + [view[:, :, ::-1] for view in shown]


def mean_probabilities_logits(params, batch_stats, batch, *, apply_fn, objective: Objective,
                              mode: str, input_key='image'):
  """The head-form logits (`Objective.logits_of`) of each example's probabilities averaged over
  the `mode`'s views."""
  variables = {'params': params, 'batch_stats': batch_stats}
  probabilities = [objective.probabilities(apply_fn(variables, view, train=False))
                   for view in views(batch[input_key], mode)]
  return objective.logits_of(sum(probabilities) / len(probabilities))


def make_tta_logits_step(apply_fn, objective: Objective, mode: str, mesh=None, input_key='image'):
  """`mean_probabilities_logits` jitted as `tlflax.steps.make_logits_step` is: its logits stay
  split over the mesh like the batch."""
  return jit_evaluation(functools.partial(mean_probabilities_logits, apply_fn=apply_fn,
                                          objective=objective, mode=mode, input_key=input_key),
                        mesh, parallel.batch_sharding)
