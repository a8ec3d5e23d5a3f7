"""The tutorial's classifier: a pretrained backbone, global average pooling, dropout, logits."""
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from tlflax import backbones, weights


class Classifier(nn.Module):
  """Classifier on a pretrained backbone (`tlflax.backbones`: `backbone` and its `backbone_args`),
  with `outputs` logits (1: the tutorial's binary head; see `tlflax.objectives`).

  The backbone's BatchNorm always uses its moving statistics (the tutorial's
  `base_model(x, training=False)`), in every phase, also for unfrozen layers; `train` only
  switches the head's dropout. `dtype` is the computation dtype (bfloat16 for mixed precision);
  parameters and the returned logits stay float32. Inputs are preprocessed as the backbone's
  `preprocessing` says.
  """
  backbone: str = backbones.DEFAULT_BACKBONE
  backbone_args: Optional[Mapping[str, Any]] = None
  outputs: int = 1
  dropout: float = 0.2
  depthwise_implementation: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.features = backbones.network(
        self.spec, self.backbone_args, depthwise_implementation=self.depthwise_implementation,
        dtype=self.dtype, name='backbone')
    self.head_dropout = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.outputs, dtype=self.dtype)

  @property
  def spec(self) -> backbones.Backbone:
    return backbones.get(self.backbone)

  def __call__(self, inputs, train: bool = False, *, start: int = 0):
    """(b, outputs) logits of images, or with `start` > 0 of `frozen_activations(images, start)`."""
    return self.classify(self.features(inputs, train=False, start=start), train)

  def classify(self, features, train: bool = False):
    """Logits for pooled backbone features: dropout, then the dense head."""
    features = self.head_dropout(features, deterministic=not train)
    return self.head(features).astype(jnp.float32)

  def frozen_activations(self, images, stop: int) -> dict:
    """What backbone layers `stop...` need from the layers below (see `KerasGraph`)."""
    return self.features(images, train=False, stop=stop)


def backbone_layers(model: Classifier):
  """The Keras layer table of the classifier's backbone (features with average pooling)."""
  return backbones.table(model.spec, model.backbone_args)


def init_variables(model: Classifier, image_size: int, rng, pretrained: str) -> dict:
  """Initial `{'params', 'batch_stats'}`: a fresh head on pretrained (or, for 'none', random)
  backbone weights, loaded strictly. The head is the one `model.init(rng, ...)` would make; with
  pretrained weights only the head is initialized, which spares compiling the network's init."""
  if pretrained == 'none':  # (a backbone without BatchNorm has no batch_stats of its own)
    return {'batch_stats': {'backbone': {}}, **jax.jit(model.init, static_argnames='train')(
        rng, jnp.zeros((1, image_size, image_size, 3)), train=False)}
  backbone = weights.load_pretrained(pretrained, backbone=model.backbone,
                                     backbone_args=model.backbone_args, include_top=False,
                                     input_size=image_size)
  width = feature_width(model)
  head = jax.jit(lambda key: model.init(key, jnp.zeros((1, width)),
                                       method=Classifier.classify))(rng)
  return {'params': {**head['params'], 'backbone': backbone['params']},
          'batch_stats': {'backbone': backbone['batch_stats']}}


def feature_width(model: Classifier) -> int:
  """The number of pooled features the backbone gives the head."""
  layers = backbone_layers(model)
  shapes = backbones.variable_shapes(layers)['params']
  last = next(layer for layer in reversed(layers) if layer.name in shapes)
  return next(iter(s.shape[-1] for s in shapes[last.name].values()))


def abstract_variables(model: Classifier, image_size: int) -> dict:
  """Shapes and dtypes of `{'params', 'batch_stats'}` (what checkpoints restore into); nothing
  is computed or loaded."""
  return jax.eval_shape(lambda: init_variables(model, image_size, jax.random.key(0), 'none'))
