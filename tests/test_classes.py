"""Any number of classes: heads and losses against Keras, class weights, label smoothing, TFDS
splits of any dataset, class-count checks, per-class evaluation and N-way runs end to end."""
import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import fake_tfds
from runs import TINY, run_main
from tlflax import objectives
from tlflax.classifier import Classifier, init_variables
from tlflax.data import carving
from tlflax.data.sources import Source, check_class_counts, feature_names, tfds_splits
from tlflax.errors import ConfigError, DataError
from tlflax.evaluation import format_report, per_class_report
from tlflax.objectives import Objective

RNG = np.random.default_rng(0)


def keras():
  import keras
  return keras


def batch_of(labels, mask=None):
  labels = np.asarray(labels, np.int32)
  return {'label': labels, 'mask': np.ones(len(labels), bool) if mask is None else mask}


def mean_loss(objective, logits, labels, weighted=False):
  sums = objective.metric_sums(logits, batch_of(labels), weighted)
  return float(sums['loss'] / sums['count']), float(sums['correct'] / sums['count'])


def test_softmax_loss_and_accuracy_equal_keras_sparse_categorical():
  labels = RNG.integers(0, 7, 64)
  logits = RNG.normal(0, 3, (64, 7)).astype(np.float32)
  logits[np.arange(64), labels] += 3  # a model that is right about half the time
  loss, accuracy = mean_loss(Objective(7, sigmoid=False), logits, labels)
  k = keras()
  expected_loss = float(k.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits))
  metric = k.metrics.SparseCategoricalAccuracy()
  metric.update_state(labels, logits)
  top5 = k.metrics.SparseTopKCategoricalAccuracy(k=5)
  top5.update_state(labels, logits)
  assert loss == pytest.approx(expected_loss, abs=1e-5)
  assert accuracy == pytest.approx(float(metric.result()), abs=1e-6)
  sums = Objective(7, sigmoid=False).metric_sums(logits, batch_of(labels))
  assert float(sums['correct_top_k'] / sums['count']) == pytest.approx(float(top5.result()))
  assert 0.2 < accuracy < float(top5.result()) < 1  # the three numbers are not trivially equal


def test_padding_does_not_count():
  logits = RNG.normal(0, 3, (6, 3)).astype(np.float32)
  mask = np.array([1, 1, 1, 1, 0, 0], bool)
  sums = Objective(3, sigmoid=False).metric_sums(logits, batch_of([0, 1, 2, 0, 1, 1], mask))
  real = Objective(3, sigmoid=False).metric_sums(logits[:4], batch_of([0, 1, 2, 0]))
  assert float(sums['count']) == 4 and float(sums['loss']) == pytest.approx(float(real['loss']))


@pytest.mark.parametrize('sigmoid', [True, False])
def test_label_smoothing_changes_the_loss_as_keras(sigmoid):
  classes = 2 if sigmoid else 5
  labels = RNG.integers(0, classes, 32)
  logits = RNG.normal(0, 3, (32, 1 if sigmoid else classes)).astype(np.float32)
  if sigmoid:  # confident and mostly right: smoothing costs
    logits[:, 0] += 5 * (2 * labels - 1)
  else:
    logits[np.arange(32), labels] += 5
  k = keras()
  if sigmoid:
    expected = k.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2)(
        labels[:, None].astype(np.float32), logits)
  else:
    expected = k.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)(
        np.eye(classes)[labels], logits)
  smoothed, _ = mean_loss(Objective(classes, sigmoid, label_smoothing=0.2), logits, labels)
  plain, _ = mean_loss(Objective(classes, sigmoid), logits, labels)
  assert smoothed == pytest.approx(float(expected), abs=1e-5)
  assert abs(smoothed - plain) > 0.05


@pytest.mark.parametrize('sigmoid', [True, False])
def test_class_weights_weigh_the_training_loss_as_keras_fit(sigmoid):
  """Keras `fit(class_weight=...)` on a model whose output is its input (so the logits are the
  same): its reported loss is our weighted training loss; evaluation stays unweighted."""
  classes = 2 if sigmoid else 4
  width = 1 if sigmoid else classes
  logits = RNG.normal(0, 2, (40, width)).astype(np.float32)
  labels = RNG.integers(0, classes, 40)
  weights = (0.5, 3.0) if sigmoid else (1.0, 0.25, 4.0, 2.0)
  k = keras()
  model = k.Sequential([k.Input((width,)),
                        k.layers.Dense(width, use_bias=False, kernel_initializer='identity')])
  loss = (k.losses.BinaryCrossentropy(from_logits=True) if sigmoid
          else k.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.compile(optimizer=k.optimizers.SGD(0.0), loss=loss)
  history = model.fit(logits, labels.astype(np.float32)[:, None] if sigmoid else labels,
                      class_weight=dict(enumerate(weights)), batch_size=40, epochs=1,
                      shuffle=False, verbose=0)
  objective = Objective(classes, sigmoid, class_weights=weights)
  weighted, _ = mean_loss(objective, logits, labels, weighted=True)
  unweighted, _ = mean_loss(objective, logits, labels)
  assert weighted == pytest.approx(history.history['loss'][0], abs=1e-5)
  assert unweighted == pytest.approx(float(loss(labels[:, None] if sigmoid else labels, logits)),
                                     abs=1e-5)
  assert abs(weighted - unweighted) > 0.05


def test_balanced_class_weights_are_scikit_learns():
  from sklearn.utils.class_weight import compute_class_weight
  counts = (50, 10, 240)
  labels = np.repeat(np.arange(3), counts)
  expected = compute_class_weight('balanced', classes=np.arange(3), y=labels)
  np.testing.assert_allclose(objectives.class_weights('balanced', counts), expected, rtol=1e-12)
  assert objectives.class_weights('2,1,0.5', counts) == (2.0, 1.0, 0.5)
  assert objectives.class_weights('', counts) is None
  for bad, message in (('1,2', '2 weights given for 3 classes'), ('1,-1,1', 'positive'),
                       ('heavy', "comma-separated numbers")):
    with pytest.raises(ValueError, match=message):
      objectives.class_weights(bad, counts)


def test_head_width_and_loss_follow_the_class_count():
  from configs import cats_dogs
  from tlflax.train import check_config, make_objective
  config = cats_dogs.get_config()
  assert make_objective(config, ['cat', 'dog']) == Objective(2, sigmoid=True)
  assert make_objective(config, list('abcde')).outputs == 5
  config.model.head = 'softmax'
  assert make_objective(config, ['cat', 'dog']).outputs == 2
  config.model.head = 'sigmoid'
  with pytest.raises(ConfigError, match="model.head: 'sigmoid' is a head for two classes"):
    make_objective(config, list('abcde'))
  config = cats_dogs.get_config()
  config.loss.class_weights = '1,2'
  with pytest.raises(ConfigError, match=r'loss.class_weights .* 2 weights given for 5 classes'):
    make_objective(config, list('abcde'), (3,) * 5)
  for key, value, message in (('model.head', 'linear', 'model.head'),
                              ('loss.label_smoothing', 1.0, 'label_smoothing'),
                              ('loss.class_weights', 'x', 'loss.class_weights')):
    config = cats_dogs.get_config()
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ConfigError, match=message):
      check_config(config)
  model = Classifier(backbone_args={'alpha': 0.35}, outputs=5)
  variables = init_variables(model, 32, jax.random.key(0), 'none')
  assert variables['params']['head']['kernel'].shape == (1280, 5)
  assert model.apply(variables, np.zeros((3, 32, 32, 3), np.float32)).shape == (3, 5)


def test_carving_is_stratified_disjoint_and_seeded():
  labels = np.repeat(np.arange(3), (50, 20, 30))
  parts = carving.carve({'train': labels}, seed=0)
  assert {name: parent for name, (parent, _) in parts.items()} == {
      'train': 'train', 'validation': 'train', 'test': 'train'}
  indices = [parts[s][1] for s in carving.SPLITS]
  assert sorted(np.concatenate(indices).tolist()) == list(range(100))  # disjoint, complete
  for name, fraction in (('validation', 0.1), ('test', 0.1)):
    counts = np.bincount(labels[parts[name][1]], minlength=3)
    np.testing.assert_allclose(counts, fraction * np.array([50, 20, 30]), atol=1)
  again = carving.carve({'train': labels}, seed=0)
  other = carving.carve({'train': labels}, seed=1)
  assert all(np.array_equal(parts[s][1], again[s][1]) for s in carving.SPLITS)
  assert not np.array_equal(parts['validation'][1], other['validation'][1])
  with_test = carving.carve({'train': labels, 'test': labels[:10]}, seed=0)
  assert with_test['test'] == ('test', pytest.approx(np.arange(10)))
  assert len(with_test['validation'][1]) == 10
  no_test = carving.carve({'train': labels, 'validation': labels}, seed=0)
  assert len(no_test['train'][1]) == 100 and len(no_test['test'][1]) == 20


@pytest.fixture
def mock_tf_flowers():
  """`tf_flowers` with 200 examples of random classes in its one `train` split."""
  with fake_tfds.mock({'train': np.random.default_rng(0).integers(0, 5, 200)}):
    yield


def split_contents(splits):
  return {name: [bytes(x['image']) for x in source.dataset.as_numpy_iterator()]
          for name, source in splits.items()}


def test_tf_flowers_splits_are_carved_out_of_train_by_seed(mock_tf_flowers):
  splits = tfds_splits('tf_flowers', 'auto', seed=0)
  assert splits['train'].class_names == ('dandelion', 'daisy', 'tulips', 'sunflowers', 'roses')
  sizes = {name: source.num_examples for name, source in splits.items()}
  assert sum(sizes.values()) == 200 and 17 <= sizes['validation'] <= 23
  contents = split_contents(splits)
  assert {name: len(images) for name, images in contents.items()} == sizes
  everything = [image for images in contents.values() for image in images]
  assert len(set(everything)) == 200  # disjoint, and together the whole train split
  for source in splits.values():
    labels = [int(x['label']) for x in source.dataset.as_numpy_iterator()]
    assert tuple(np.bincount(labels, minlength=5)) == source.class_counts
  whole = sum(np.array(source.class_counts) for source in splits.values())
  for held in ('validation', 'test'):  # 10% of each class, rounded
    np.testing.assert_allclose(splits[held].class_counts, 0.1 * whole, atol=1)
  assert split_contents(tfds_splits('tf_flowers', 'auto', seed=0)) == contents
  assert split_contents(tfds_splits('tf_flowers', 'auto', seed=1))['test'] != contents['test']
  # an example's name (as evaluation reports name mistakes) is the TFDS slice that reads it
  for name in ('train', 'test'):
    for index in (0, sizes[name] - 1):
      where = splits[name].locate(index)
      assert where.startswith('TFDS tf_flowers train[')
      alone = tfds.builder('tf_flowers').as_dataset(split=where.split()[-1])
      assert [bytes(x['image']) for x in alone.as_numpy_iterator()] == [contents[name][index]]


def test_a_tfds_dataset_without_train_split_is_refused():
  with fake_tfds.mock({'test': [0] * 10}), pytest.raises(DataError, match="no 'train' split"):
    tfds_splits('tf_flowers', 'auto')


def test_feature_names_come_from_the_dataset_info():
  with tfds.testing.mock_data(num_examples=4):
    info = tfds.builder('smallnorb').info  # two images, five class labels
  assert feature_names('smallnorb', info.features, info.supervised_keys) == (
      'image', 'label_category')
  assert feature_names('smallnorb', info.features, None, 'image2', 'instance') == (
      'image2', 'instance')
  with pytest.raises(DataError, match=r"set data.image_feature to one of its Image features "
                                      r"\['image', 'image2'\]"):
    feature_names('smallnorb', info.features, None)
  with pytest.raises(DataError, match="no ClassLabel feature 'label'"):
    feature_names('smallnorb', info.features, None, 'image', 'label')


def source_with(counts):
  return Source(None, sum(counts), tuple('abc'[:len(counts)]), tuple(counts))


def test_class_counts_are_logged_and_checked(caplog):
  caplog.set_level(logging.INFO)
  splits = {'train': source_with((60, 10, 20)), 'validation': source_with((5, 0, 5)),
            'test': source_with((3, 3, 3))}
  check_class_counts(splits)
  text = caplog.text
  assert 'train split: 90 examples; per class: a 60, b 10, c 20' in text
  assert "class 'a' has 60 examples, 'b' only 10 (6.0x)" in text
  assert "validation split has no examples of ['b']" in text
  caplog.clear()
  check_class_counts({**splits, 'train': source_with((50, 10, 20))})  # 5x: no warning
  assert 'Imbalanced' not in caplog.text
  with pytest.raises(DataError, match=r"classes \['b'\] have no training examples"):
    check_class_counts({**splits, 'train': source_with((50, 0, 20))})
  with pytest.raises(DataError, match='at least two'):
    check_class_counts({name: source_with((5,)) for name in splits})


def test_per_class_report_counts_by_hand():
  names = ['a', 'b', 'c']
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
  predicted = np.array([0, 0, 1, 1, 2, 2, 2, 0, 2, 0])
  confidence = np.linspace(0.5, 0.9, 10)
  logits = np.full((10, 3), -5.0, np.float32)
  logits[np.arange(10), predicted] = 5 * confidence
  report = per_class_report(Objective(3, sigmoid=False), logits, labels, names)
  matrix = np.zeros((3, 3), int)
  for true, guess in zip(labels, predicted):
    matrix[true, guess] += 1
  assert report['confusion_matrix'] == matrix.tolist()
  assert report['accuracy'] == pytest.approx(7 / 10)
  a = report['per_class']['a']  # 3 of 4 a's found; 3 of 4 "a" verdicts right
  assert (a['precision'], a['recall'], a['support']) == (pytest.approx(3 / 4),
                                                         pytest.approx(3 / 4), 4)
  b = report['per_class']['b']  # 1 of 2 b's found; 1 of 2 "b" verdicts right
  assert b['f1'] == pytest.approx(0.5)
  assert report['macro_average']['recall'] == pytest.approx((3 / 4 + 1 / 2 + 3 / 4) / 3)
  mistakes = report['most_confident_mistakes']
  assert [m['index'] for m in mistakes] == [7, 4, 2]  # the most confident first
  assert mistakes[0] == {'index': 7, 'true': 'c', 'predicted': 'a',
                         'probability': pytest.approx(mistakes[0]['probability'])}
  assert 'top5_accuracy' not in report
  table = format_report(report, 'test').splitlines()[1:]  # the header, a, b, c, macro avg
  assert table[-1].startswith('macro avg ')
  assert len({len(line) for line in table}) == 1  # right-aligned columns under their titles


SIX_COLOURS = {'black': (20, 20, 20), 'blue': (40, 40, 220), 'green': (40, 200, 40),
               'red': (220, 40, 40), 'white': (235, 235, 235), 'yellow': (220, 220, 40)}


def test_six_classes_end_to_end(tiny_run, tmp_path):
  """A 6-class folder trains a 6-logit softmax head, and the run writes per-class evaluations
  (JSON, confusion matrix, mistakes) whose counts match the splits, top-5 accuracy, and top-5
  predictions; the label smoothing set in the config is the one the reports' losses use."""
  from runs import make_synthetic_folder
  from tlflax.predict import predict
  from tlflax.train import evaluate_checkpoint, train_and_evaluate
  folder = make_synthetic_folder(tmp_path / 'images', per_class=8, classes=SIX_COLOURS)
  config = tiny_run.copy_and_resolve_references()
  config.data.folder = str(folder)
  config.loss.label_smoothing = 0.1
  config.phases.feature_extraction.learning_rate = 1e-2
  workdir = tmp_path / 'run'
  result = train_and_evaluate(config, workdir)
  assert result.variables['params']['head']['kernel'].shape[-1] == 6
  names = sorted(SIX_COLOURS)
  for split, size in (('validation', 24), ('test', 24)):
    report = json.loads((workdir / 'evaluation' / f'{split}.json').read_text())
    assert report['class_names'] == names and report['count'] == size
    assert np.sum(report['confusion_matrix']) == size
    assert [row['support'] for row in report['per_class'].values()] == [4] * 6
    assert 0 <= report['accuracy'] <= report['top5_accuracy'] <= 1
    for figure in ('confusion', 'mistakes'):
      assert Image.open(workdir / 'evaluation' / f'{split}_{figure}.png').size[0] > 300
  assert json.loads((workdir / 'test_metrics.json').read_text())['top5_accuracy'] == (
      report['top5_accuracy'])
  assert 'val_top5_accuracy' in result.history['epochs'][-1]

  # the reports' loss is the smoothed cross-entropy of the final model's logits, computed here
  # (on the images as the data kept in memory holds them: resized, then rounded to uint8)
  model = Classifier(backbone_args={'alpha': 0.35}, outputs=6)
  images, labels = [], []
  for label, name in enumerate(names):
    for path in sorted((folder / 'test' / name).iterdir()):
      resized = tf.image.resize(tf.io.decode_jpeg(path.read_bytes()), (32, 32))
      images.append(tf.round(resized) / 127.5 - 1)
      labels.append(label)
  logits = model.apply(result.variables, np.stack(images))
  smoothed = Objective(6, sigmoid=False, label_smoothing=0.1).losses(logits, np.array(labels))
  plain = Objective(6, sigmoid=False).losses(logits, np.array(labels))
  assert report['loss'] == pytest.approx(float(np.mean(smoothed)), rel=1e-5)
  assert abs(float(np.mean(plain)) - report['loss']) > 1e-3
  assert evaluate_checkpoint(config, workdir)['confusion_matrix'] == report['confusion_matrix']

  rows = list(predict(config, workdir, str(folder / 'test')))
  assert len(rows) == 24 and all(len(top) == 5 for *_, top in rows)
  assert all(top[0] == (label, p) and p >= top[1][1] >= top[4][1] for _, label, p, top in rows)
  header = (workdir / 'predictions_checkpoint_latest.csv').read_text().splitlines()[0].split(',')
  assert header[:3] == ['path', 'label', 'probability'] and header[-1] == 'probability_5'

  code, output = run_main(workdir, [f'--config.{k}={v}' for k, v in {
      **TINY, 'data.folder': folder, 'model.weights': config.model.weights,
      'loss.label_smoothing': 0.1, 'phases.feature_extraction.learning_rate': 0.01}.items()],
      '--mode=evaluate', '--split=validation')
  assert code == 0, output
  assert 'validation top5 accuracy' in output and output.count('\n') > 8
  assert all(name in output for name in names)


def test_flowers_recipe_on_real_weights_and_photos_reaches_80_percent(real_flowers_run):
  """configs/flowers.py:local,cached: 5 classes of real photos (500 training, 100 validation),
  ImageNet weights, 10+10 epochs on cached activations. Keras, augmented, on the same weights and
  photos: 0.832."""
  _, workdir, result = real_flowers_run
  history = result.history
  assert history['epochs'][-1]['val_accuracy'] >= 0.80
  report = json.loads((workdir / 'evaluation' / 'validation.json').read_text())
  assert report['count'] == 100 and np.sum(report['confusion_matrix']) == 100
  assert report['accuracy'] == pytest.approx(history['epochs'][-1]['val_accuracy'])
  assert list(report['per_class']) == ['daisy', 'dandelion', 'roses', 'sunflowers', 'tulips']
  mistakes = report['most_confident_mistakes']
  assert mistakes and all(Path(m['example']).is_file() and Path(m['example']).parent.name ==
                          m['true'] for m in mistakes)  # a person can open each


def test_class_weights_reach_the_train_step(tiny_run, tmp_path):
  """`loss.class_weights` becomes the run's objective, whose weighted loss the train step reports
  and differentiates (a weight of 3 on 'cat' moves the parameters differently from none)."""
  from tlflax import optim, param_groups
  from tlflax.config import phase
  from tlflax.classifier import backbone_layers
  from tlflax.steps import TrainState, make_train_step
  from tlflax.train import Run
  config = tiny_run.copy_and_resolve_references()
  config.loss.class_weights = '3,1'
  run = Run.create(config, tmp_path / 'run', allow_config_change=False)
  run.tracker.close()
  assert run.objective == Objective(2, sigmoid=True, class_weights=(3.0, 1.0))
  variables = init_variables(run.model, 32, jax.random.key(0), config.model.weights)
  groups = param_groups.param_groups(variables['params'], backbone_layers(run.model), None)
  batch = {'image': RNG.uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32),
           'label': np.array([0, 1, 0, 1], np.int32), 'mask': np.ones(4, bool)}
  results = {}
  before = np.array(variables['params']['head']['kernel'])
  for objective in (run.objective, Objective(2, sigmoid=True)):
    tx = optim.make_optimizer(phase(1, 'sgd', 0.1), groups, steps_per_epoch=1)
    state, metrics = make_train_step(run.model.apply, tx, groups, objective, jax.random.key(1))(
        TrainState.create(jax.tree.map(np.array, variables), tx), batch)
    results[objective.class_weights] = (float(metrics['loss']),
                                         np.asarray(state.params['head']['kernel']) - before)
  logits = run.model.apply(variables, batch['image'], train=True,
                           rngs={'dropout': jax.random.fold_in(jax.random.key(1), 0)})
  losses = np.asarray(run.objective.losses(logits, batch['label']))
  assert results[(3.0, 1.0)][0] == pytest.approx(float(np.sum(losses * [3, 1, 3, 1])), rel=1e-4)
  assert results[None][0] == pytest.approx(float(np.sum(losses)), rel=1e-4)
  weighted_update, plain_update = results[(3.0, 1.0)][1], results[None][1]
  assert np.abs(weighted_update - plain_update).max() > 0.1 * np.abs(plain_update).max()
  config.loss.class_weights = 'balanced'  # the tiny data has 12 images of each class
  assert Run.create(config, tmp_path / 'run2', False).objective.class_weights == (1.0, 1.0)


def labelled_tf_flowers(train_labels, test_labels):
  """`tf_flowers` with a `train` and a `test` split holding these labels."""
  return fake_tfds.mock({'train': train_labels, 'test': test_labels})


def test_tfds_labels_are_checked_and_unlabelled_splits_replaced():
  """A test split of -1 labels (TFDS's unlabelled) is carved out of train instead under 'auto';
  'original' would ignore the dataset's own test split and stops; a label outside the classes
  stops naming the split."""
  train = [i % 5 for i in range(50)]
  with labelled_tf_flowers(train, [-1] * 10):
    splits = tfds_splits('tf_flowers', 'auto')
    assert {name: s.num_examples for name, s in splits.items()} == {
        'train': 40, 'validation': 5, 'test': 5}
    assert splits['test'].class_counts == (1,) * 5
    with pytest.raises(DataError, match=r"its own \['test'\] split\(s\)"):
      tfds_splits('tf_flowers', 'original')
  with labelled_tf_flowers(train[:-1] + [-1], [0, 1] * 5):
    with pytest.raises(DataError, match=r'train split has 1 labels outside 0..4 \(e.g. -1'):
      tfds_splits('tf_flowers', 'auto')
