"""The frozen layers run a few images at a time (`tlflax.chunking`, `compute.frozen_chunk`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlflax import chunking, feeds, optim, param_groups, parallel
from tlflax.classifier import Classifier, backbone_layers, init_variables
from tlflax.config import defaults, phase
from tlflax.data.batching import PipelineConfig
from tlflax.errors import ConfigError
from tlflax.objectives import Objective
from tlflax.steps import TrainState, make_train_step
from tlflax.train import check_config

BINARY = Objective(2, sigmoid=True)


def test_over_chunks_equals_the_whole_batch_in_chunks_of_the_size_asked():
  """Each example's result comes back in its place, for a batch that is not whole chunks (10 in
  chunks of 4: padded to 12; on 4 devices, blocks of 10 in chunks of 4 per device) and a tree of
  results; 0, or a chunk of at least a device's block, runs the whole batch at once."""
  seen = []

  def per_example(x):
    seen.append(x.shape)
    return {'sum': x.sum(axis=1), 'reversed': x[:, ::-1] * 2}

  for batch, devices, chunk, shape in ((10, 1, 4, (4, 3)), (10, 1, 3, (3, 3)), (10, 1, 0, (10, 3)),
                                       (10, 1, 10, (10, 3)), (10, 1, 16, (10, 3)),
                                       (40, 4, 4, (16, 3)), (40, 4, 10, (40, 3))):
    inputs = jnp.arange(batch * 3, dtype=jnp.float32).reshape(batch, 3) ** 1.5
    seen.clear()
    out = jax.jit(lambda x, chunk=chunk, devices=devices: chunking.over_chunks(
        per_example, x, chunk, devices))(inputs)
    assert seen == [shape], (batch, devices, chunk)
    seen.clear()
    jax.tree.map(np.testing.assert_array_equal, out, per_example(inputs))


def test_each_devices_share_of_a_chunk_comes_from_its_own_block():
  """On 4 devices holding contiguous blocks of 10 examples, in chunks of 4 per device, every
  example lands in its own device's share of its chunk, so a batch split over devices needs no
  exchange between them to be chunked."""
  ids = jnp.arange(40, dtype=jnp.float32)

  def share_index(chunk):  # for each position of a chunk, the device whose share it is
    return jnp.repeat(jnp.arange(4.0), 4)

  np.testing.assert_array_equal(chunking.over_chunks(share_index, ids, 4, devices=4), ids // 10)


@pytest.fixture(scope='module')
def model_and_variables(tflite_path):
  """The classifier on ImageNet weights at 32x32 (random weights give every image nearly the
  same features, which would hide examples coming back in the wrong places)."""
  model = Classifier(dropout=0.5)
  return model, init_variables(model, 32, jax.random.key(0), str(tflite_path))


IMAGES = jax.random.uniform(jax.random.key(1), (6, 32, 32, 3), minval=-1, maxval=1)


def test_frozen_in_chunks_gives_the_models_logits(model_and_variables):
  """At the pooled features (evaluation) and at layer 101 (the tutorial's phase 2), in chunks of
  4 of a batch of 6, the logits equal the whole batch's, with dropout too (it acts on the whole
  batch, so the masks are the same). In bfloat16, whose own error moves these logits by about
  0.015 from float32's, chunks stay within 3 times that error of float32."""
  model, variables = model_and_variables
  images, rngs = IMAGES, {'dropout': jax.random.key(2)}
  for train in (False, True):
    whole = model.apply(variables, images, train, rngs=rngs)
    assert np.ptp(whole) > 0.1  # the images' logits differ
    bfloat16 = model.clone(dtype=jnp.bfloat16)
    bfloat16_error = np.abs(bfloat16.apply(variables, images, train, rngs=rngs) - whole).max()
    for chunked_model, atol in ((model, 1e-5), (bfloat16, 3 * bfloat16_error)):
      for boundary in (len(backbone_layers(model)), 101):
        apply = jax.jit(chunking.frozen_in_chunks(chunked_model, boundary, 4), static_argnums=2)
        np.testing.assert_allclose(
            apply(variables, images, train, rngs=rngs), whole, atol=atol, rtol=0,
            err_msg=f'{chunked_model.dtype}, boundary {boundary}, train {train}')
  assert chunking.frozen_in_chunks(model, 0, 4) == model.apply
  assert chunking.frozen_in_chunks(model, 101, 0) == model.apply


def test_a_training_step_with_frozen_chunks_equals_the_whole_batchs(model_and_variables):
  """Phase 2's step (layers from 100 train) on chunks below the first trained layer moves every
  parameter as the step on the whole batch does."""
  model, variables = model_and_variables
  layers = backbone_layers(model)
  groups = param_groups.param_groups(variables['params'], layers, 100)
  tx = optim.make_optimizer(phase(1, 'sgd', 0.5), groups, steps_per_epoch=1)
  batch = {'image': IMAGES, 'label': jnp.array([0, 1, 1, 0, 1, 0]), 'mask': jnp.ones(6, bool)}
  first_trained = param_groups.first_trained_layer(groups, layers)
  states = {}
  for name, apply_fn in (('whole', model.apply),
                         ('chunks', chunking.frozen_in_chunks(model, first_trained, 4))):
    step = make_train_step(apply_fn, tx, groups, BINARY, jax.random.key(3))
    states[name], _ = step(TrainState.create(jax.tree.map(jnp.array, variables), tx), batch)
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), states['whole'].params,
                       variables['params'])
  assert moved['head']['kernel'] > 1e-3 and moved['backbone']['Conv_1']['kernel'] > 1e-4
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(states['chunks'].params)[0],
                          jax.tree.leaves(states['whole'].params)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=jax.tree_util.keystr(path))


def feed_step_programs(model, variables, frozen_chunk: int) -> tuple[str, str]:
  """The lowered evaluation step of an `ImageFeed` and the training step of its phase view
  (layers from 101 train)."""
  one_device = jax.make_mesh((1,), (parallel.DATA_AXIS,), devices=jax.devices()[:1],
                             axis_types=(jax.sharding.AxisType.Auto,))
  feed = feeds.ImageFeed(model, BINARY, {}, PipelineConfig(image_size=32, batch_size=8),
                         one_device, frozen_chunk=frozen_chunk)
  batch = {'image': jnp.zeros((8, 32, 32, 3)), 'label': jnp.zeros(8, jnp.int32),
           'mask': jnp.ones(8, bool)}
  groups = param_groups.param_groups(variables['params'], backbone_layers(model), 100)
  tx = optim.make_optimizer(phase(1, 'sgd', 0.1), groups, steps_per_epoch=1)
  training = make_train_step(feed.training_view(101).apply_fn, tx, groups, BINARY,
                             jax.random.key(0), feed.mesh)
  return (feed.eval_step.lower(variables['params'], variables['batch_stats'], batch).as_text(),
          training.lower(TrainState.create(variables, tx), batch).as_text())


def test_the_feeds_steps_chunk_as_the_setting_says(model_and_variables):
  """With `frozen_chunk` 4, an `ImageFeed`'s evaluation step and its phase view's training step
  each have one loop more (over the chunks) than with 0."""
  loops = {chunk: [text.count('stablehlo.while')
                   for text in feed_step_programs(*model_and_variables, chunk)]
           for chunk in (0, 4)}
  assert [chunked - whole for chunked, whole in zip(loops[4], loops[0])] == [1, 1]


def test_the_setting_resolves_and_is_checked():
  assert chunking.resolve(0) == 0 and chunking.resolve(8) == 8
  assert chunking.resolve(None) == (chunking.CPU_CHUNK if jax.default_backend() == 'cpu' else 0)
  for wrong in ('4', True, 2.0, -1):
    with pytest.raises(ValueError, match='must be None'):
      chunking.check_setting(wrong)
  config = defaults()
  config.compute.frozen_chunk = -1
  with pytest.raises(ConfigError, match=r'compute.frozen_chunk: must be None .* or a whole number'):
    check_config(config)
