"""Input pipelines: TFDS splits, image folders with bad files, Keras-equal transforms, batching."""
import logging
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from unittest import mock
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import fake_tfds
from runs import ROOT, free_port

from tlflax.backbones.preprocessing import UNIT_RANGE
from tlflax.data import transforms
from tlflax.data.folders import DataError, scan_image_folder
from tlflax.data.image_cache import ImageCache
from tlflax.data.batching import PipelineConfig, global_batch
from tlflax.data.pipeline import epoch_indices, eval_dataset, train_dataset
from tlflax.data.sources import SPLIT_SCHEMES, folder_splits, process_range, tfds_splits

@pytest.mark.parametrize('scheme,sizes', [('original', (800, 100, 100)),
                                          ('later', (800, 160, 40))])
def test_tfds_split_sizes_follow_the_percentages(scheme, sizes):
  with fake_tfds.cats_vs_dogs():
    splits = tfds_splits('cats_vs_dogs', scheme)
    assert tuple(splits[s].num_examples for s in ('train', 'validation', 'test')) == sizes
    assert splits['train'].class_names == ('cat', 'dog')
    assert splits['validation'].class_counts == (sizes[1] // 2,) * 2
    batch = next(train_dataset(splits['train'], PipelineConfig(batch_size=8), 0)
                 .as_numpy_iterator())
  assert batch['image'].shape == (8, 160, 160, 3) and batch['label'].dtype == np.int32


def test_a_tfds_download_that_fails_offline_is_one_error(monkeypatch):
  """TFDS retries for minutes without a network, then raises requests' ConnectionError (an
  OSError): one DataError that says what to do instead."""
  import requests

  class Offline:
    def download_and_prepare(self):
      raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='download.microsoft."
                                                "com', port=443): Max retries exceeded\n...")
  monkeypatch.setattr(tfds, 'builder', lambda name, data_dir=None: Offline())
  with pytest.raises(DataError) as error:
    tfds_splits('cats_vs_dogs')
  assert str(error.value) == (
      "TFDS cats_vs_dogs: could not download and prepare it (ConnectionError: HTTPSConnectionPool"
      "(host='download.microsoft.com', port=443): Max retries exceeded); without internet, train "
      'on a folder of images instead (--config.data.folder=PATH)')


def test_unknown_split_scheme_is_refused():
  with pytest.raises(DataError, match='split_scheme'):
    tfds_splits('cats_vs_dogs', 'random')
  assert set(SPLIT_SCHEMES) == {'original', 'later', 'auto'}


def save(path, mode='RGB', size=(40, 30), fmt=None, color=(200, 50, 25)):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.new('RGB', size, color).convert(mode)
  image.save(path, format=fmt)
  return path


def make_folder(root, per_class=6, splits=('train', 'validation', 'test')):
  for split in splits:
    for name, color in (('cat', (250, 0, 0)), ('dog', (0, 0, 250))):
      for i in range(per_class):
        save(root / split / name / f'{name}.{i}.jpg', color=color)
  return root


@pytest.fixture
def messy_folder(tmp_path):
  """Every kind of file an image folder collects, good and bad, in train/cat."""
  root = make_folder(tmp_path / 'messy', per_class=3)
  cat = root / 'train' / 'cat'
  save(cat / 'grey.jpg', 'L')
  save(cat / 'rgba.png', 'RGBA')
  save(cat / 'cmyk.jpg', 'CMYK')
  save(cat / 'anim.gif', 'P')
  save(cat / 'bitmap.bmp')
  save(cat / 'tiny.jpg', size=(1, 1))
  save(cat / 'upper.JPEG')
  good = cat / 'cat.0.jpg'
  (cat / 'truncated.jpg').write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
  (cat / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff' + b'\x00' * 200)
  (cat / 'notes.txt').write_text('not an image')
  (cat / 'Thumbs.db').write_bytes(b'\x00' * 10)
  (cat / '.DS_Store').write_bytes(b'\x00' * 10)
  (cat / 'nested').mkdir()
  save(cat / 'nested' / 'ignored.jpg')
  return root


def test_bad_files_are_skipped_with_counted_warnings(messy_folder, caplog):
  with caplog.at_level(logging.WARNING):
    files, class_names = scan_image_folder(messy_folder)
  assert class_names == ('cat', 'dog')
  train = files['train']
  names = sorted(p.rsplit('/', 1)[-1] for p, label in zip(train.paths, train.labels) if label == 0)
  assert names == sorted(['cat.0.jpg', 'cat.1.jpg', 'cat.2.jpg', 'grey.jpg', 'rgba.png', 'cmyk.jpg',
                          'anim.gif', 'bitmap.bmp', 'tiny.jpg', 'upper.JPEG'])
  assert all('/dog/' in p for p, label in zip(train.paths, train.labels) if label == 1)
  assert 'skipped 2 files that are not images' in caplog.text
  assert 'skipped 2 images that do not decode' in caplog.text and 'truncated.jpg' in caplog.text


def test_every_accepted_file_decodes_to_rgb_batches(messy_folder):
  splits = folder_splits(messy_folder)
  config = PipelineConfig(batch_size=4, image_size=32)
  for split, source in splits.items():
    batches = list(eval_dataset(source, config).as_numpy_iterator())
    assert sum(int(b['mask'].sum()) for b in batches) == source.num_examples
    for b in batches:
      assert b['image'].shape == (4, 32, 32, 3) and np.all(np.abs(b['image']) <= 1)
  assert splits['train'].num_examples == 13  # 10 usable cats, 3 dogs
  assert len(list(train_dataset(splits['train'], config, 0).as_numpy_iterator())) == 13 // 4


def wrong_root(root):
  return root / 'nowhere'


def no_train_folder(root):
  (root / 'train').rename(root / 'training')
  return root


def empty_train_class(root):
  for path in (root / 'train' / 'dog').iterdir():
    path.unlink()
  return root


def unreadable_train_class(root):
  for path in (root / 'train' / 'dog').iterdir():
    path.write_bytes(b'junk')
  return root


def renamed_validation_class(root):
  (root / 'validation' / 'dog').rename(root / 'validation' / 'dogs')
  return root


def single_class(root):
  __import__('shutil').rmtree(root / 'train' / 'dog')
  return root


@pytest.mark.parametrize('breakage,message', [
    (wrong_root, 'does not exist'),
    (no_train_folder, 'no train/ folder'),
    (empty_train_class, 'train/dog has no usable images'),
    (unreadable_train_class, 'train/dog has no usable images'),
    (renamed_validation_class, 'validation has class folders'),
    (single_class, 'at least two class folders')])
def test_unusable_folders_stop_before_training_naming_the_path(tmp_path, breakage, message):
  root = breakage(make_folder(tmp_path / 'data', per_class=2))
  with pytest.raises(DataError, match=message) as error:
    folder_splits(root)
  assert str(tmp_path) in str(error.value)


def test_empty_evaluation_class_is_a_warning(tmp_path, caplog):
  root = make_folder(tmp_path / 'data', per_class=2)
  for p in (root / 'test' / 'dog').iterdir():
    p.unlink()
  with caplog.at_level(logging.WARNING):
    files, _ = scan_image_folder(root)
  assert files['test'].labels == (0, 0)
  assert 'test/dog has no usable images' in caplog.text


def test_train_only_folder_is_split_deterministically_by_seed(tmp_path):
  root = make_folder(tmp_path / 'data', per_class=20, splits=('train',))
  first, _ = scan_image_folder(root, seed=1)
  again, _ = scan_image_folder(root, seed=1)
  other, _ = scan_image_folder(root, seed=2)
  assert first == again and first['validation'] != other['validation']
  sizes = {s: len(f.paths) for s, f in first.items()}
  assert sizes == {'train': 32, 'validation': 4, 'test': 4}
  assert all(f.labels.count(0) == f.labels.count(1) for f in first.values())  # stratified
  every = [p for f in first.values() for p in f.paths]
  assert len(set(every)) == len(every) == 40


def test_shared_mini_set_counts(shared_dir):
  splits = folder_splits(shared_dir / 'data' / 'cats_vs_dogs_mini')
  counts = {s: (src.num_examples, src.class_names) for s, src in splits.items()}
  assert counts == {'train': (1600, ('cat', 'dog')), 'validation': (320, ('cat', 'dog')),
                    'test': (80, ('cat', 'dog'))}
  labels = np.concatenate([b['label'] for b in
                           eval_dataset(splits['test'], PipelineConfig()).as_numpy_iterator()])
  assert np.bincount(labels[:80]).tolist() == [40, 40]


def test_preprocessing_equals_keras(tmp_path):
  import keras
  path = save(tmp_path / 'photo.jpg', size=(123, 77))
  image = np.asarray(Image.open(path), np.uint8)
  ours = UNIT_RANGE(transforms.resize(image, 160)).numpy()
  resized = keras.layers.Resizing(160, 160, interpolation='bilinear')(image.astype(np.float32))
  theirs = keras.applications.mobilenet_v2.preprocess_input(np.array(resized))
  np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0)
  assert ours.min() >= -1 and ours.max() <= 1


@pytest.mark.parametrize('factor', [0.2, -0.13, 0.05])
def test_rotation_equals_keras_random_rotation(factor):
  import keras
  image = np.random.default_rng(0).uniform(0, 255, (50, 64, 3)).astype(np.float32)
  layer = keras.layers.RandomRotation((factor, factor), fill_mode='reflect')  # a fixed angle
  theirs = np.asarray(layer(image, training=True))
  ours = transforms.rotate(tf.constant(image), tf.constant(factor * 2 * np.pi)).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-3, rtol=0)
  assert np.abs(ours - image).mean() > 1  # it did rotate


def test_augmentation_is_deterministic_per_seed_and_epoch(tmp_path):
  source = folder_splits(make_folder(tmp_path / 'data', per_class=8, splits=('train',)))['train']
  def epoch(seed, number, **kwargs):
    config = PipelineConfig(batch_size=4, image_size=32, seed=seed, **kwargs)
    return np.concatenate([b['image'] for b in train_dataset(source, config, number)
                           .as_numpy_iterator()])
  np.testing.assert_array_equal(epoch(0, 3), epoch(0, 3))
  assert not np.array_equal(epoch(0, 3), epoch(0, 4))
  assert not np.array_equal(epoch(0, 3), epoch(1, 3))
  plain = epoch(0, 3, flip=False, rotation_factor=0.0)
  # without augmentation, images are the unaugmented preprocessing of solid colours
  assert np.allclose(plain, plain[:, :1, :1, :], atol=1e-5)


def test_a_folder_epoch_mixes_its_classes_in_its_first_half(tmp_path):
  """An image folder's files are sorted by class; its epoch permutes all of them (a shuffle
  buffer smaller than a class would start with batches of the first class only)."""
  source = folder_splits(make_folder(tmp_path / 'data', per_class=24, splits=('train',)))['train']
  config = PipelineConfig(batch_size=8, shuffle_buffer=4)
  cats = source.class_counts[0]  # positions 0..cats-1 are cats, the rest dogs
  fractions = []
  for epoch in range(4):
    positions = epoch_indices(source, config, epoch).ravel()
    assert len(set(positions)) == len(positions) == source.num_examples // 8 * 8
    fractions.append(np.mean(positions[:len(positions) // 2] >= cats))
  assert 0.3 < np.mean(fractions) < 0.7, fractions


def test_the_epoch_order_ignores_tensorflows_global_seed(tmp_path):
  """The order comes from (seed, epoch) alone: a program that seeds TensorFlow (as Keras's
  `set_random_seed` does) trains on the same batches. Folders and TFDS (blocks of
  `shuffle_buffer`) alike; the images of `train_dataset` come in `epoch_indices`' order."""
  source = folder_splits(make_folder(tmp_path / 'data', per_class=12, splits=('train',)))['train']
  config = PipelineConfig(batch_size=4, image_size=8, flip=False, rotation_factor=0.0)
  with fake_tfds.cats_vs_dogs(100):
    tfds_train = tfds_splits('cats_vs_dogs', 'original')['train']
    orders = []
    try:
      for global_seed in (None, 123, 7):
        tf.random.set_seed(global_seed)
        orders.append([epoch_indices(s, replace(config, shuffle_buffer=10), 1)
                       for s in (source, tfds_train)])
        images = np.concatenate([b['image'] for b in train_dataset(tfds_train, replace(
            config, shuffle_buffer=10), 1).as_numpy_iterator()])
        # the fake's red channel is the position: the images come in epoch_indices' order
        np.testing.assert_allclose((images[:, 0, 0, 0] + 1) * 127.5, orders[-1][1].ravel(),
                                   atol=0.01)
    finally:
      tf.random.set_seed(None)
  for order in orders[1:]:
    for a, b in zip(orders[0], order):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(orders[0][1], np.sort(orders[0][1], axis=None).reshape(-1, 4))


def test_evaluation_counts_every_example_once_with_padding(tmp_path):
  root = make_folder(tmp_path / 'data', per_class=2)
  for i in range(17):  # 19 dogs in test: 21 examples in all, batches of 8
    save(root / 'test' / 'dog' / f'extra.{i}.png', color=(i, 2 * i, 3 * i))
  source = folder_splits(root)['test']
  batches = list(eval_dataset(source, PipelineConfig(batch_size=8, image_size=8))
                 .as_numpy_iterator())
  assert len(batches) == 3
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == 21 and not mask[21:].any()
  images = np.concatenate([b['image'] for b in batches])[mask]
  assert len({img.tobytes() for img in images}) == 19  # the 17 distinct + one per class colour


def test_global_batch_is_laid_out_over_the_mesh():
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  batch = {'image': np.zeros((8, 4, 4, 3), np.float32), 'label': np.arange(8, dtype=np.int32)}
  arrays = global_batch(batch, sharding)
  assert arrays['image'].shape == (8 * jax.process_count(), 4, 4, 3)
  assert arrays['label'].sharding == sharding
  np.testing.assert_array_equal(np.asarray(arrays['label']), batch['label'])


@pytest.mark.parametrize('processes', [2, 3])
def test_processes_read_disjoint_shards_in_equal_steps(tmp_path, monkeypatch, processes):
  root = make_folder(tmp_path / 'data', per_class=4)
  for i in range(9):  # 17 test examples: shards of 9 and 8 (or 6, 6, 5)
    save(root / 'test' / 'dog' / f'extra.{i}.png', color=(10 * i, 0, 0))
  splits = folder_splits(root)
  config = PipelineConfig(batch_size=6, image_size=8)
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  seen, batch_counts, train_steps, positions, labels = [], set(), set(), [], []
  for index in range(processes):
    monkeypatch.setattr(jax, 'process_index', lambda i=index: i)
    batches = list(eval_dataset(splits['test'], config).as_numpy_iterator())
    batch_counts.add(len(batches))
    assert all(len(b['label']) == 6 // processes for b in batches)
    real = np.concatenate([b['mask'] for b in batches])
    images = np.concatenate([b['image'] for b in batches])[real]
    seen.extend(img.tobytes() for img in images)
    indices = np.concatenate([b['index'] for b in batches])
    assert np.all(indices[~real] == -1)
    positions.extend(indices[real])
    labels.extend(np.concatenate([b['label'] for b in batches])[real])
    train_steps.add(len(list(train_dataset(splits['train'], config, 0).as_numpy_iterator())))
  assert len(batch_counts) == 1 and len(train_steps) == 1
  assert len(seen) == 17  # every example once over all processes
  assert sorted(positions) == list(range(17))  # 'index': each example's place in the split
  in_split_order = np.array(labels)[np.argsort(positions)]
  np.testing.assert_array_equal(in_split_order, [
      x['label'] for x in splits['test'].dataset.as_numpy_iterator()])
  with pytest.raises(DataError, match='not divisible'):
    list(eval_dataset(splits['test'], PipelineConfig(batch_size=7)).as_numpy_iterator())


@pytest.mark.parametrize('processes', [2, 3])
def test_each_process_opens_only_its_own_files(tmp_path, monkeypatch, processes):
  """Image folders are sharded before any file is read: with the files of every other process's
  shard gone, a process still runs its training epoch and evaluation pass, on its third or half
  of the examples."""
  root = make_folder(tmp_path / 'data', per_class=6)  # 12 per split
  splits = folder_splits(root)
  config = PipelineConfig(batch_size=processes, image_size=8)
  monkeypatch.setattr(jax, 'process_count', lambda: processes)
  for index in range(processes):
    monkeypatch.setattr(jax, 'process_index', lambda i=index: i)
    moved = []
    for split in ('train', 'test'):
      paths = [Path(os.fsdecode(r['image'])) for r in splits[split].records.as_numpy_iterator()]
      start, end = process_range(len(paths), index)
      for position, path in enumerate(paths):
        if not start <= position < end:
          moved.append((path, path.rename(path.with_suffix('.away'))))
    try:
      train = list(train_dataset(splits['train'], config, 0).as_numpy_iterator())
      evaluation = list(eval_dataset(splits['test'], config).as_numpy_iterator())
    finally:
      for path, away in moved:
        away.rename(path)
    assert len(moved) == 2 * (12 - 12 // processes)
    assert sum(len(b['label']) for b in train) == 12 // processes  # 1 per step, every step
    assert sum(b['mask'].sum() for b in evaluation) == 12 // processes


TFDS_WORKER = """
import json, sys
sys.path.insert(0, 'tests')
import jax
jax.distributed.initialize('127.0.0.1:{port}', 2, int(sys.argv[1]))
import fake_tfds
print('REPORT' + json.dumps({{s: fake_tfds.reads_of_a_run(s) for s in ('original', 'auto')}}))
"""


def test_two_tfds_processes_each_read_half(tmp_path):
  """Two `jax.distributed` processes on a (made-up) TFDS `cats_vs_dogs`, with the tutorial's slices
  and with splits carved by seed: each reads about half of what one process alone reads, for the
  class counts (which equal one process's) and for a training epoch and the evaluation passes;
  together they evaluate every example once."""
  code = TFDS_WORKER.format(port=free_port())
  workers = [subprocess.Popen([sys.executable, '-c', code, str(i)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**os.environ, 'JAX_PLATFORMS': 'cpu'}) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in workers]
  assert all(p.returncode == 0 for p in workers), outputs[0][-2000:] + outputs[1][-2000:]
  reports = [json.loads(o.split('REPORT')[-1]) for o in outputs]
  for scheme in ('original', 'auto'):
    alone = fake_tfds.reads_of_a_run(scheme)
    first, second = (report[scheme] for report in reports)
    assert sorted(first['labels_read'] + second['labels_read']) == alone['labels_read'] == [
        ['train', i] for i in range(fake_tfds.SIZE)]  # each label once
    if scheme == 'original':  # slices: the two read different examples
      assert not {tuple(r) for r in first['read']} & {tuple(r) for r in second['read']}
    # a carved split's shard reads from its first example to its last: a little less in two
    assert len(first['read']) + len(second['read']) <= len(alone['read'])
    for report in (first, second):
      assert len(report['read']) <= 0.55 * len(alone['read']), scheme
    for report in (first, second):
      assert report['counts'] == alone['counts']
    for split in ('validation', 'test'):
      assert sorted(first['indices'][split] + second['indices'][split]) == alone['indices'][split]


def test_global_batch_splits_over_four_local_devices():
  """With 4 (forced CPU) devices, a batch of 8 lands as 2 examples on each device."""
  import os
  import subprocess
  import sys
  code = '''
import jax, numpy as np
from tlflax.data.batching import global_batch
mesh = jax.make_mesh((4,), ('data',))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
arrays = global_batch({'label': np.arange(8, dtype=np.int32)}, sharding)
shards = sorted((s.device.id, np.asarray(s.data).tolist())
                for s in arrays['label'].addressable_shards)
print(jax.device_count(), shards)
'''
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
  assert result.stdout.strip().splitlines()[-1] == \
      '4 [(0, [0, 1]), (1, [2, 3]), (2, [4, 5]), (3, [6, 7])]'


def test_images_over_the_pixel_limit_are_skipped_from_their_header(tmp_path, caplog, monkeypatch):
  """A 12000x12000 PNG (144 MP, a few KB on disk) is skipped without being decoded; a JPEG over
  the limit is kept when a reduced-scale decoding fits it."""
  from tlflax.data import decoders
  root = make_folder(tmp_path / 'data', per_class=2)
  Image.new('1', (12000, 12000)).save(root / 'train' / 'cat' / 'bomb.png')
  decoded = []
  checked = decoders.decodable
  monkeypatch.setattr(decoders, 'decodable', lambda paths, *a: decoded.extend(paths) or checked(
      paths, *a))
  with caplog.at_level(logging.WARNING):
    files, _ = scan_image_folder(root)
  assert not any('bomb' in p for p in files['train'].paths + tuple(decoded))
  assert len(decoded) == 12  # every other image was decoded to check it
  assert 'skipped 1 images over data.max_pixels=50000000' in caplog.text
  small_limit = make_folder(tmp_path / 'small_limit', per_class=2)
  save(small_limit / 'train' / 'cat' / 'big.png', size=(40, 30))  # 1200 pixels
  files, _ = scan_image_folder(small_limit, max_pixels=1000)
  kept = {p.rsplit('/', 1)[-1] for p in files['train'].paths}
  assert 'big.png' not in kept and 'cat.0.jpg' in kept  # the 40x30 JPEGs decode at 1/2 scale


@pytest.mark.parametrize('max_pixels,shape', [(None, (300, 400)), (120_000, (300, 400)),
                                              (119_999, (150, 200)), (7_500, (75, 100)),
                                              (10, (38, 50))])
def test_large_jpegs_decode_at_the_first_scale_within_the_limit(tmp_path, max_pixels, shape):
  jpeg = save(tmp_path / 'photo.jpg', size=(400, 300)).read_bytes()
  decoded = transforms.decode_rgb(tf.constant(jpeg), max_pixels)
  assert decoded.shape == (*shape, 3) and decoded.dtype == tf.uint8
  if max_pixels and shape == (300, 400):  # within the limit: exactly the plain decoding
    np.testing.assert_array_equal(decoded, transforms.decode_rgb(tf.constant(jpeg)))


def test_resize_reads_uint8_without_a_float_copy_and_equal_values():
  image = np.random.default_rng(0).integers(0, 256, (97, 61, 3), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.resize(tf.constant(image), 40),
                                tf.image.resize(tf.cast(image, tf.float32), (40, 40)))


def test_file_names_that_are_not_utf8_are_read(tmp_path):
  root = make_folder(tmp_path / 'data', per_class=2)
  name = os.fsdecode(b'x\xfe.jpg')
  save(root / 'train' / 'cat' / name)
  splits = folder_splits(root)
  assert splits['train'].num_examples == 5
  batches = list(eval_dataset(splits['train'], PipelineConfig(batch_size=4, image_size=32))
                 .as_numpy_iterator())
  assert sum(int(b['mask'].sum()) for b in batches) == 5


def test_an_empty_split_is_an_error_naming_it(tmp_path):
  """A small validation/ and no test/: the carved test split would be empty."""
  root = make_folder(tmp_path / 'data', per_class=2, splits=('train',))
  make_folder(tmp_path / 'data', per_class=1, splits=('validation',))
  with pytest.raises(DataError, match=r'the test split has no usable images \(there is no test/'):
    folder_splits(root)


def test_a_new_augmentation_is_one_registered_function_and_one_config_entry(tiny_run, tmp_path):
  """An op registered here, in the test file, is used by name from the config: it changes the
  training batches, a tiny run trains with it, and bad names or arguments fail naming the key."""
  from tlflax.data import augment
  from tlflax.errors import ConfigError
  from tlflax.train import check_config, train_and_evaluate

  @augment.register('invert')
  def invert(image, seed, probability):
    flip = tf.random.stateless_uniform([], seed) < probability
    return tf.where(flip, 255.0 - image, image)

  source = folder_splits(tiny_run.data.folder)['train']
  def first_epoch(**kwargs):
    config = PipelineConfig(batch_size=4, image_size=32, flip=False, rotation_factor=0.0, **kwargs)
    return np.concatenate([b['image'] for b in train_dataset(source, config, 0)
                           .as_numpy_iterator()])
  plain, inverted = first_epoch(), first_epoch(augment_ops='invert(1.0)')
  np.testing.assert_allclose(inverted, -plain, atol=1e-5)  # [-1, 1]: 255 - x is -x
  config = tiny_run.copy_and_resolve_references()
  config.data.augment_ops = 'invert(0.5)'
  config.phases.fine_tune.epochs = 0
  history = train_and_evaluate(config, tmp_path).history
  assert [e['phase'] for e in history['epochs']] == ['feature_extraction']
  for spec, message in (('nope', "unknown op 'nope'"), ('invert(1, 2)', 'bad arguments'),
                        ('invert(', 'cannot read'), ('rotate("a")', 'fails on a test image')):
    config.data.augment_ops = spec
    with pytest.raises(ConfigError, match=rf'data.augment_ops: .*{re.escape(message)}'):
      check_config(config)


def test_augmentation_ops_run_in_order_with_seeds_by_position():
  """The chain is flip (seed 0), rotation (seed 1), then the named ops in order (seeds 2, ...):
  the tutorial's draws stay as they were whatever follows them."""
  from tlflax.data import augment
  augment.register('plus')(lambda image, seed, c: image + c)
  augment.register('times')(lambda image, seed, c: image * c)
  image = tf.random.stateless_uniform((12, 16, 3), [1, 2], 0, 255)
  seed = tf.constant([3, 4], tf.int64)
  ordered = augment.chain(False, 0.0, 'plus(1)|times(2)')(image, seed)
  np.testing.assert_allclose(ordered, (image + 1) * 2, rtol=1e-6)
  np.testing.assert_allclose(augment.chain(False, 0.0, 'times(2)|plus(1)')(image, seed),
                             image * 2 + 1, rtol=1e-6)
  flip_seed, rotation_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  tutorial = augment.rotate(augment.flip_lr(image, flip_seed), rotation_seed, 0.2)
  for extra in ('', 'plus(0)'):
    np.testing.assert_array_equal(augment.chain(True, 0.2, extra)(image, seed), tutorial)


@pytest.mark.parametrize('where', ['memory', 'disk'])
def test_decoded_images_give_the_batches_of_decoding_every_epoch(tmp_path, where):
  """Training epochs (augmented) and evaluation passes from images decoded once equal those that
  decode every epoch, for an image folder and for TFDS (shuffled in blocks), on one process and
  on each of two."""
  folder = folder_splits(make_folder(tmp_path / 'data', per_class=7))
  config = PipelineConfig(batch_size=4, image_size=16, shuffle_buffer=5)
  with fake_tfds.cats_vs_dogs(60):
    for name, splits in (('folder', folder), ('tfds', tfds_splits('cats_vs_dogs', 'original'))):
      for processes in (1, 2):
        with mock.patch.object(jax, 'process_count', lambda: processes):
          cache = ImageCache(where, limit_gb=1.0, folder=tmp_path / 'cache' / name)
          for split in ('train', 'validation'):
            decoded = cache.get(split, splits[split], config.image_size, config.max_pixels)
            assert isinstance(decoded.images, np.memmap) == (where == 'disk')
            for epoch in (0, 1):
              assert_batches_equal(train_dataset(splits[split], config, epoch),
                                   train_dataset(splits[split], config, epoch, decoded))
            assert_batches_equal(eval_dataset(splits[split], config),
                                 eval_dataset(splits[split], config, decoded))
          if where == 'disk':
            assert len(list((tmp_path / 'cache' / name).glob('*.process0.npy'))) == 2
            cache.remove_files()
            assert not list((tmp_path / 'cache' / name).iterdir()) and not cache.held


def assert_batches_equal(expected: tf.data.Dataset, actual: tf.data.Dataset):
  expected, actual = list(expected.as_numpy_iterator()), list(actual.as_numpy_iterator())
  assert len(expected) == len(actual) > 0
  for a, b in zip(expected, actual):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_image_cache_goes_to_disk_above_its_memory_limit(tmp_path):
  """'auto' keeps splits in memory while they fit under the limit, then in files."""
  splits = folder_splits(make_folder(tmp_path / 'data', per_class=7))
  image_size = 16  # 3 KB per image: the train split's 14 take 43 KB
  cache = ImageCache('auto', limit_gb=60e3 / 2**30, folder=tmp_path / 'cache')
  train = cache.get('train', splits['train'], image_size, 10**8)
  validation = cache.get('validation', splits['validation'], image_size, 10**8)
  assert not isinstance(train.images, np.memmap) and isinstance(validation.images, np.memmap)
  assert cache.get('train', splits['train'], image_size, 10**8) is train  # decoded once
  np.testing.assert_array_equal(validation.labels, [0] * 7 + [1] * 7)
  assert ImageCache('none').get('train', splits['train'], image_size, 10**8) is None
