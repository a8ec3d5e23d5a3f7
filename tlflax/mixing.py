"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) with soft targets, in the train step.

Each example is paired with the example at the mirrored place of the global batch (timm's
pairing) and mixed with its own weight lambda ~ Beta(alpha, alpha): mixup blends the two images,
cutmix pastes a box of the partner covering about 1 - lambda of the image (clipped to the image,
and lambda then set to the area that stayed). The soft target is lambda of the example's class
and 1 - lambda of its partner's; the class with the larger share is the example's label for
training accuracy. With both on, each example is mixed one way or the other with equal chance.
"""
import dataclasses

import jax
import jax.numpy as jnp

from tlflax.data import image_ops


@dataclasses.dataclass(frozen=True)
class Mixing:
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0

  @property
  def active(self) -> bool:
    return bool(self.mixup_alpha or self.cutmix_alpha)

  def __call__(self, images, labels, num_classes: int, key):
    """(mixed images, (B, num_classes) soft targets, labels of the larger share)."""
    count, height, width = images.shape[:3]
    kinds_key, mixup_key, cutmix_key, box_key = jax.random.split(key, 4)
    partner = images[::-1]
    targets = jax.nn.one_hot(labels, num_classes)
    mixed_images, weights = images, jnp.ones((count,))
    use_cutmix = jnp.zeros((count,), bool)
    if self.cutmix_alpha:
      use_cutmix = (jax.random.bernoulli(kinds_key, 0.5, (count,)) if self.mixup_alpha
                    else jnp.ones((count,), bool))
      box = cutmix_boxes(box_key, jax.random.beta(cutmix_key, self.cutmix_alpha,
                                                  self.cutmix_alpha, (count,)), height, width)
      pasted = image_ops.in_boxes(height, width, *box)
      mixed_images = jnp.where(use_cutmix[:, None, None, None] & pasted, partner, images)
      kept = 1.0 - box[2] * box[3] / (height * width)
      weights = jnp.where(use_cutmix, kept, weights)
    if self.mixup_alpha:
      lam = jax.random.beta(mixup_key, self.mixup_alpha, self.mixup_alpha, (count,))
      blended = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * partner
      mixed_images = jnp.where(use_cutmix[:, None, None, None], mixed_images, blended)
      weights = jnp.where(use_cutmix, weights, lam)
    soft = weights[:, None] * targets + (1 - weights[:, None]) * targets[::-1]
    return mixed_images, soft, jnp.argmax(soft, axis=-1).astype(labels.dtype)


def cutmix_boxes(key, lam, height: int, width: int):
  """CutMix's boxes for weights `lam` (B,): sides sqrt(1 - lam) of the image's, centred at a
  uniform point and clipped to the image; int32 (top, left, box height, box width)."""
  cut = jnp.sqrt(1.0 - lam)
  cut_height, cut_width = jnp.floor(height * cut), jnp.floor(width * cut)
  centre_key_y, centre_key_x = jax.random.split(key)
  centre_y = jax.random.randint(centre_key_y, lam.shape, 0, height)
  centre_x = jax.random.randint(centre_key_x, lam.shape, 0, width)
  top = jnp.clip(centre_y - cut_height // 2, 0, height).astype(jnp.int32)
  bottom = jnp.clip(centre_y + cut_height // 2, 0, height).astype(jnp.int32)
  left = jnp.clip(centre_x - cut_width // 2, 0, width).astype(jnp.int32)
  right = jnp.clip(centre_x + cut_width // 2, 0, width).astype(jnp.int32)
  return top, left, bottom - top, right - left
