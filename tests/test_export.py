"""Export (`--mode=export`): SavedModel, Keras and TFLite files that give tlflax's probabilities."""
import collections
import json
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from html_pages import Page
from keras_reference import random_keras_model
from runs import ROOT, run_main
from tlflax import backbones, calibration, parallel
from tlflax.classifier import Classifier, init_variables
from tlflax.data import transforms
from tlflax.errors import ConfigError, ExportError
from tlflax.export import exporter, keras_model, saved_model
from tlflax.export.tflite import TFLiteClassifier
from tlflax.objectives import Objective
from tlflax.predict import predict, predict_exported
from tlflax.run_parts import restore_for_inference
from tlflax.weights.convert import to_flax_variables, to_keras_weights
from tlflax.backbones.preprocessing import UNIT_RANGE

pytestmark = pytest.mark.usefixtures('float32_matmuls')


def uint8_images(paths, size):
  """The photos decoded and resized as the pipeline does, rounded to what exported models take."""
  return np.stack([transforms.exported_model_input(tf.io.read_file(str(p)), size).numpy()
                   for p in paths])


def tlflax_probabilities(model, variables, objective, images):
  """The trained model's own forward (the training platform's depthwise) on uint8 images."""
  scaled = UNIT_RANGE(np.asarray(images, np.float32))
  return np.asarray(objective.probabilities(jax.jit(model.apply)(variables, scaled)))


def tflite_operators(path) -> collections.Counter:
  """(operator, type of its first input) -> count, over a TFLite file's graph."""
  import tflite
  model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
  names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith('_')}
  types = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith('_')}
  graph = model.Subgraphs(0)
  operators = collections.Counter()
  for i in range(graph.OperatorsLength()):
    operator = graph.Operators(i)
    code = model.OperatorCodes(operator.OpcodeIndex())
    name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
    operators[name, types[graph.Tensors(operator.Inputs(0)).Type()]] += 1
  return operators


def test_keras_weights_are_the_inverse_of_the_port():
  keras_net = random_keras_model('mobilenet_v2', {'alpha': 0.35}, include_top=True, size=32)
  weights = {layer.name: [np.asarray(w) for w in layer.get_weights()]
             for layer in keras_net.layers if layer.weights}
  layers = backbones.table(backbones.get('mobilenet_v2'), {'alpha': 0.35}, include_top=True)
  back = to_keras_weights(to_flax_variables(weights, 'test', layers), layers)
  assert back.keys() == weights.keys()
  for name, arrays in weights.items():
    assert len(back[name]) == len(arrays)
    for got, want in zip(back[name], arrays):
      np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize('classes, sigmoid', [(2, True), (3, False)])
def test_keras_classifier_gives_tlflax_probabilities(classes, sigmoid, tmp_path):
  """Calibrated random backbone, a random head: the Keras model (uint8 in, preprocessing inside)
  and the jax2tf SavedModel equal the Flax classifier's probabilities."""
  from keras_reference import write_published_h5
  weights = tmp_path / 'backbone.h5'
  write_published_h5(weights, random_keras_model('mobilenet_v2', {'alpha': 0.35}, False, 32))
  objective = Objective(classes, sigmoid)
  model = Classifier(backbone_args={'alpha': 0.35}, outputs=objective.outputs)
  variables = init_variables(model, 32, jax.random.key(1), str(weights))
  variables['params']['head']['kernel'] = variables['params']['head']['kernel'] * 5
  images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  expected = tlflax_probabilities(model, variables, objective, images)
  assert expected.shape == (6, classes) and expected.max(1).min() < 0.99  # not saturated
  assert np.ptp(expected[:, 0]) > 0.05  # the images are told apart
  keras_net = keras_model.keras_classifier(model, variables, 32, classes, sigmoid)
  np.testing.assert_allclose(keras_net.predict(images, verbose=0), expected, atol=1e-4)
  saved_model.save(saved_model.serving_function(model, variables, objective),
                   tmp_path / 'saved', 32)
  served = saved_model.load(tmp_path / 'saved')
  np.testing.assert_allclose(served(images), expected, atol=1e-4)
  np.testing.assert_allclose(served(images[:1]), expected[:1], atol=1e-4)  # any batch size


@pytest.mark.parametrize('backbone', ['resnet50', 'efficientnet_b0'])
def test_other_backbones_export_with_the_same_probabilities(backbone, tmp_path):
  """ResNet50 (caffe preprocessing: BGR and the mean, as a fixed 1x1 convolution in Keras) and
  EfficientNet-B0 (preprocessing and Normalization inside the network): the Keras model built
  from their own Keras application, its TFLite file and the jax2tf SavedModel give tlflax's
  probabilities on uint8 images."""
  from keras_reference import write_published_h5
  from tlflax.export import tflite
  weights = tmp_path / 'backbone.h5'
  write_published_h5(weights, random_keras_model(backbone, {}, False, 32))
  objective = Objective(3, sigmoid=False)
  model = Classifier(backbone, outputs=objective.outputs)
  variables = init_variables(model, 32, jax.random.key(1), str(weights))
  images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  preprocessed = model.spec.preprocessing(images.astype(np.float32))
  features = model.apply(variables, preprocessed, method=lambda m, x: m.features(x))
  head = variables['params']['head']  # logits of about unit size: probabilities not saturated
  head['kernel'] = head['kernel'] / (np.std(features) * np.sqrt(features.shape[-1]))
  expected = np.asarray(objective.probabilities(jax.jit(model.apply)(variables, preprocessed)))
  assert np.ptp(expected[:, 0]) > 1e-3 and expected.max() < 0.99  # told apart, not saturated
  keras_net = keras_model.keras_classifier(model, variables, 32, 3, sigmoid=False)
  np.testing.assert_allclose(keras_net.predict(images, verbose=0), expected, atol=1e-4)
  tflite.save(keras_net, tmp_path / 'model.tflite')
  np.testing.assert_allclose(TFLiteClassifier(tmp_path / 'model.tflite')(images), expected,
                             atol=1e-4)
  saved_model.save(saved_model.serving_function(model, variables, objective),
                   tmp_path / 'saved', 32)
  np.testing.assert_allclose(saved_model.load(tmp_path / 'saved')(images), expected, atol=1e-4)


def top_two_margin(probabilities: np.ndarray) -> np.ndarray:
  """How far each row's top class is ahead of its second."""
  ranked = np.sort(probabilities, axis=1)
  return ranked[:, -1] - ranked[:, -2]


def check_int8(probabilities, expected, labels, min_agreement: float, near_tie: float):
  """The int8 model's classes: at least `min_agreement` of the checkpoint's, and different only
  where the checkpoint's top two classes are within `near_tie`; its accuracy at most 1 point
  below the checkpoint's (above is fine: the changes are near-ties either way)."""
  flips = probabilities.argmax(1) != expected.argmax(1)
  assert 1 - flips.mean() >= min_agreement, f'{flips.sum()} of {len(flips)} classes differ'
  assert np.all(top_two_margin(expected)[flips] < near_tie), top_two_margin(expected)[flips]
  accuracy, float_accuracy = (np.mean(p.argmax(1) == labels) for p in (probabilities, expected))
  assert accuracy >= float_accuracy - 0.01, (accuracy, float_accuracy)


# The first layer whose kernel phase 2 (fine_tune_at=100) trains, from which int8 keeps the network
# float: Keras layer 100 is block_11_expand_relu, so block 11's expand convolution (98) is frozen.
FIRST_FINE_TUNED = 'block_11_depthwise'


def test_int8_keeps_float32_from_the_first_layer_whose_kernel_trained():
  """The tutorial from block 11's depthwise; BatchNorm alone (folded per channel into int8
  kernels and int32 biases, so int8 keeps it) or no backbone training: from the head;
  discriminative rates on every layer: from the stem."""
  from configs import bn_only, cats_dogs, discriminative
  model = Classifier(backbone_args={'alpha': 0.35})
  assert exporter.fine_tuned_from(cats_dogs.get_config(), model) == FIRST_FINE_TUNED
  assert exporter.fine_tuned_from(bn_only.get_config(), model) == keras_model.HEAD_NAME
  assert exporter.fine_tuned_from(discriminative.get_config(), model) == 'Conv1'
  head_only = cats_dogs.get_config()
  head_only.phases.fine_tune.epochs = 0
  assert exporter.fine_tuned_from(head_only, model) == keras_model.HEAD_NAME


def test_export_of_the_real_run_gives_its_probabilities_on_400_photos(real_cats_dogs_run,
                                                                      shared_dir, tmp_path):
  """docs/deploy.md's Deploy commands on the trained 2+2-epoch run: the int8 TFLite model (float32
  from the first fine-tuned layer up) with tlflax's top-1 class on at least 98.5% of the 400 real
  validation photos (99.5% measured) and on every one whose top two classes are 0.3 or more
  apart (the changed classes' margins measured: 0.10 and 0.22), and its accuracy at most 1 point
  below; every float model within 1e-4 of tlflax on 100 of them (the Keras file reloaded in a
  fresh process); predict --model within 0.05 of the checkpoint on all 400 (the images rounded to
  uint8; 0.0225 measured). The exported probabilities and predict's are the calibrated ones."""
  config, workdir, _ = real_cats_dogs_run
  code, output = run_main(workdir, [f'--config.data.folder={config.data.folder}',
                                    f'--config.model.weights={config.model.weights}'],
                          '--mode=export', '--quantize=int8',
                          config_file=f'{ROOT / "configs" / "cats_dogs.py"}:local,cached')
  assert code == 0, output[-3000:]
  folder = workdir / 'export'
  assert 'model_int8.tflite' in output
  assert 'fully_quantize' not in output and 'Assets written' not in output  # the converter's
  record = json.loads((folder / 'export.json').read_text())
  assert record['classes'] == ['cat', 'dog'] == (folder / 'labels.txt').read_text().split()
  assert record['source']['epoch'] == 4 and record['input']['dtype'] == 'uint8'
  assert record['input']['shape'] == [None, 160, 160, 3]
  assert set(record['files']) == {'saved_model', 'keras', 'tflite', 'tflite_int8'}
  assert record['quantize'] == 'int8' and record['int8_calibration_images'] == 200
  assert record['int8_float_from'] == FIRST_FINE_TUNED
  exported = {row['kind'].text: row for row in Page(workdir / 'report.html').tables[
      'export-files']}  # the run page shows the files and their checks
  assert set(exported) == set(record['files'])
  for kind, row in exported.items():
    assert row['file'].href == f"export/{record['files'][kind]}"
    for key in ('max_abs_difference', 'top1_agreement', 'images'):
      assert float(row[key].value) == record['checks'][kind][key]

  validation = shared_dir / 'data' / 'cats_vs_dogs_mini' / 'validation'
  photos = [path for name in ('cat', 'dog') for path in sorted((validation / name).glob('*.jpg'))]
  images = uint8_images(photos, 160)
  labels = np.repeat([0, 1], 200)
  trained = restore_for_inference(config, workdir, parallel.data_mesh())
  # the exports hold the calibration the run fitted (its temperature divides the logits)
  assert record['temperature'] == calibration.stored(workdir, 'epoch 4')['temperature'] != 1
  expected = tlflax_probabilities(trained.model, calibration.scaled_head(
      trained.variables, record['temperature']), trained.objective, images)
  assert len(photos) == 400 and np.mean(expected.argmax(1) == labels) >= 0.95
  check_int8(TFLiteClassifier(folder / 'model_int8.tflite')(images), expected, labels,
             min_agreement=0.985, near_tie=0.3)
  # the float models on 100 of them, 50 per class (the SavedModel is slow on CPUs)
  some_images, some_expected = images[np.r_[:50, 200:250]], expected[np.r_[:50, 200:250]]
  np.save(tmp_path / 'images.npy', some_images)
  fresh = subprocess.run(
      [sys.executable, '-c', 'import sys, numpy as np, keras; '
       'model = keras.models.load_model(sys.argv[1]); '
       'np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))',
       str(folder / 'model.keras'), str(tmp_path / 'images.npy'), str(tmp_path / 'keras.npy')],
      capture_output=True, text=True, env={'KERAS_BACKEND': 'tensorflow',
                                           'PATH': '/usr/bin:/bin'})
  assert fresh.returncode == 0, fresh.stderr[-2000:]
  outputs = {'keras': np.load(tmp_path / 'keras.npy'),
             'saved_model': saved_model.load(folder / 'saved_model')(some_images),
             'tflite': TFLiteClassifier(folder / 'model.tflite')(some_images)}
  for name, probabilities in outputs.items():
    np.testing.assert_allclose(probabilities, some_expected, atol=1e-4, err_msg=name)

  float_ops, int8_ops = (tflite_operators(folder / name)
                         for name in ('model.tflite', 'model_int8.tflite'))
  assert not {name for name, _ in float_ops + int8_ops} & {'CUSTOM', 'DELEGATE'}  # built-ins
  assert float_ops['CONV_2D', 'FLOAT32'] == 35 and float_ops['DEPTHWISE_CONV_2D', 'FLOAT32'] == 17
  # from block 11's depthwise on float32 (12 convolutions, 6 depthwise, the residual additions
  # of blocks 11, 12, 14 and 15, the head), below it int8 (and the input scaling's addition)
  assert int8_ops['CONV_2D', 'INT8'] == 23 and int8_ops['CONV_2D', 'FLOAT32'] == 12
  assert int8_ops['DEPTHWISE_CONV_2D', 'INT8'] == 11
  assert int8_ops['DEPTHWISE_CONV_2D', 'FLOAT32'] == 6
  assert int8_ops['ADD', 'FLOAT32'] == 4 and int8_ops['ADD', 'INT8'] == 6 + 1
  assert all(int8_ops[op, 'FLOAT32'] == 1 for op in ('MEAN', 'FULLY_CONNECTED', 'SOFTMAX'))
  assert record['checks']['tflite_int8']['images'] == 16

  # predict --model: the rows of the checkpoint's predict, from images rounded to uint8
  from_file = list(predict_exported(folder / 'model.tflite', tmp_path / 'p', str(validation), 32,
                                    50_000_000))
  from_checkpoint = list(predict(config, workdir, str(validation), output=tmp_path / 'c.csv'))
  assert [row[0] for row in from_file] == [row[0] for row in from_checkpoint]
  assert len(from_file) == 400
  same = [(a, b) for a, b in zip(from_file, from_checkpoint) if a[1] == b[1]]
  assert all(b[2] < 0.55 for a, b in zip(from_file, from_checkpoint) if a[1] != b[1])  # ties
  assert max(abs(a[2] - b[2]) for a, b in same) <= 0.05


def test_int8_of_the_flowers_run_keeps_its_accuracy_on_125_photos(real_flowers_run, shared_dir):
  """configs/flowers.py:local,cached (10+10 epochs, 5 classes): the int8 file's accuracy on the
  125 shared validation photos at most 1 point below the checkpoint's, and its class the
  checkpoint's on at least 95% of them (96.8% measured: 4 photos) and on every photo whose top
  two classes are 0.2 or more apart."""
  config, workdir, _ = real_flowers_run
  record = exporter.export(config, workdir, ('tflite',), quantize='int8')
  assert record['int8_float_from'] == FIRST_FINE_TUNED
  names = record['classes']
  validation = shared_dir / 'data' / 'flowers_mini' / 'validation'
  photos = [sorted((validation / name).glob('*.jpg')) for name in names]
  images = uint8_images([path for paths in photos for path in paths], 160)
  labels = np.repeat(np.arange(len(names)), [len(paths) for paths in photos])
  trained = restore_for_inference(config, workdir, parallel.data_mesh())
  expected = tlflax_probabilities(trained.model, trained.variables, trained.objective, images)
  assert len(images) == 125 and np.mean(expected.argmax(1) == labels) >= 0.8
  check_int8(TFLiteClassifier(workdir / 'export' / 'model_int8.tflite')(images), expected, labels,
             min_agreement=0.95, near_tie=0.2)


def test_exports_replace_each_other_and_a_wrong_one_stops(tiny_run, tmp_path, monkeypatch):
  """On the tiny run with a two-way softmax head: a TFLite export, replaced by a Keras one; then
  an export whose Keras head is wrong stops and leaves that one in place."""
  from tlflax.train import train_and_evaluate
  config = tiny_run.copy_and_resolve_references()
  config.phases.fine_tune.epochs = 0
  config.model.head = 'softmax'
  workdir = tmp_path / 'run'
  train_and_evaluate(config, workdir)
  first = exporter.export(config, workdir, ('tflite',))
  assert first['files'] == {'tflite': 'model.tflite'} and first['int8_calibration_images'] == 0
  assert first['checks']['tflite']['max_abs_difference'] <= 1e-4
  # TensorFlow's SavedModel writer sets absl's log level to WARNING: the export puts it back, so
  # the process's later INFO lines still show
  import logging
  absl_logger = logging.getLogger('absl')
  absl_logger.setLevel(logging.INFO)
  all_formats = exporter.export(config, workdir, exporter.FORMATS, quantize='int8')
  assert absl_logger.level == logging.INFO
  assert all_formats['int8_float_from'] == keras_model.HEAD_NAME  # phase 1 trains the head only
  second = exporter.export(config, workdir, ('keras',))
  assert second['files'] == {'keras': 'model.keras'} and second['checks']['keras']['images'] == 16
  assert sorted(p.name for p in (workdir / 'export').iterdir()) == [
      'export.json', 'labels.txt', 'model.keras']
  written = (workdir / 'export' / 'export.json').read_text()

  right_head = keras_model.probability_head

  def head_with_a_porting_mistake(kernel, bias, sigmoid):
    kernel, bias = right_head(kernel, bias, sigmoid)
    return kernel, bias + np.array([0.0, 0.5], np.float32)
  monkeypatch.setattr(keras_model, 'probability_head', head_with_a_porting_mistake)
  with pytest.raises(ExportError, match='keras gives probabilities .* away from tlflax'):
    exporter.export(config, workdir, ('saved_model', 'keras'))
  assert (workdir / 'export' / 'export.json').read_text() == written
  assert not (workdir / 'export' / 'saved_model').exists()
  assert not (workdir / 'export.partial').exists()
  from tlflax import interrupts

  def interrupted(*args, **kwargs):
    raise interrupts.Interrupted(signal.SIGINT)
  monkeypatch.setattr(exporter.tflite, 'save', interrupted)
  with pytest.raises(interrupts.Interrupted) as raised:
    exporter.export(config, workdir, ('saved_model', 'tflite'))
  assert (raised.value.during, raised.value.outcome) == ('the TFLite export',
                                                         'export/ was not changed')
  assert (workdir / 'export' / 'export.json').read_text() == written
  assert not (workdir / 'export.partial').exists()
  config.image_size = 64
  with pytest.raises(ConfigError, match='trained at image_size=32; the config has 64'):
    exporter.export(config, workdir, ('keras',))


def test_export_and_model_mistakes_are_one_line(tiny_run, tmp_path):
  with pytest.raises(ConfigError, match='onnx; choose from saved_model, tflite, keras'):
    exporter.parse_formats('keras,onnx')
  with pytest.raises(ConfigError, match='add tflite to --formats'):
    exporter.export(tiny_run, tmp_path, ('keras',), quantize='int8')
  (tmp_path / 'model.tflite').write_bytes(b'not a model')
  code, output = run_main(tmp_path, [], '--mode=predict', f'--model={tmp_path}/model.tflite',
                          f'--inputs={tmp_path}', config_file=None)
  assert code == 1 and 'not a readable TFLite model' in output and 'Traceback' not in output
  for flags, message in ((['--model=m.tflite'], '--model is for --mode=predict'),
                         (['--mode=export', '--inputs=x'], '--inputs is for --mode=predict'),
                         (['--mode=predict', '--inputs=x'], '--config is required')):
    code, output = run_main(tmp_path, [], *flags, config_file=None)
    assert code != 0 and message in output and 'Traceback' not in output, output[-2000:]


def test_the_average_exports_calibrated_when_chosen(tiny_run, tmp_path):
  """--checkpoint=ema exports the weights' average with the temperature fitted for it: the TFLite
  model gives the probabilities of the average's logits divided by that temperature (within
  1e-4 of tlflax on training images), and export.json says so; --nocalibrated exports the raw
  head."""
  from tlflax.train import train_and_evaluate
  config = tiny_run.copy_and_resolve_references()
  config.phases.fine_tune.epochs = 0
  config.train.ema_decay = 0.5
  workdir = tmp_path / 'run'
  train_and_evaluate(config, workdir)
  record = exporter.export(config, workdir, ('tflite',), checkpoint='ema')
  assert record['source']['weights'] == 'average'
  assert record['temperature'] == calibration.stored(workdir, 'epoch 1 average')['temperature']
  assert record['checks']['tflite']['max_abs_difference'] <= 1e-4
  trained = restore_for_inference(config, workdir, parallel.data_mesh(), 'ema')
  images = exporter.training_images(config, 8)
  exported = TFLiteClassifier(workdir / 'export' / 'model.tflite')(images)
  expected = tlflax_probabilities(trained.model, calibration.scaled_head(
      trained.variables, record['temperature']), trained.objective, images)
  np.testing.assert_allclose(exported, expected, atol=1e-4)
  raw = tlflax_probabilities(trained.model, trained.variables, trained.objective, images)
  assert np.abs(raw - expected).max() > 1e-3
  assert exporter.export(config, workdir, ('tflite',), checkpoint='ema',
                         calibrated=False)['temperature'] is None
