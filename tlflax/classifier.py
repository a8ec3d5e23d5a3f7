"""The tutorial's classifier: a MobileNetV2 backbone, global average pooling, dropout, logits."""
import jax
import jax.numpy as jnp
from flax import linen as nn

from tlflax import weights
from tlflax.models import MobileNetV2


class Classifier(nn.Module):
  """Classifier on a pretrained backbone, with `outputs` logits (1: the tutorial's binary head;
  see `tlflax.objectives`).

  The backbone's BatchNorm always uses its moving statistics (the tutorial's
  `base_model(x, training=False)`), in every phase, also for unfrozen layers; `train` only
  switches dropout. `dtype` is the computation dtype (bfloat16 for mixed precision); parameters
  and the returned logits stay float32.
  """
  alpha: float = 1.0
  outputs: int = 1
  dropout: float = 0.2
  depthwise_implementation: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.backbone = MobileNetV2(alpha=self.alpha, include_top=False, pooling='avg',
                                depthwise_implementation=self.depthwise_implementation,
                                dtype=self.dtype)
    self.head_dropout = nn.Dropout(self.dropout)
    self.head = nn.Dense(self.outputs, dtype=self.dtype)

  def __call__(self, inputs, train: bool = False, *, start: int = 0):
    """(b, outputs) logits of images, or with `start` > 0 of `frozen_activations(images, start)`."""
    return self.classify(self.backbone(inputs, train=False, start=start), train)

  def classify(self, features, train: bool = False):
    """Logits for pooled backbone features: dropout, then the dense head."""
    features = self.head_dropout(features, deterministic=not train)
    return self.head(features).astype(jnp.float32)

  def frozen_activations(self, images, stop: int) -> dict:
    """What backbone layers `stop...` need from the layers below (see `MobileNetV2`)."""
    return self.backbone(images, train=False, stop=stop)


def backbone_layers(model: Classifier):
  """The Keras layer table of the classifier's backbone (features with average pooling)."""
  return MobileNetV2(alpha=model.alpha, include_top=False, pooling='avg').layers


def init_variables(model: Classifier, image_size: int, rng, pretrained: str) -> dict:
  """Initial `{'params', 'batch_stats'}`: a fresh head on pretrained (or, for 'none', random)
  backbone weights, loaded strictly. The head is the one `model.init(rng, ...)` would make; with
  pretrained weights only the head is initialized, which spares compiling the network's init."""
  if pretrained == 'none':
    return jax.jit(model.init, static_argnames='train')(
        rng, jnp.zeros((1, image_size, image_size, 3)), train=False)
  backbone = weights.load_pretrained(pretrained, alpha=model.alpha, include_top=False,
                                     input_size=image_size)
  width = next(layer.features for layer in reversed(backbone_layers(model)) if layer.kind == 'conv')
  head = jax.jit(lambda key: model.init(key, jnp.zeros((1, width)),
                                       method=Classifier.classify))(rng)
  return {'params': {**head['params'], 'backbone': backbone['params']},
          'batch_stats': {'backbone': backbone['batch_stats']}}


def abstract_variables(model: Classifier, image_size: int) -> dict:
  """Shapes and dtypes of `{'params', 'batch_stats'}` (what checkpoints restore into); nothing
  is computed or loaded."""
  return jax.eval_shape(lambda: init_variables(model, image_size, jax.random.key(0), 'none'))
