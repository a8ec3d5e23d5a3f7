"""Grad-CAM (`tlflax.explain`): on a tiny backbone trained where one quadrant decides the class,
and on the real ImageNet MobileNetV2 for the shared cat photo; `--mode=explain`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

import tiny_backbone
from tlflax import backbones, explain
from tlflax.classifier import Classifier, backbone_layers
from tlflax.objectives import Objective

EGYPTIAN_CAT = 285
SIZE = 32


def quadrant_images(rng, count, deciding=0):
  """Noise images whose class is decided by quadrant `deciding` (0: top left, 1: top right,
  2: bottom left, 3: bottom right): a red 6x6 square there for class 1, none for class 0. Every
  other quadrant holds a blue square as bright, in both classes. (images, labels, masks of the
  red squares, masks of the blue squares)."""
  images = rng.uniform(0, 0.3, (count, SIZE, SIZE, 3)).astype(np.float32)
  labels = rng.integers(0, 2, count)
  red, blue = np.zeros((2, count, SIZE, SIZE), bool)
  half = SIZE // 2
  for image, label, red_mask, blue_mask in zip(images, labels, red, blue):
    for quadrant in range(4):
      if quadrant == deciding and not label:
        continue
      top, left = half * (quadrant // 2), half * (quadrant % 2)
      y, x = top + rng.integers(1, half - 7), left + rng.integers(1, half - 7)
      image[y:y + 6, x:x + 6] = (1.0, 0.0, 0.0) if quadrant == deciding else (0.0, 0.0, 1.0)
      (red_mask if quadrant == deciding else blue_mask)[y:y + 6, x:x + 6] = True
  return images, labels, red, blue


def peak_quadrants(maps):
  """The quadrant (numbered as in `quadrant_images`) of each map's maximum."""
  rows, columns = np.unravel_index(maps.reshape(len(maps), -1).argmax(1), maps.shape[1:])
  return 2 * (rows >= SIZE // 2) + (columns >= SIZE // 2)


def mean_inside(maps, masks):
  """Each map's mean over its mask."""
  return np.array([m[mask].mean() for m, mask in zip(maps, masks)])


@pytest.fixture(scope='module')
def quadrant_classifier():
  """The tiny residual backbone with a one-logit head, trained from random weights for 300 steps
  on quadrant images: (model, objective, variables)."""
  model = Classifier(backbone=tiny_backbone.NAME, backbone_args={'width': 8}, dropout=0.0)
  objective = Objective(2, sigmoid=True)
  variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  tx = optax.adam(3e-3)
  state = tx.init(variables['params'])

  @jax.jit
  def step(params, state, images, labels):
    def loss(params):
      logits = model.apply({**variables, 'params': params}, images)
      return objective.losses(logits, labels).mean()
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  rng = np.random.default_rng(0)
  params = variables['params']
  for _ in range(300):
    images, labels, _, _ = quadrant_images(rng, 32)
    params, state, _ = step(params, state, images, labels)
  return model, objective, {**variables, 'params': params}


def test_grad_cam_peaks_in_the_quadrant_that_decides_the_class(quadrant_classifier):
  model, objective, variables = quadrant_classifier
  images, labels, red, blue = quadrant_images(np.random.default_rng(1), 64)
  logits = np.asarray(model.apply(variables, images))[:, 0]
  assert np.mean((logits > 0) == labels) > 0.95  # it learned the rule
  positive = labels == 1
  maps = explain.class_activation_maps(model, objective, variables, images[positive],
                                       np.ones(positive.sum(), int))
  assert maps.shape == images[positive].shape[:3] and maps.min() >= 0 and maps.max() <= 1
  assert np.mean(peak_quadrants(maps) == 0) >= 0.9  # chance: 0.25
  # the deciding square, not the blue ones as bright: a map of activations alone would not tell
  assert np.mean(mean_inside(maps, red[positive]) > 3 * mean_inside(maps, blue[positive])) >= 0.9


def test_grad_cam_of_the_other_class_sees_no_evidence_in_the_square(quadrant_classifier):
  """Class 0's score is -z: the red square counts against it, so its map (through the ReLU) is
  dark there where class 1's is bright (a wrong sign would light it up; without the ReLU it
  would go negative)."""
  model, objective, variables = quadrant_classifier
  images, labels, red, _ = quadrant_images(np.random.default_rng(3), 64)
  positive = labels == 1
  ones = explain.class_activation_maps(model, objective, variables, images[positive],
                                       np.ones(positive.sum(), int))
  zeros = explain.class_activation_maps(model, objective, variables, images[positive],
                                        np.zeros(positive.sum(), int))
  assert np.median(mean_inside(ones, red[positive])) > 0.5
  assert np.median(mean_inside(zeros, red[positive])) < 0.1
  assert zeros.min() >= 0 and ones.min() >= 0  # no negative evidence: the ReLU


def test_grad_cam_follows_the_evidence_to_another_quadrant(quadrant_classifier):
  """Trained on the top-left quadrant, shown the red square bottom right: the map moves there
  (it is no bias toward a corner)."""
  model, objective, variables = quadrant_classifier
  images, labels, _, _ = quadrant_images(np.random.default_rng(2), 32, deciding=3)
  positive = images[labels == 1]
  maps = explain.class_activation_maps(model, objective, variables, positive,
                                       np.ones(len(positive), int))
  assert np.mean(peak_quadrants(maps) == 3) >= 0.9


def test_grad_cam_returns_the_logits_and_explains_the_predicted_class(quadrant_classifier):
  model, objective, variables = quadrant_classifier
  images, labels, _, _ = quadrant_images(np.random.default_rng(4), 16)
  grad_cam = explain.make_grad_cam(model, objective)
  maps, logits = grad_cam(variables, images)
  np.testing.assert_allclose(logits, model.apply(variables, images), atol=1e-5)
  predicted = np.asarray(objective.predictions(logits))
  chosen, _ = grad_cam(variables, images, predicted)
  np.testing.assert_allclose(maps, chosen, atol=1e-6)


def test_grad_cam_of_the_real_mobilenet_v2_finds_the_cat(shared_dir, tflite_path):
  from tlflax.weights import load_pretrained
  imagenet = load_pretrained(str(tflite_path), include_top=True)
  backbone = dict(imagenet['params'])
  head = backbone.pop('predictions')
  model = Classifier(outputs=1000, dropout=0.0)
  variables = {'params': {'backbone': backbone, 'head': head},
               'batch_stats': {'backbone': imagenet['batch_stats']}}
  photo = Image.open(shared_dir / 'data' / 'imagenet_samples' / 'cat.bmp').convert('RGB')
  assert photo.size == (512, 341)
  image = np.asarray(photo.resize((224, 224), Image.BILINEAR), np.float32)
  inputs = model.spec.preprocessing(image[None])
  assert int(np.argmax(model.apply(variables, inputs)[0])) == EGYPTIAN_CAT
  heat = explain.class_activation_maps(model, Objective(1000, sigmoid=False), variables, inputs,
                                       [EGYPTIAN_CAT])[0]
  # the cat, in the 512x341 photo: x 50..365 (head 180..365), y 35..341 (head 35..215)
  scale = np.array([224 / 341, 224 / 512])
  row, column = np.unravel_index(heat.argmax(), heat.shape) / scale
  assert 180 <= column <= 365 and 35 <= row <= 215, (row, column)  # on the cat's head
  cat = np.zeros(heat.shape, bool)
  cat[int(35 * scale[0]):, int(50 * scale[1]):int(365 * scale[1])] = True
  assert heat[cat].mean() > 2 * heat[~cat].mean()


@pytest.mark.parametrize('name', backbones.names())
def test_every_backbone_s_grad_cam_layer_is_its_last_spatial_feature_map(name):
  """The pooling layer Grad-CAM stops at is the global pooling of the features (not a
  squeeze-excite block's, which keeps its dimensions), and nothing spatial comes after it."""
  model = Classifier(backbone=name)
  layers = backbone_layers(model)
  index = explain.pooling_index(model)
  assert layers[index].kind in explain.GLOBAL_POOLING and not layers[index].keepdims
  spatial = ('conv', 'depthwise', 'max_pool', 'avg_pool', *explain.GLOBAL_POOLING)
  assert not [layer.name for layer in layers[index + 1:] if layer.kind in spatial]
