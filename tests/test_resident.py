"""Data kept in memory (`data.residency`): batches built and augmented on the devices, the memory
budget, decoding without TensorFlow."""
import glob
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from runs import ROOT, make_synthetic_folder, overrides

from tlflax import parallel
from tlflax.classifier import Classifier
from tlflax.data import augment, decoders, image_ops, pillow_decoding, resident, transforms
from tlflax.data.batching import PipelineConfig
from tlflax.data.pipeline import eval_dataset, train_dataset
from tlflax.data.sources import folder_splits
from tlflax.errors import ConfigError
from tlflax.objectives import Objective
from tlflax.resident_feed import ResidentFeed
from tlflax.steps import TrainState, make_train_step

ROUNDING = 0.5 / 127.5 + 1e-6  # resident images are rounded to uint8 before scaling to [-1, 1]


@pytest.mark.parametrize('factor', [0.05, 0.2, -0.13, 0.5, -0.3])
def test_jax_rotation_equals_keras_random_rotation(factor):
  """At a fixed angle, the device's rotation equals Keras `RandomRotation` (bilinear, reflect
  fill) within 1e-3 of [0, 255] (at -0.3 Keras's own float32 rounding of the transform is 2e-3
  from TensorFlow's op, so there it is compared with that op, as the tf.data form is), on an
  image that is not square; and it equals the tf.data form's op within 1e-4."""
  import keras
  image = np.random.default_rng(0).uniform(0, 255, (2, 37, 53, 3)).astype(np.float32)
  angle = factor * 2 * np.pi
  ours = np.asarray(image_ops.rotate(jnp.asarray(image), jnp.full((2,), angle)))
  stream = np.stack([transforms.rotate(tf.constant(i), tf.constant(angle)).numpy() for i in image])
  np.testing.assert_allclose(ours, stream, atol=1e-4, rtol=0)
  if factor != -0.3:
    layer = keras.layers.RandomRotation((factor, factor), fill_mode='reflect')
    np.testing.assert_allclose(ours, layer(image, training=True).numpy(), atol=1e-3, rtol=0)
  assert np.abs(ours - image).mean() > 1  # it did rotate


def test_jax_flip_equals_keras_flip_where_drawn():
  image = np.random.default_rng(1).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
  flipped = np.asarray(image_ops.flip_lr(jnp.asarray(image), jnp.array([True, False])))
  np.testing.assert_array_equal(flipped[0], tf.image.flip_left_right(image[0]).numpy())
  np.testing.assert_array_equal(flipped[1], image[1])


def test_jax_chain_runs_ops_in_order_with_keys_by_position():
  """The JAX chain splits its key as the tf.data chain splits its seed: flip, rotation, then the
  named ops; an op without a JAX form is refused, naming the setting that streams instead."""
  augment.register_jax('plus_jax')(lambda images, key, c: images + c)
  augment.register_jax('times_jax')(lambda images, key, c: images * c)
  images = jax.random.uniform(jax.random.key(1), (3, 6, 8, 3), minval=0, maxval=255)
  key = jax.random.key(2)
  np.testing.assert_allclose(augment.jax_chain(False, 0.0, 'plus_jax(1)|times_jax(2)')(images,
                                                                                     key),
                             (images + 1) * 2, rtol=1e-6)
  flip_key, rotation_key = jax.random.split(key, 2)
  tutorial = augment.rotate_jax(augment.flip_lr_jax(images, flip_key), rotation_key, 0.2)
  np.testing.assert_array_equal(augment.jax_chain(True, 0.2, 'plus_jax(0)')(images, key),
                                tutorial)
  augment.register('tf_only')(lambda image, seed: image)
  with pytest.raises(ConfigError, match='no JAX form.*residency=stream'):
    augment.jax_chain(True, 0.2, 'tf_only')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return folder_splits(make_synthetic_folder(tmp_path_factory.mktemp('resident'), per_class=14,
                                             size=24))


def feed(splits, where, **settings):
  config = PipelineConfig(batch_size=4, image_size=32, **settings)
  return ResidentFeed(Classifier(backbone_args={'alpha': 0.35}), Objective(2, True), splits,
                      config, parallel.data_mesh(), where)


@pytest.mark.parametrize('epoch', [0, 3])
def test_resident_batches_equal_streamed_batches(folder, epoch):
  """Without augmentation, the batches built on the device hold the streamed pipeline's examples
  in its order (images equal up to the uint8 rounding, labels exactly), for training epochs and
  the padded evaluation pass; kept on the host they are the device's exactly."""
  settings = {'flip': False, 'rotation_factor': 0.0}
  on_device = feed(folder, 'device', **settings)
  streamed = list(train_dataset(folder['train'], on_device.config, epoch).as_numpy_iterator())
  device_batches = list(on_device.train(epoch))
  assert len(device_batches) == len(streamed) == on_device.steps_per_epoch == 7
  for ours, theirs in zip(device_batches, streamed):
    np.testing.assert_array_equal(np.asarray(ours['label']), theirs['label'])
    np.testing.assert_allclose(np.asarray(ours['image']), theirs['image'], atol=ROUNDING, rtol=0)
  for ours, theirs in zip(feed(folder, 'host', **settings).train(epoch), device_batches):
    np.testing.assert_array_equal(np.asarray(ours['image']), np.asarray(theirs['image']))
  evaluation = list(on_device.evaluation('validation'))
  expected = list(eval_dataset(folder['validation'], on_device.config).as_numpy_iterator())
  assert len(evaluation) == len(expected) == 4  # 14 examples in batches of 4, 2 of padding
  for ours, theirs in zip(evaluation, expected):
    for key in ('label', 'mask', 'index'):
      np.testing.assert_array_equal(np.asarray(ours[key]), theirs[key])
    np.testing.assert_allclose(np.asarray(ours['image']), theirs['image'], atol=ROUNDING, rtol=0)


def test_device_augmentation_is_repeatable_and_redrawn_each_epoch(folder):
  """Augmented batches are the same when an epoch is drawn again (a resumed run's), differ
  between epochs, and differ from the plain images."""
  augmented = feed(folder, 'device')
  plain = feed(folder, 'device', flip=False, rotation_factor=0.0)
  first = [np.asarray(b['image']) for b in augmented.train(1)]
  again = [np.asarray(b['image']) for b in augmented.train(1)]
  other = [np.asarray(b['image']) for b in augmented.train(2)]
  unaugmented = [np.asarray(b['image']) for b in plain.train(1)]
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert np.abs(np.stack(first) - np.stack(unaugmented)).mean() > 0.01
  assert not np.array_equal(np.stack(first), np.stack(other))


def test_device_residency_copies_nothing_to_the_devices_per_step(folder):
  """Under 'device', after an epoch's first step (which sends its seed), batches and training
  steps run with every host-to-device transfer forbidden, explicit ones included; under 'host'
  the same loop is stopped by the guard (so the guard sees per-step copies)."""
  import optax
  from tlflax.classifier import init_variables
  model = Classifier(backbone_args={'alpha': 0.35})
  variables = jax.tree.map(np.asarray, init_variables(model, 32, jax.random.key(0), 'none'))
  tx = optax.sgd(0.1)
  groups = jax.tree.map(lambda _: 'trained', variables['params'])

  def steps(where):
    images = feed(folder, where)
    step = make_train_step(images.apply_fn, tx, groups, images.objective, jax.random.key(1),
                           images.mesh)
    for epoch in (0, 1):  # the second epoch: everything compiled
      state = parallel.replicate(TrainState.create(variables, tx), images.mesh)
      batches = images.train(epoch)
      state, _ = step(state, next(batches))
      if epoch:
        with jax.transfer_guard_host_to_device('disallow_explicit'):
          for batch in batches:
            state, metrics = step(state, batch)
          jax.block_until_ready(metrics)
    return state
  steps('device')
  with pytest.raises(Exception, match='Disallowed host-to-device transfer'):
    steps('host')


def test_auto_residency_follows_the_memory_budget(monkeypatch):
  """'auto' keeps the splits on the devices under the budget, on the host when only the host
  fits them, and streams them (with a warning) when neither does; 'device' or 'host' asked for
  but too large is a ConfigError with the sizes."""
  gib = 2**30
  monkeypatch.setattr(resident, 'free_device_bytes', lambda: 1 * gib)  # an accelerator's
  monkeypatch.setattr(resident, 'available_host_bytes', lambda: 16 * gib)
  image = resident.image_bytes(160)
  fits = int(0.4 * gib / image)  # examples under half of 1 GiB
  host_only = int(2 * gib / image)
  too_large = int(9 * gib / image)
  assert resident.choose('auto', fits, 160, 1, 0.5).where == 'device'
  assert resident.choose('auto', host_only, 160, 1, 0.5).where == 'host'
  assert resident.choose('auto', host_only, 160, 8, 0.5).where == 'device'  # 1/8 per device
  assert resident.choose('auto', fits, 160, 1, 0.1).where == 'host'  # a lower budget
  assert resident.choose('auto', too_large, 160, 1, 0.5).where == 'stream'
  with pytest.raises(ConfigError, match=r'residency=device: .* GB per device, budget 0.54 GB'):
    resident.choose('device', host_only, 160, 1, 0.5)
  with pytest.raises(ConfigError, match=r'residency=host: .* GB per process, budget 8.59 GB'):
    resident.choose('host', too_large, 160, 1, 0.5)
  with pytest.raises(ConfigError, match='needs TensorFlow'):
    resident.choose('stream', fits, 160, 1, 0.5, streamable=False)
  assert resident.choose('auto', fits, 160, 1, 0.5, device_form=False).where == 'stream'
  with pytest.raises(ConfigError, match='without a TensorFlow form'):
    resident.choose('stream', fits, 160, 1, 0.5, stream_form=False)
  # the shard is decoded on the host first: 8 accelerators cannot take more than the host holds
  monkeypatch.setattr(resident, 'free_device_bytes', lambda: 40 * gib)
  assert resident.choose('auto', int(12 * gib / image), 160, 8, 0.5).where == 'stream'
  # CPU devices share the host's memory: 8 of them get an eighth of its budget each
  monkeypatch.setattr(resident, 'free_device_bytes', lambda: None)
  monkeypatch.setattr(jax, 'local_device_count', lambda: 8)
  assert resident.choose('auto', int(10 * gib / image), 160, 8, 0.5).where == 'stream'
  assert resident.choose('auto', int(6 * gib / image), 160, 8, 0.5).where == 'device'


def test_cached_activations_must_fit_beside_the_resident_images(folder, monkeypatch):
  """A phase's activation cache under 'device' is checked against the devices' budget."""
  monkeypatch.setattr(resident, 'free_device_bytes', lambda: 2**30)
  images = feed(folder, 'device')
  assert images.cache_fits(2**28) is None
  assert 'GB per device, over data.memory_share=0.5' in images.cache_fits(2**30)


def test_a_run_picks_host_memory_under_a_low_budget(tiny_run, monkeypatch):
  """Through `run_parts.image_feed`: the config's budget decides the feed."""
  from tlflax import run_parts
  monkeypatch.setattr(resident, 'free_device_bytes', lambda: 2**20)
  tiny_run = tiny_run.copy_and_resolve_references()
  splits = run_parts.load_splits(tiny_run)
  objective = run_parts.make_objective(tiny_run, splits['train'].class_names)
  model = run_parts.make_model(tiny_run, objective)
  mesh = parallel.data_mesh()
  for share, where in ((0.5, 'device'), (0.001, 'host')):
    tiny_run.data.memory_share = share
    chosen = run_parts.image_feed(tiny_run, model, objective, splits, mesh)
    assert isinstance(chosen, ResidentFeed) and chosen.where == where
  tiny_run.data.residency = 'stream'
  assert not isinstance(run_parts.image_feed(tiny_run, model, objective, splits, mesh),
                        ResidentFeed)


def test_pillow_resize_equals_tensorflow_resize():
  rng = np.random.default_rng(3)
  for shape in ((37, 53), (300, 20), (16, 16), (5, 400)):
    image = rng.integers(0, 256, (*shape, 3), np.uint8)
    for size in (16, 160):
      np.testing.assert_allclose(pillow_decoding.resize(image, size),
                                 tf.image.resize(image, (size, size)).numpy(), atol=1e-3,
                                 rtol=0)


def test_pillow_decoding_matches_tensorflow_on_real_photos(shared_dir):
  """Real JPEGs decoded and resized by Pillow against TensorFlow: the same sizes (also at the
  reduced scales above max_pixels) and pixels within the JPEG decoders' own differences."""
  paths = sorted(glob.glob(str(shared_dir / 'data' / 'flowers_mini' / 'train' / '*' / '*.jpg')))
  paths = paths[::25]
  ours = pillow_decoding.decode_files(paths, 160)
  theirs = np.stack([transforms.exported_model_input(tf.io.read_file(p), 160).numpy()
                     for p in paths])
  difference = np.abs(ours.astype(int) - theirs)
  assert difference.mean() < 2 and np.percentile(difference, 99) <= 8
  for max_pixels in (20_000, 5_000, 1_000):
    ours = pillow_decoding.decode_rgb(paths[0], max_pixels)
    theirs = transforms.decode_rgb(tf.io.read_file(paths[0]), max_pixels).numpy()
    assert ours.shape == theirs.shape


def test_without_tensorflow_files_that_do_not_decode_are_found_and_left_out(tmp_path,
                                                                             monkeypatch):
  """Pillow's checks and decoding, as TensorFlow's: a truncated JPEG, text named .jpg and an empty
  file fail the check, the good images pass, and batches leave the bad ones out."""
  monkeypatch.setattr(decoders, 'tensorflow_installed', lambda: False)
  good = tmp_path / 'good.jpg'
  Image.new('RGB', (40, 30), (200, 60, 60)).save(good)
  Image.new('L', (20, 20), 90).save(tmp_path / 'grey.png')
  (tmp_path / 'cut.jpg').write_bytes(good.read_bytes()[:60])
  (tmp_path / 'text.jpg').write_text('not an image')
  (tmp_path / 'empty.jpg').write_bytes(b'')
  paths = [str(tmp_path / name) for name in ('good.jpg', 'cut.jpg', 'grey.png', 'text.jpg',
                                             'empty.jpg')]
  assert list(decoders.decodable(paths)) == [True, False, True, False, False]
  (indices, images), = decoders.decoded_batches(paths, 8, 16, rounded=True)
  assert list(indices) == [0, 2] and images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
  assert abs(int(images[1, 5, 5, 0]) - 90) <= 1 and images[1, 5, 5, 0] == images[1, 5, 5, 2]


NO_TENSORFLOW = '''
import runpy, sys
sys.modules['tensorflow'] = None  # an import of it fails
sys.modules['tensorflow_datasets'] = None
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path('main.py', run_name='__main__')
'''


def test_a_folder_trains_evaluates_and_predicts_without_tensorflow(tiny_run, tmp_path):
  """With TensorFlow's import blocked, main.py decodes the folder with Pillow, trains on the
  device, evaluates and predicts."""
  workdir = tmp_path / 'run'

  def main(*flags, code=0):
    done = subprocess.run([sys.executable, '-c', NO_TENSORFLOW,
                           '--config=configs/cats_dogs.py', f'--workdir={workdir}',
                           *overrides(tiny_run), *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr
  output = main('--config.phases.fine_tune.epochs=1')
  assert 'with Pillow' in output and 'kept in device memory' in output
  assert 'finished: test accuracy' in output and (workdir / 'test_metrics.json').exists()
  assert 'import of tensorflow halted' not in output
  assert 'test accuracy' in main('--mode=evaluate')
  images = tmp_path / 'inputs'
  images.mkdir()
  for name in ('a', 'b'):
    Image.new('RGB', (30, 20), (200, 60, 60)).save(images / f'{name}.png')
  predicted = main('--mode=predict', f'--inputs={images}')
  rows = [line.split('\t') for line in predicted.splitlines() if '.png\t' in line]
  assert [row[0].rsplit('/', 1)[-1] for row in rows] == ['a.png', 'b.png']
  assert all(row[1] in ('cat', 'dog') for row in rows)
  for flags, needs in ((['--mode=export'], 'with TensorFlow, which is not installed'),
                       (['--config.data.folder=', '--config.data.tfds_name=cats_vs_dogs'],
                        'TFDS datasets need TensorFlow')):
    output = main(*flags, code=1)
    assert needs in output and 'Traceback' not in output
