"""Speed and scale: frozen-part caches, no gradient below the freeze boundary, bfloat16, and data
parallelism over 4 local devices and over 2 processes."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from runs import ROOT, TINY, free_port, run_main
from tlflax import chunking, optim, param_groups
from tlflax.backbones.preprocessing import UNIT_RANGE
from tlflax.config import phase
from tlflax.classifier import Classifier, backbone_layers, init_variables
from tlflax.data import transforms
from tlflax.objectives import Objective
from tlflax.steps import TrainState, make_train_step, train_step
from tlflax.train import train_and_evaluate

BINARY = Objective(2, sigmoid=True)  # the tutorial's head


def no_augmentation(config, cache):
  config = config.copy_and_resolve_references()
  config.data.flip = False
  config.data.rotation_factor = 0.0
  config.compute.cache_frozen = cache
  return config


def assert_trees_close(a, b, atol):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


def head_moved(config, params) -> float:
  """The largest change of the head's kernel in `params` from the one `config`'s run started
  with (the initialization key of `train.Run.rngs`)."""
  init_key, _ = jax.random.split(jax.random.key(config.seed))
  initial = init_variables(Classifier(backbone_args=config.model.backbone_args),
                           config.image_size, init_key, config.model.weights)
  return float(np.abs(params['head']['kernel'] - initial['params']['head']['kernel']).max())


@pytest.fixture(scope='module')
def run_on_images(tiny_run, tmp_path_factory):
  """The tiny run without augmentation, on images (no caches), on one device."""
  return train_and_evaluate(no_augmentation(tiny_run, False), tmp_path_factory.mktemp('images'))


@pytest.fixture(scope='module')
def run_on_streamed_images(tiny_run, tmp_path_factory):
  """`run_on_images` with streamed data (not rounded to uint8 as data kept in memory is)."""
  config = no_augmentation(tiny_run, False)
  config.data.residency = 'stream'
  return train_and_evaluate(config, tmp_path_factory.mktemp('streamed'))


def test_cached_phases_equal_training_on_images(tiny_run, run_on_images, tmp_path):
  """Phase 1 on cached pooled features and phase 2 on cached layer-100 activations end with the
  parameters and metrics of the same run on images."""
  cached = train_and_evaluate(no_augmentation(tiny_run, True), tmp_path / 'cached')
  assert [cached.history['phases'][p]['cached_from_layer'] for p in tiny_run.phase_order] == [
      155, 101]  # 100 is a ReLU; 101 is the first trained layer
  assert all(run_on_images.history['phases'][p]['cached_from_layer'] is None
             for p in tiny_run.phase_order)
  assert_trees_close(run_on_images.variables, cached.variables, atol=1e-5)
  for a, b in zip(run_on_images.history['epochs'], cached.history['epochs'], strict=True):
    for key in ('loss', 'accuracy', 'val_loss', 'val_accuracy'):
      assert a[key] == pytest.approx(b[key], abs=1e-5), key
  assert head_moved(tiny_run, run_on_images.variables['params']) > 1e-3  # not untrained models


def count_products(model, variables, fine_tune_at, frozen_chunk=0):
  """Convolutions and matrix products (1x1 convolutions, the head) in the jaxpr of a train step
  that trains backbone layers from `fine_tune_at`, its frozen layers in chunks of `frozen_chunk`
  (a loop's body counts once)."""
  layers = backbone_layers(model)
  groups = param_groups.param_groups(variables['params'], layers, fine_tune_at)
  tx = optim.make_optimizer(phase(1, 'sgd', 0.1), groups, steps_per_epoch=1)
  batch = {'image': jnp.zeros((2, 32, 32, 3)), 'label': jnp.zeros(2, jnp.int32),
           'mask': jnp.ones(2, bool)}
  apply_fn = chunking.frozen_in_chunks(
      model, param_groups.first_trained_layer(groups, layers), frozen_chunk)
  def step(state, batch):
    return train_step(state, batch, apply_fn=apply_fn, tx=tx, param_groups=groups,
                      objective=BINARY, dropout_rng=jax.random.key(0))
  jaxpr = str(jax.make_jaxpr(step)(TrainState.create(variables, tx), batch))
  return jaxpr.count('conv_general_dilated[') + jaxpr.count('dot_general[')


@pytest.mark.parametrize('frozen_chunk', [0, 1])
def test_no_gradient_is_computed_below_fine_tune_at(frozen_chunk):
  """The backward pass stops at the boundary: a trainable convolution or dense layer costs two
  more products (input and kernel gradients); a frozen one below the boundary costs none. Also
  with the frozen layers in chunks (`compute.frozen_chunk`)."""
  # no depthwise convolutions
  model = Classifier(backbone_args={'alpha': 0.35}, depthwise_implementation='shifted')
  variables = jax.eval_shape(lambda: init_variables(model, 32, jax.random.key(0), 'none'))
  layers = backbone_layers(model)
  products = [layer.index for layer in layers if layer.kind == 'conv'] + [len(layers)]  # + head
  for fine_tune_at in (None, 100, 140):
    trainable = sum(index >= (fine_tune_at or len(layers)) for index in products)
    # the lowest trainable layer needs no input gradient unless a depthwise kernel or BatchNorm
    # below it (and above the boundary) trains
    assert count_products(model, variables, fine_tune_at, frozen_chunk) in (
        len(products) + 2 * trainable - 1, len(products) + 2 * trainable), fine_tune_at
  assert count_products(model, variables, 0) == 3 * len(products) - 1  # all of it, for contrast


def test_bfloat16_matches_float32_within_tolerance(shared_dir, tflite_path):
  """Mixed precision: bfloat16 compute, float32 parameters, loss and logits (real weights and
  images: a random network amplifies rounding chaotically)."""
  files = sorted((shared_dir / 'data' / 'cats_vs_dogs_mini' / 'validation').glob('*/*.jpg'))
  images = np.stack([transforms.preprocess(f.read_bytes(), 96, UNIT_RANGE).numpy()
                     for f in files[::40][:8]])
  batch = {'image': images, 'label': np.arange(8, dtype=np.int32) % 2, 'mask': np.ones(8, bool)}
  results = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = Classifier(dtype=dtype)
    variables = init_variables(model, 96, jax.random.key(0), str(tflite_path))
    features = jax.jit(lambda v, x: model.apply(v, x, 155, method=Classifier.frozen_activations))(
        variables, images)
    logits = jax.jit(model.apply)(variables, images)
    start = jax.tree.map(np.array, variables['params'])
    groups = param_groups.param_groups(variables['params'], backbone_layers(model), 100)
    tx = optim.make_optimizer(phase(1, 'sgd', 0.1), groups, steps_per_epoch=1)
    state, metrics = make_train_step(model.apply, tx, groups, BINARY, jax.random.key(1))(
        TrainState.create(variables, tx), batch)
    results[dtype] = (logits, features, metrics, state.params)
  (_, features32, metrics32, params32), (logits16, features16, metrics16, params16) = (
      results[jnp.float32], results[jnp.bfloat16])
  assert features16['global_average_pooling2d'].dtype == jnp.bfloat16
  assert logits16.dtype == jnp.float32 and metrics16['loss'].dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params16))
  # bfloat16 keeps 8 bits of mantissa: through ~50 layers, features move a few percent (0.996
  # cosine on the real ImageNet weights); they must still point the same way
  a, b = (np.asarray(f['global_average_pooling2d'], np.float32) for f in (features32, features16))
  cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  assert cosine.min() > 0.99
  assert float(metrics16['loss']) == pytest.approx(float(metrics32['loss']), rel=0.1)
  step32, step16 = (np.ravel(p['head']['kernel']) - np.ravel(start['head']['kernel'])
                    for p in (params32, params16))
  assert np.dot(step32, step16) / np.linalg.norm(step32) / np.linalg.norm(step16) > 0.95


def final_variables(workdir):
  from flax import serialization
  return serialization.msgpack_restore((workdir / 'final_variables.msgpack').read_bytes())


NO_AUGMENTATION = ['--config.data.flip=False', '--config.data.rotation_factor=0']


ON_CPU_ONLY = pytest.mark.skipif(
    jax.default_backend() != 'cpu', reason='compares an in-process run with runs forced onto the '
    'CPU (JAX_PLATFORMS=cpu) within 1e-5; here JAX runs on another platform')


@ON_CPU_ONLY
def test_four_local_devices_train_like_one(tiny_run, run_on_images, run_on_streamed_images,
                                           tmp_path):
  """The CLI on 4 (forced CPU) devices, batch split 1 per device, ends where 1 device does: on
  streamed images, and on cached activations of data kept on the devices (whose rows are split
  over the 4 devices). Without augmentation, which tf.data applies per example before the batch
  is split, so the device count cannot change it.

  Also `compute.compilation_cache_dir`: the first run fills the folder it names; the second, with
  'none', leaves `$JAX_COMPILATION_CACHE_DIR` empty. And the first keeps its decoded images on
  disk (`compute.image_cache=disk`, for streamed data), whose files are gone when it ends."""
  settings = {**TINY, 'data.folder': tiny_run.data.folder, 'model.weights': tiny_run.model.weights}
  flags = [f'--config.{key}={value}' for key, value in settings.items()] + NO_AUGMENTATION
  alone = {False: run_on_streamed_images, True: run_on_images}
  caches = {False: tmp_path / 'named_cache', True: 'none'}
  environment_cache = tmp_path / 'environment_cache'
  environment_cache.mkdir()
  for cached in (False, True):
    workdir = tmp_path / f'4{"_cached" * cached}'
    code, output = run_main(workdir, flags + [
        f'--config.compute.cache_frozen={cached}',
        f'--config.compute.compilation_cache_dir={caches[cached]}',
        f'--config.compute.image_cache={"none" if cached else "disk"}',
        f'--config.data.residency={"device" if cached else "stream"}'], env={
            'XLA_FLAGS': '--xla_force_host_platform_device_count=4', 'JAX_PLATFORMS': 'cpu',
            'JAX_COMPILATION_CACHE_DIR': str(environment_cache)})
    assert code == 0, output[-3000:]
    assert 'JAX on cpu (cpu): 4 devices, 1 processes, 1 images per' in output
    assert ('Cached activations at backbone layer 101' in output) == cached
    assert ('kept in device memory' in output) == cached
    assert ('Decoded the train split (24 images, 0 MB, in ' in output) != cached  # image_cache
    assert not list(workdir.glob('image_cache/*.npy'))
    assert_trees_close(alone[cached].variables, final_variables(workdir), atol=1e-5)
    four = json.loads((workdir / 'history.json').read_text())
    assert [e['loss'] for e in alone[cached].history['epochs']] == pytest.approx(
        [e['loss'] for e in four['epochs']], abs=1e-5)
  assert len(list(caches[False].iterdir())) >= 2  # at least the two phases' train steps
  assert not list(environment_cache.iterdir())


WORKER = '''
import json, sys, jax, ml_collections, numpy as np
jax.distributed.initialize('127.0.0.1:{port}', 2, int(sys.argv[1]))
from tlflax.train import train_and_evaluate
config = ml_collections.ConfigDict(json.loads({config!r}))
result = train_and_evaluate(config, {workdir!r})
np.savez({workdir!r} + f'/params_{{jax.process_index()}}.npz',
         *jax.tree.leaves(result.variables['params']))
print('devices', jax.device_count(), 'local', jax.local_device_count())
'''


def run_two_processes(config, workdir):
  """`train_and_evaluate(config, workdir)` in two `jax.distributed` CPU processes; each one's
  final parameters (as `np.load` of their leaves)."""
  code = WORKER.format(port=free_port(), config=config.to_json(), workdir=str(workdir))
  workers = [subprocess.Popen([sys.executable, '-c', code, str(i)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
             for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in workers]
  for p, output in zip(workers, outputs):
    assert p.returncode == 0, output[-3000:]
    assert 'devices 2 local 1' in output
  return [np.load(workdir / f'params_{i}.npz') for i in range(2)]


@ON_CPU_ONLY
def test_two_processes_train_like_one(tiny_run, tmp_path):
  """`jax.distributed` on 127.0.0.1: two CPU processes, each reading its half of the data, train
  the whole recipe (checkpoints included), on images and on cached activations, and end with the
  parameters of one process alone.

  Each process shuffles its own half, so which examples share a batch depends on the process
  count; with the whole training split in one batch it cannot (the split is shuffled all the
  same), and only the summation order may differ. Augmentation and dropout are off: both are
  drawn per position in the batch. Both phases use SGD: Adam and RMSprop turn a rounding
  difference in a gradient near 0 into a whole step of the learning rate (its sign flips; seen
  with the frozen layers in chunks of 2 against the whole batch, in one process)."""
  config = no_augmentation(tiny_run, False)
  config.batch_size = 24  # the whole training split
  config.model.dropout = 0.0
  config.phases.feature_extraction.epochs = 3
  for settings, learning_rate in ((config.phases.feature_extraction, 0.1),
                                  (config.phases.fine_tune, 0.01)):
    settings.optimizer, settings.learning_rate = 'sgd', learning_rate
  alone = train_and_evaluate(config, tmp_path / 'one').variables['params']
  assert head_moved(config, alone) > 1e-3  # the comparison is not of untrained models
  alone = jax.tree.leaves(alone)
  for cached in (False, True):
    config.compute.cache_frozen = cached
    workdir = tmp_path / f'two{"_cached" * cached}'
    first, second = run_two_processes(config, workdir)
    assert len(first.files) == len(alone) > 100
    for name, expected in zip(first.files, alone):
      np.testing.assert_array_equal(first[name], second[name])
      np.testing.assert_allclose(first[name], expected, atol=1e-5, rtol=0, err_msg=name)
    assert (workdir / 'test_metrics.json').exists()


@ON_CPU_ONLY
def test_two_processes_with_data_on_the_devices_train_like_one(tiny_run, tmp_path):
  """Data kept on the devices is ordered by one permutation of the whole split per epoch, and
  augmented per position in the global batch, so two `jax.distributed` processes see the
  batches of one process alone: with shuffling, flip, rotation and dropout on, and batches of a
  third of the split, they end with its parameters."""
  config = tiny_run.copy_and_resolve_references()
  config.data.residency = 'device'
  config.batch_size = 8  # 3 steps an epoch
  config.phases.feature_extraction.epochs = 2
  config.phases.fine_tune.epochs = 1
  for settings, learning_rate in ((config.phases.feature_extraction, 0.1),
                                  (config.phases.fine_tune, 0.01)):
    settings.optimizer, settings.learning_rate = 'sgd', learning_rate
  assert config.data.flip and config.data.rotation_factor and config.model.dropout
  alone = train_and_evaluate(config, tmp_path / 'one').variables['params']
  assert head_moved(config, alone) > 1e-3
  first, second = run_two_processes(config, tmp_path / 'two')
  for name, expected in zip(first.files, jax.tree.leaves(alone)):
    np.testing.assert_array_equal(first[name], second[name])
    # sums over a batch split between two processes add in another order: on an AVX2 CPU (AMD
    # EPYC) one parameter of 3024 was 1.3e-5 off after 9 steps at SGD rate 0.1; other batches
    # or augmentations would move them by far more than 1e-4 (the head moved by > 1e-3)
    np.testing.assert_allclose(first[name], expected, atol=1e-4, rtol=0, err_msg=name)


def test_the_activation_cache_is_filled_in_place(tiny_run):
  """Peak host memory while caching is the cache's own size plus a batch, not twice it (parts
  then a concatenation), so `compute.cache_limit_gb` is the real limit."""
  import tracemalloc

  from tlflax import feeds, parallel
  from tlflax.data.batching import PipelineConfig
  from tlflax.data.sources import folder_splits
  mesh = parallel.data_mesh()
  images = feeds.ImageFeed(Classifier(backbone_args={'alpha': 0.35}), BINARY,
                           folder_splits(tiny_run.data.folder),
                           PipelineConfig(image_size=96, batch_size=4), mesh)
  batches = list(images.evaluation('train'))  # decoded before measuring
  images.evaluation = lambda split: iter(batches)
  frozen = jax.jit(lambda v, x: {'wide': jnp.tile(x, (1, 1, 1, 8))})  # 884 KB per image
  jax.block_until_ready(frozen(None, batches[0]['image']))
  tracemalloc.start()
  cache = feeds.cache_activations(frozen, None, images, 'train')
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  size = cache['activations']['wide'].nbytes
  assert cache['activations']['wide'].shape == (24, 96, 96, 24)
  assert size > 20e6 and peak < 1.3 * size, (peak, size)


def test_each_phase_compiles_its_training_step_once(tiny_run, tmp_path, monkeypatch):
  """The state a phase starts from is laid out on the mesh as the step's outputs are, so the
  step's second call reuses the program its first compiled (docs/scale.md, "Compilation
  times"): each phase's jitted step holds one compiled program after its epochs."""
  from tlflax import train
  made = []

  def recording(*args, **kwargs):
    made.append(make_train_step(*args, **kwargs))
    return made[-1]
  monkeypatch.setattr(train, 'make_train_step', recording)
  train_and_evaluate(tiny_run, tmp_path / 'run')
  assert len(made) == 2 and [step._cache_size() for step in made] == [1, 1]
