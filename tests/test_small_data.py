"""The small-data recipe's parts: augmentation ops on the device, mixup and cutmix with soft
targets, gradient accumulation and the average of the weights."""
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from runs import ROOT, run_main, overrides

from tlflax import optim, param_groups
from tlflax.classifier import Classifier, backbone_layers
from tlflax.config import phase
from tlflax.data import augment, color_ops, image_ops, randaugment
from tlflax.errors import ConfigError
from tlflax.mixing import Mixing
from tlflax.objectives import Objective
from tlflax.run_parts import check_config
from tlflax.steps import TrainState, make_train_step

RNG = np.random.default_rng(0)


@pytest.mark.parametrize('height,width,scale,ratio', [
    (160, 160, (0.08, 1.0), (3 / 4, 4 / 3)), (120, 200, (0.35, 0.9), (0.5, 2.0)),
    (64, 64, (0.45, 0.7), (1.5, 2.0))])
def test_crop_boxes_lie_in_the_image_within_the_scale_and_ratio(height, width, scale, ratio):
  """Over 4000 draws every box is inside the image; a box that is not the whole-image fallback
  has its area fraction and aspect ratio within the bounds (up to rounding its sides to whole
  pixels), and the draws spread over the bounds."""
  top, left, box_height, box_width = map(np.asarray, image_ops.crop_boxes(
      jax.random.key(1), 4000, height, width, scale, ratio))
  assert (top >= 0).all() and (left >= 0).all() and (box_height >= 1).all()
  assert (top + box_height <= height).all() and (left + box_width <= width).all()
  whole = (box_height == height) & (box_width == width)
  h, w = box_height[~whole].astype(float), box_width[~whole].astype(float)
  area = height * width
  assert ((h - 0.5) * (w - 0.5) <= scale[1] * area).all()
  assert ((h + 0.5) * (w + 0.5) >= scale[0] * area).all()
  assert ((w - 0.5) / (h + 0.5) <= ratio[1]).all() and ((w + 0.5) / (h - 0.5) >= ratio[0]).all()
  fractions = h * w / area
  assert whole.mean() < 0.5
  assert fractions.min() < scale[0] + 0.1 * (scale[1] - scale[0])
  assert fractions.max() > scale[0] + 0.5 * (scale[1] - scale[0])
  assert len(set(top.tolist())) > 10 or height - box_height.min() < 10


def test_a_resized_crop_shows_its_box_only():
  """A crop of the top-left quadrant of a four-colour image is that colour (its inner pixels);
  the whole image's crop is the image."""
  image = np.zeros((1, 64, 64, 3), np.float32)
  image[:, :32, :32] = (200, 10, 10)
  image[:, :32, 32:] = (10, 200, 10)
  image[:, 32:] = (10, 10, 200)
  one = lambda v: jnp.asarray([v], jnp.int32)  # noqa: E731
  crop = np.asarray(image_ops.resized_crops(jnp.asarray(image), one(0), one(0), one(32), one(32)))
  np.testing.assert_allclose(crop[0, 2:-2, 2:-2], np.broadcast_to((200, 10, 10), (60, 60, 3)),
                             atol=1e-3)
  np.testing.assert_allclose(image_ops.resized_crops(jnp.asarray(image), one(0), one(0), one(64),
                                                     one(64)), image, atol=1e-3)


@pytest.mark.parametrize('op,tf_op,values', [
    (color_ops.adjust_brightness, 'adjust_brightness', (-0.3, 0.05, 0.2)),
    (color_ops.adjust_contrast, 'adjust_contrast', (0.4, 1.0, 1.8)),
    (color_ops.adjust_saturation, 'adjust_saturation', (0.0, 0.6, 2.5)),
    (color_ops.adjust_hue, 'adjust_hue', (-0.45, 0.1, 0.3))])
def test_colour_jitter_ops_at_fixed_factors_equal_tf_image(op, tf_op, values):
  """Each op of `color_jitter` on [0, 255] images equals `tf.image`'s on [0, 1] (x 255), one
  factor per image."""
  import tensorflow as tf
  images = RNG.uniform(0, 255, (3, 21, 34, 3)).astype(np.float32)
  ours = np.asarray(op(jnp.asarray(images), jnp.asarray(values, jnp.float32)))
  theirs = np.stack([getattr(tf.image, tf_op)(image / 255, value).numpy() * 255
                     for image, value in zip(images, values)])
  np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)


def test_colour_jitter_draws_within_its_bounds():
  """brightness(0.1) alone shifts each image by one amount within +-25.5 levels (before
  clipping); all zeros changes nothing; hue above 0.5 is refused."""
  images = jnp.full((64, 4, 4, 3), 100.0)
  shifted = np.asarray(augment.color_jitter(images, jax.random.key(0), 0.1))
  shifts = shifted[:, 0, 0, 0] - 100
  assert np.abs(shifts).max() <= 25.5 + 1e-4 and np.ptp(shifts) > 25
  np.testing.assert_array_equal(shifted, shifted[:, :1, :1, :1] * np.ones((1, 4, 4, 3)))
  np.testing.assert_allclose(augment.color_jitter(images, jax.random.key(0)), images)
  with pytest.raises(ValueError, match='hue must be in'):
    augment.color_jitter(images, jax.random.key(0), hue=0.6)


def test_randaugments_pil_ops_equal_pils():
  """Equalize, solarize and posterize equal PIL's `ImageOps` exactly; autocontrast and the
  enhancements (which PIL computes in integers) within 1.3 levels."""
  from PIL import Image, ImageEnhance, ImageOps
  images = RNG.integers(30, 220, (2, 24, 31, 3)).astype(np.uint8)
  images[1, ..., 0] //= 3  # a channel that does not span the range

  def pil(transform):
    return np.stack([np.asarray(transform(Image.fromarray(i))) for i in images]).astype(float)
  floats = jnp.asarray(images, jnp.float32)
  exact = [(color_ops.equalize(floats), pil(ImageOps.equalize)),
           (color_ops.solarize(floats, 128.0), pil(lambda i: ImageOps.solarize(i, 128))),
           (color_ops.posterize(floats, 3), pil(lambda i: ImageOps.posterize(i, 3)))]
  for ours, theirs in exact:
    np.testing.assert_array_equal(ours, theirs)
  np.testing.assert_allclose(color_ops.autocontrast(floats), pil(ImageOps.autocontrast), atol=1.3)
  for ours, enhancement in ((color_ops.enhance_color, ImageEnhance.Color),
                            (color_ops.enhance_contrast, ImageEnhance.Contrast),
                            (color_ops.enhance_brightness, ImageEnhance.Brightness),
                            (color_ops.enhance_sharpness, ImageEnhance.Sharpness)):
    for factor in (0.2, 1.8):
      np.testing.assert_allclose(ours(floats, factor),
                                 pil(lambda i: enhancement(i).enhance(factor)), atol=1.3,
                                 err_msg=f'{enhancement.__name__} {factor}')


@pytest.mark.parametrize('n', [1, 2, 3])
def test_randaugment_applies_exactly_n_ops_each_drawn_uniformly(monkeypatch, n):
  """With 14 stand-in ops where op k adds 1 to channel k (so that the channels count the ops),
  every image gets exactly n ops, and over 2800 images each op is drawn about as often as the
  others."""
  def adds(k):
    return lambda images, strength, sign: images.at[..., k].add(1.0)
  monkeypatch.setattr(randaugment, 'OPS', tuple((adds(k), False) for k in range(14)))
  images = jnp.zeros((2800, 2, 2, 14))
  counts = np.asarray(randaugment.randaugment(images, jax.random.key(n), n, 9))[:, 0, 0]
  np.testing.assert_array_equal(counts.sum(axis=1), n)
  per_op = counts.sum(axis=0)
  expected = 2800 * n / 14
  assert scipy.stats.chisquare(per_op, np.full(14, expected)).pvalue > 1e-3, per_op


def test_randaugment_counts_its_shared_warps_as_ops(monkeypatch):
  """With a stand-in pixel op (adds 1 to channel 0) and a stand-in geometric op (reads one
  column to the right, so channel 1, which holds the column index, grows by 1 inside the
  image), each image's two counts add up to n: a layer's warp is one op."""
  def shift(strength, sign, height, width):
    return jnp.broadcast_to(jnp.asarray([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), (len(sign), 2, 3))
  monkeypatch.setattr(randaugment, 'OPS', (
      (lambda images, strength, sign: images.at[..., 0].add(1.0), False), (shift, True)))
  columns = jnp.broadcast_to(jnp.arange(40.0)[None, None, :], (500, 4, 40))
  images = jnp.stack([jnp.zeros_like(columns), columns], axis=-1)
  out = np.asarray(randaugment.randaugment(images, jax.random.key(0), 3, 5))
  pixel_ops, warps = out[:, 0, 0, 0], out[:, 0, 5, 1] - 5
  np.testing.assert_array_equal(pixel_ops + warps, 3)
  assert set(np.unique(warps).tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_randaugment_keeps_images_in_range_and_checks_its_arguments():
  images = jnp.asarray(RNG.uniform(0, 255, (16, 20, 20, 3)), jnp.float32)
  out = np.asarray(randaugment.randaugment(images, jax.random.key(0), 2, 10))
  assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
  assert np.abs(out - np.asarray(images)).max() > 10
  for n, m, message in ((0, 5, 'n .ops per image'), (2, 10.5, 'magnitude m must be in'),
                        (2.0, 5, 'n .ops per image'), (1, -1, 'magnitude')):
    with pytest.raises(ValueError, match=message):
      randaugment.check(n, m)


def test_random_erasing_fills_one_box_of_the_asked_area():
  """p=1 and a fixed area fraction of 0.1 at ratio 1: each image has one square of about a tenth
  of it replaced; p=0 changes nothing."""
  images = jnp.full((32, 50, 50, 3), 77.0)
  erased = np.asarray(augment.random_erasing(images, jax.random.key(0), 1.0, (0.1, 0.1),
                                             (1.0, 1.0)))
  changed = (erased != 77.0).any(axis=-1)
  assert all(abs(c.sum() - 250) <= 16 for c in changed), changed.sum(axis=(1, 2))
  np.testing.assert_array_equal(
      augment.random_erasing(images, jax.random.key(0), 0.0, (0.1, 0.1), (1.0, 1.0)), images)


@pytest.mark.parametrize('spec,message', [
    ('randaugment(2, 11)', 'magnitude m must be in'),
    ('random_resized_crop((1.0, 1.0), (2.0, 3.0))', 'no box of area fraction'),
    ('random_resized_crop((0.5, 0.2))', 'scale'),
    ('random_erasing(1.5)', 'p must be in'),
    ('color_jitter(contrast=-0.1)', 'contrast must be in'),
    ('color_jitter(nonsense=1)', 'bad arguments')])
def test_bad_op_arguments_are_config_errors(tiny_run, spec, message):
  config = tiny_run.copy_and_resolve_references()
  config.data.augment_ops = spec
  with pytest.raises(ConfigError, match=f'data.augment_ops: .*{message}'):
    check_config(config)


def _pairs_of_labels(count):
  """Labels whose mirrored partners (`Mixing` pairs i with count - 1 - i) are another class."""
  return jnp.asarray(np.arange(count) % 2, jnp.int32)


def test_mixup_weights_follow_beta_alpha_alpha():
  """Mixup's weights (read from the soft targets) pass a KS test against Beta(0.4, 0.4), and
  each image is that blend of itself and its partner."""
  count = 4000
  labels = _pairs_of_labels(count)
  images = jnp.asarray(labels, jnp.float32)[:, None, None, None] * jnp.ones((1, 2, 2, 3))
  mixed, targets, _ = Mixing(mixup_alpha=0.4)(images, labels, 2, jax.random.key(0))
  lam = np.asarray(targets)[np.arange(count), np.asarray(labels)]
  assert scipy.stats.kstest(lam, scipy.stats.beta(0.4, 0.4).cdf).pvalue > 0.01
  expected = lam * np.asarray(labels) + (1 - lam) * np.asarray(labels)[::-1]
  np.testing.assert_allclose(np.asarray(mixed)[:, 0, 0, 0], expected, atol=1e-6)
  np.testing.assert_allclose(np.asarray(targets).sum(axis=1), 1, atol=1e-6)


def test_cutmix_label_weights_equal_the_pasted_area():
  count = 256
  labels = _pairs_of_labels(count)
  images = jnp.asarray(labels, jnp.float32)[:, None, None, None] * jnp.ones((1, 30, 40, 3))
  mixed, targets, _ = Mixing(cutmix_alpha=1.0)(images, labels, 2, jax.random.key(1))
  pasted = np.mean(np.asarray(mixed)[..., 0] != np.asarray(images)[..., 0], axis=(1, 2))
  own_share = np.asarray(targets)[np.arange(count), np.asarray(labels)]
  np.testing.assert_allclose(own_share, 1 - pasted, atol=1e-6)
  assert pasted.max() > 0.5 and pasted.min() < 0.1


def test_with_mixup_and_cutmix_each_example_is_mixed_one_way():
  """Cutmixed images hold only the two images' values; blended ones values between them."""
  count = 400
  labels = _pairs_of_labels(count)
  images = jnp.asarray(labels, jnp.float32)[:, None, None, None] * jnp.ones((1, 8, 8, 1))
  mixed, _, _ = Mixing(mixup_alpha=1.0, cutmix_alpha=1.0)(images, labels, 2, jax.random.key(2))
  values = np.asarray(mixed).reshape(count, -1)
  cut = np.all((values == 0) | (values == 1), axis=1)
  blended = np.all(values == values[:, :1], axis=1) & ~cut
  assert (cut | blended).all() and 0.4 < cut.mean() < 0.6


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_soft_target_losses_equal_keras(smoothing):
  """Against soft targets, the softmax head's loss equals Keras `CategoricalCrossentropy` and
  the sigmoid head's `BinaryCrossentropy` on the second class's share (from logits, with
  `label_smoothing`)."""
  import keras
  targets = RNG.dirichlet(np.ones(5), 6).astype(np.float32)
  logits = RNG.normal(0, 2, (6, 5)).astype(np.float32)
  labels = jnp.argmax(targets, axis=-1)
  ours = Objective(5, sigmoid=False, label_smoothing=smoothing).losses(logits, labels, targets)
  theirs = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing,
                                                reduction=None)(targets, logits)
  np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-5)
  binary = RNG.dirichlet(np.ones(2), 6).astype(np.float32)
  ours = Objective(2, sigmoid=True, label_smoothing=smoothing).losses(
      logits[:, :1], jnp.argmax(binary, axis=-1), binary)
  theirs = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=smoothing,
                                           reduction=None)(binary[:, 1:], logits[:, :1])
  np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-5)


@pytest.fixture(scope='module')
def small_model():
  """An alpha-0.35 MobileNetV2 at 32x32 without dropout, its variables, and its layers from 100
  trainable."""
  model = Classifier(backbone_args={'alpha': 0.35}, outputs=1, dropout=0.0)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  groups = param_groups.param_groups(variables['params'], backbone_layers(model), 100)
  return model, variables, groups


def _train(small_model, batches, accumulate_steps=1, ema_decay=0.0, optimizer='adam'):
  model, variables, groups = small_model
  rate = 1e-2 if optimizer == 'adam' else 1.0
  tx = optim.make_optimizer(phase(1, optimizer, rate), groups, len(batches), accumulate_steps)
  step = make_train_step(model.apply, tx, groups, Objective(2, sigmoid=True), jax.random.key(1),
                         ema_decay=ema_decay)
  state = TrainState.create(jax.tree.map(jnp.array, variables), tx, ema=ema_decay > 0)
  states = []
  for batch in batches:
    state, _ = step(state, batch)
    states.append(jax.tree.map(np.asarray, state))
  return states


def _batch(images, labels):
  return {'image': jnp.asarray(images), 'label': jnp.asarray(labels, jnp.int32),
          'mask': jnp.ones(len(labels), bool)}


IMAGES = RNG.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
LABELS = np.array([0, 1, 1, 0, 1, 0, 0, 1])


@pytest.mark.parametrize('optimizer', ['adam', 'sgd'])
def test_accumulated_micro_batches_equal_the_large_batch(small_model, optimizer):
  """Four micro-batches of 2 with accumulate_steps=4 make the update of one batch of 8 (within
  1e-5), and leave the parameters alone until the fourth. (Adam divides by the gradient's size:
  where the large batch's gradient is exactly 0, a dead unit, the micro-batches' mean of about
  1e-12 moves a parameter by up to the rate times 1e-2; those are compared at that bound.)"""
  (large,) = _train(small_model, [_batch(IMAGES, LABELS)], optimizer=optimizer)
  micro = _train(small_model, [_batch(IMAGES[i:i + 2], LABELS[i:i + 2]) for i in range(0, 8, 2)],
                 accumulate_steps=4, optimizer=optimizer)
  start = small_model[1]['params']
  for early in micro[:3]:
    jax.tree.map(np.testing.assert_array_equal, early.params, jax.tree.map(np.asarray, start))
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), large.params, start)
  assert max(jax.tree.leaves(moved)) > 1e-3
  for a, b, before in zip(jax.tree.leaves(micro[-1].params), jax.tree.leaves(large.params),
                         jax.tree.leaves(start), strict=True):
    still = b == np.asarray(before)
    np.testing.assert_allclose(a[~still], b[~still], atol=1e-5, rtol=0)
    np.testing.assert_allclose(a[still], b[still], atol=1e-5 if optimizer == 'sgd' else 1e-4,
                               rtol=0)


def test_the_average_of_the_weights_is_optax_ema_arithmetic(small_model):
  """After each step the average equals `optax.ema` (no debiasing, started at the parameters) of
  the parameters so far; frozen leaves stay exactly as they are."""
  decay = 0.8
  states = _train(small_model, [_batch(IMAGES[i:i + 4], LABELS[i:i + 4]) for i in (0, 4, 0)],
                  ema_decay=decay)
  start = jax.tree.map(np.asarray, small_model[1]['params'])
  ema = optax.ema(decay, debias=False)
  ema_state = optax.EmaState(count=jnp.zeros([], jnp.int32), ema=start)
  for state in states:
    expected, ema_state = ema.update(state.params, ema_state)
    for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(expected), strict=True):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
  frozen = states[-1].ema_params['backbone']['Conv1']['kernel']
  np.testing.assert_array_equal(frozen, start['backbone']['Conv1']['kernel'])
  head = states[-1]
  assert np.abs(head.ema_params['head']['kernel'] - head.params['head']['kernel']).max() > 0


def test_with_accumulation_the_average_moves_once_per_update(small_model):
  states = _train(small_model, [_batch(IMAGES[i:i + 2], LABELS[i:i + 2]) for i in range(0, 8, 2)],
                  accumulate_steps=2, ema_decay=0.5)
  head = [s.ema_params['head']['kernel'] for s in states]
  np.testing.assert_array_equal(head[0], small_model[1]['params']['head']['kernel'])
  assert np.abs(head[1] - head[0]).max() > 0
  np.testing.assert_array_equal(head[2], head[1])
  assert np.abs(head[3] - head[2]).max() > 0


@pytest.mark.parametrize('settings,message', [
    ({'data.mixup_alpha': 0.2, 'compute.cache_frozen': True, 'data.flip': False,
      'data.rotation_factor': 0.0}, 'compute.cache_frozen cannot go with data.mixup_alpha'),
    ({'data.cutmix_alpha': -1.0}, 'data.mixup_alpha and data.cutmix_alpha must be >= 0'),
    ({'train.accumulate_steps': 0}, 'train.accumulate_steps must be >= 1'),
    ({'train.ema_decay': 1.0}, r'train.ema_decay must be in \[0, 1\)'),
    ({'best_metric': 'ema_val_accuracy'}, 'set train.ema_decay')])
def test_bad_training_settings_are_config_errors(tiny_run, settings, message):
  config = tiny_run.copy_and_resolve_references()
  config.update_from_flattened_dict(settings)
  with pytest.raises(ConfigError, match=message):
    check_config(config)


def test_a_run_with_mixing_accumulation_and_an_average_trains_ranks_and_evaluates_it(tiny_run,
                                                                                     tmp_path):
  """Through main.py: the history holds the average's validation metrics each epoch;
  --checkpoint=ema evaluates the average, which differs from the last weights, and
  --checkpoint=best the average of the epoch with the best ema_val_accuracy; test-time
  augmentation is reported beside the plain numbers, and predict's verdicts are its; a run
  without an average says it has none."""
  import json
  settings = [*overrides(tiny_run), '--config.data.mixup_alpha=0.4',
              '--config.data.cutmix_alpha=1.0', '--config.train.ema_decay=0.9',
              '--config.train.accumulate_steps=2', '--config.best_metric=ema_val_accuracy',
              '--config.eval.tta=flip',
              '--config.data.augment_ops=randaugment(2, 9)|random_resized_crop|'
              'color_jitter(0.1, 0.1, 0.1, 0.02)|random_erasing(0.5)']
  code, output = run_main(tmp_path / 'w', settings)
  assert code == 0, output[-3000:]
  history = json.loads((tmp_path / 'w' / 'history.json').read_text())
  assert all('ema_val_accuracy' in e and 'ema_val_loss' in e for e in history['epochs'])
  reports = {}
  for checkpoint in ('latest', 'ema', 'best'):
    code, output = run_main(tmp_path / 'w', settings, '--mode=evaluate', '--split=validation',
                            f'--checkpoint={checkpoint}')
    assert code == 0, output[-3000:]
    reports[checkpoint] = json.loads((tmp_path / 'w' / 'evaluation' / 'validation.json')
                                     .read_text())
  last = history['epochs'][-1]
  assert reports['ema']['loss'] == pytest.approx(last['ema_val_loss'], abs=1e-4)
  assert reports['latest']['loss'] == pytest.approx(last['val_loss'], abs=1e-4)
  assert last['ema_val_loss'] != pytest.approx(last['val_loss'], abs=1e-5)
  best = max(history['epochs'], key=lambda e: (e['ema_val_accuracy'], -e['epoch']))
  assert reports['best']['checkpoint_epoch'] == best['epoch']
  assert reports['best']['weights'] == 'average'
  assert reports['best']['loss'] == pytest.approx(best['ema_val_loss'], abs=1e-4)
  test = json.loads((tmp_path / 'w' / 'test_metrics.json').read_text())
  assert test['tta_views'] == 'flip' and 0 <= test['tta_accuracy'] <= 1
  rows = run_main(tmp_path / 'w', settings, '--mode=predict', '--nocalibrated',
                  f'--inputs={tiny_run.data.folder}/test')[1].splitlines()
  verdicts = [line.split('\t') for line in rows if line.startswith(tiny_run.data.folder)]
  assert len(verdicts) == 12
  correct = sum(f'/test/{label}/' in path for path, label, _ in verdicts)
  assert correct == round(test['tta_accuracy'] * 12)
  code, output = run_main(tmp_path / 'plain', overrides(tiny_run))
  assert code == 0, output[-3000:]
  code, output = run_main(tmp_path / 'plain', overrides(tiny_run), '--mode=evaluate',
                          '--checkpoint=ema')
  assert code != 0 and 'holds no average of the weights' in output
  assert 'Traceback' not in output


def _overconfident(classes: int, count: int = 2000):
  """(logits, labels) of a model right 80% of the time whose logits are 8 times too large."""
  rng = np.random.default_rng(classes)
  labels = rng.integers(0, classes, count)
  right = rng.uniform(size=count) < 0.8
  predicted = np.where(right, labels, (labels + rng.integers(1, classes, count)) % classes)
  logits = rng.normal(0, 0.3, (count, classes))
  logits[np.arange(count), predicted] += 1.5
  return 8 * logits, labels


def test_temperature_scaling_lowers_an_overconfident_models_nll_and_keeps_its_classes():
  """Logits 8 times too large (right 80% of the time, saying more than 99%): the fitted
  temperature is above 1.5, NLL and ECE fall by far, and no predicted class changes (softmax
  head; the sigmoid head on the two-class model's logit difference)."""
  from tlflax import calibration
  five, five_labels = _overconfident(5)
  two, two_labels = _overconfident(2)
  for objective, logits, labels in ((Objective(5, sigmoid=False), five, five_labels),
                                    (Objective(2, sigmoid=True), two[:, 1:] - two[:, :1],
                                     two_labels)):
    temperature = calibration.fit_temperature(objective, logits, labels)
    assert temperature > 1.5
    report = calibration.calibration_report(objective, logits, labels, temperature)
    assert report['nll_after'] < 0.8 * report['nll_before']
    assert report['ece_after'] < 0.6 * report['ece_before']
    np.testing.assert_array_equal(objective.predictions(logits / temperature),
                                  objective.predictions(logits))


def test_a_temperature_needs_examples_of_two_classes():
  from tlflax import calibration
  from tlflax.errors import DataError
  objective = Objective(3, sigmoid=False)
  with pytest.raises(DataError, match='empty'):
    calibration.fit_temperature(objective, np.zeros((0, 3)), np.zeros(0, int))
  with pytest.raises(DataError, match='one class only'):
    calibration.fit_temperature(objective, RNG.normal(size=(5, 3)), np.ones(5, int))


def test_the_scaled_head_gives_the_calibrated_logits(small_model):
  from tlflax import calibration
  model, variables, _ = small_model
  images = jnp.asarray(IMAGES[:4])
  scaled = calibration.scaled_head(variables, 2.5)
  np.testing.assert_allclose(model.apply(scaled, images, train=False),
                             model.apply(variables, images, train=False) / 2.5, atol=1e-5)


def test_tta_averages_the_probabilities_of_its_views(small_model):
  """'flip' is the mean of the image's and its mirror's probabilities; 'crops' has 12 views,
  the centre crop being the box resized; the logits returned give those mean probabilities."""
  from tlflax import tta
  model, variables, _ = small_model
  objective = Objective(2, sigmoid=True)
  images = jnp.asarray(IMAGES[:4])
  step = tta.make_tta_logits_step(model.apply, objective, 'flip')
  logits = step(variables['params'], variables['batch_stats'], {'image': images})
  expected = (objective.probabilities(model.apply(variables, images, train=False))
              + objective.probabilities(model.apply(variables, images[:, :, ::-1],
                                                    train=False))) / 2
  np.testing.assert_allclose(objective.probabilities(logits), expected, atol=1e-6)
  views = tta.views(images, 'crops')
  assert len(views) == 12
  side = round(32 * tta.CROP)
  start = jnp.full((4,), (32 - side) // 2, jnp.int32)
  np.testing.assert_allclose(views[5], image_ops.resized_crops(
      images, start, start, jnp.full((4,), side), jnp.full((4,), side)), atol=1e-6)
  np.testing.assert_array_equal(views[6], images[:, :, ::-1])
  with pytest.raises(ValueError, match='eval.tta must be one of'):
    tta.views(images, 'rotations')


def test_lr_suggestion_is_the_steepest_fall_before_the_minimum():
  from tlflax import lr_find
  rates = np.geomspace(1e-6, 1.0, 100)
  loss = 1 - 0.5 * np.tanh(2 * (np.log10(rates) + 3)) + np.where(rates > 0.1, 5 * rates, 0)
  suggested = lr_find.suggestion(rates, loss)
  assert 5e-4 < suggested < 2e-3
  np.testing.assert_allclose(lr_find.smoothed([2.0, 2.0, 2.0]), 2.0)


def test_lr_find_suggests_a_rate_in_its_range_and_leaves_the_run_alone(tiny_run, tmp_path):
  """On a trained tiny run: phase 2's test (its rate growing to 100 until the loss diverges)
  suggests a rate within the range, writes lr_find/, and changes no other file of the workdir;
  the log says that a phase's schedule is set aside. A later phase whose start is missing, and a
  bad range, are one-line errors."""
  import hashlib
  import json
  workdir = tmp_path / 'w'
  settings = [*overrides(tiny_run), '--config.phases.fine_tune.schedule.name=cosine']
  code, output = run_main(workdir, settings)
  assert code == 0, output[-3000:]

  def contents():
    return {path.relative_to(workdir): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(workdir.rglob('*')) if path.is_file()}
  before = contents()
  code, output = run_main(workdir, settings, '--mode=lr_find', '--phase=fine_tune',
                          '--lr_range=1e-5,100', '--lr_steps=60')
  assert code == 0, output[-3000:]
  assert 'cosine schedule is set aside' in output
  result = json.loads((workdir / 'lr_find' / 'fine_tune.json').read_text())
  assert 1e-5 <= result['suggestion'] <= 100
  np.testing.assert_allclose(result['rates'][0], 1e-5)
  assert np.all(np.diff(result['rates']) > 0)
  assert result['stopped'].startswith('stopped at step')
  assert (workdir / 'lr_find' / 'fine_tune.png').is_file()
  after = {path: digest for path, digest in contents().items() if path.parts[0] != 'lr_find'}
  assert after == before
  (tmp_path / 'file').write_text('')
  for extra, message in (((f'--workdir={tmp_path / "fresh"}', '--phase=fine_tune'),
                          "whose final model is not in"),
                         (('--phase=fine_tune', '--config.image_size=48'),
                          'holds a run made with another model or data (image_size: 32 -> 48)'),
                         ((f'--workdir={tmp_path / "file"}',), 'is a file'),
                         (('--lr_steps=9', '--config.train.accumulate_steps=2'),
                          'makes 4 optimizer updates'),
                         (('--lr_range=1,0.1',), '0 < low < high'),
                         (('--lr_range=a,b',), 'must be two rates')):
    code, output = run_main(workdir, settings, '--mode=lr_find', *extra)
    assert code != 0 and message in output and 'Traceback' not in output, output[-2000:]
  code, output = run_main(workdir, [], '--mode=predict', '--model=model.tflite',
                          '--nocalibrated', '--inputs=x', config_file=None)
  assert code != 0 and 'keeps the calibration it was exported with' in output


def test_a_run_killed_mid_phase_goes_on_from_its_average_exactly(tiny_run, tmp_path):
  """Killed inside phase 2 and started again, a run with an average of its weights
  ends with the average of the uninterrupted run (the checkpoint's train state holds it)."""
  sys.path.insert(0, str(ROOT / 'scripts'))
  import fault_injection
  from tlflax import parallel
  from tlflax.run_parts import restore_for_inference
  settings = [*overrides(tiny_run), '--config.train.ema_decay=0.8']
  code, output = run_main(tmp_path / 'whole', settings)
  assert code == 0, output[-3000:]
  interrupted = tmp_path / 'interrupted'
  run = fault_injection.WatchedRun(interrupted, settings)
  assert run.wait_for(lambda: (interrupted / 'checkpoints' / '3').is_dir()), 'ended before epoch 3'
  assert run.kill()
  code, output = run_main(interrupted, settings)
  assert code == 0, output[-3000:]
  resumed = re.search(r'Resuming from .* after epoch (\d+)', output)
  assert resumed and int(resumed.group(1)) in (2, 3), output[-3000:]  # inside phase 2
  config = tiny_run.copy_and_resolve_references()
  config.phases.fine_tune.epochs, config.train.ema_decay = 3, 0.8
  averages = [restore_for_inference(config, workdir, parallel.data_mesh(), 'ema').variables
              for workdir in (tmp_path / 'whole', interrupted)]
  for a, b in zip(jax.tree.leaves(averages[0]), jax.tree.leaves(averages[1]), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
  raw = restore_for_inference(config, interrupted, parallel.data_mesh()).variables
  assert any(np.abs(a - b).max() > 1e-6 for a, b in zip(jax.tree.leaves(raw),
                                                         jax.tree.leaves(averages[1])))


def test_the_small_data_config_is_the_sweeps_choice_and_checks(shared_dir):
  """configs/small_data.py holds the settings its sweep chose (the sweep file's own dicts) on the
  tutorial's phases, passes the config check with each variant, and refuses an unknown one."""
  from configs import small_data
  from configs.sweeps import small_data as sweep
  for variant, folder in (('flowers', 'flowers_mini'), ('cats_dogs', 'cats_vs_dogs_mini')):
    config = small_data.get_config(variant)
    check_config(config)
    assert config.data.folder.endswith(folder)
    flat = {key: config[key.split('.')[0]] for key in small_data.CHOSEN}
    for key, value in small_data.CHOSEN.items():
      node = flat[key]
      for part in key.split('.')[1:]:
        node = node[part]
      assert node == value, key
  assert small_data.CHOSEN == {**sweep.MODERN_RATES, 'train.ema_decay': 0.99}  # the sweep's best
  with pytest.raises(ValueError, match='unknown config variant'):
    small_data.get_config('mine')


def test_a_state_saved_without_an_average_restores_without_one(small_model, tmp_path):
  """Train states saved before `TrainState` had `ema_params` (four fields, as older tlflax wrote
  them) and those of runs without an average restore into a state without one; a run with one
  restores its average exactly."""
  import orbax.checkpoint as ocp
  from tlflax.checkpoints import Checkpoints
  model, variables, groups = small_model
  tx = optim.make_optimizer(phase(1, 'adam', 1e-3), groups, 1)
  plain = TrainState.create(jax.tree.map(jnp.array, variables), tx)
  average = TrainState.create(jax.tree.map(jnp.array, variables), tx, ema=True)
  average = average.replace(ema_params=jax.tree.map(lambda x: x + 1, average.ema_params))
  checkpoints = Checkpoints(tmp_path)
  old = {name: getattr(plain, name) for name in ('step', 'params', 'batch_stats', 'opt_state')}
  checkpoints.manager.save(1, args=ocp.args.Composite(
      model=ocp.args.StandardSave(plain.variables), train=ocp.args.StandardSave(old),
      meta=ocp.args.JsonSave({})), metrics={'val_loss': 1.0, 'val_accuracy': 0.5, 'epoch': 1})
  checkpoints.save(2, plain, {}, {'val_loss': 1.0, 'val_accuracy': 0.5})
  checkpoints.save(3, average, {}, {'val_loss': 1.0, 'val_accuracy': 0.5})
  checkpoints.manager.wait_until_finished()
  like = jax.eval_shape(lambda v: TrainState.create(v, tx), variables)
  for epoch in (1, 2):
    restored = checkpoints.restore_state(epoch, like)
    assert restored.ema_params is None
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(plain.params)):
      np.testing.assert_array_equal(a, b)
  restored = checkpoints.restore_state(3, jax.eval_shape(
      lambda v: TrainState.create(v, tx, ema=True), variables))
  for a, b in zip(jax.tree.leaves(restored.ema_params), jax.tree.leaves(average.ema_params)):
    np.testing.assert_array_equal(a, b)
  checkpoints.close()


def test_the_data_a_temperature_is_fitted_on_is_the_training_runs(tiny_run):
  """An image folder's splits depend on its path and the seed only (TFDS settings are not read
  for it); a TFDS run's on every split setting."""
  from tlflax import resume
  from tlflax.run_parts import data_differences
  trained = resume.config_as_json(tiny_run)
  config = tiny_run.copy_and_resolve_references()
  config.data.tfds_name, config.data.split_scheme = 'tf_flowers', 'auto'
  assert data_differences(trained, config) == {}
  config.seed = 3
  assert data_differences(trained, config) == {'seed': (0, 3)}
  tfds = {**trained, 'data': {**trained['data'], 'folder': ''}}
  config.data.folder = ''
  assert set(data_differences(tfds, config)) == {'seed', 'data.tfds_name', 'data.split_scheme'}
