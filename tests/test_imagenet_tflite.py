"""Real ImageNet weights, ported from the shared int8 TFLite MobileNetV2, classify real photos."""
import jax
import numpy as np
import pytest

from tlflax import backbones
from tlflax.weights import load_pretrained
from tlflax.weights.tflite import read_tflite

pytestmark = pytest.mark.usefixtures('float32_matmuls')

MOBILENET_V2 = backbones.get('mobilenet_v2')
EGYPTIAN_CAT, TABBY, TIGER_CAT, MILITARY_UNIFORM = 285, 281, 282, 652


@pytest.fixture(scope='module')
def imagenet_variables(tflite_path):
  return load_pretrained(str(tflite_path), include_top=True)


@pytest.fixture(scope='module')
def interpreter(tflite_path):
  import tensorflow as tf
  interpreter = tf.lite.Interpreter(model_path=str(tflite_path))
  interpreter.allocate_tensors()
  return interpreter


def photo_uint8(shared_dir, name):
  """The photo resized to 224x224 by TensorFlow's antialiased bilinear resize, as uint8.

  The int8 model's probabilities differ from the float model's by up to a few hundredths, and how
  much depends on resampling: with this resize the top-5 sets agree within 0.054 on both photos
  (PIL's bilinear gives 0.063 on grace_hopper's top class; nearest-neighbour changes the 5th class).
  """
  import tensorflow as tf
  from PIL import Image
  image = np.asarray(Image.open(shared_dir / 'data' / 'imagenet_samples' / name).convert('RGB'))
  resized = tf.image.resize(image, (224, 224), method='bilinear', antialias=True).numpy()
  return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def interpreter_probabilities(interpreter, image_uint8):
  input_detail = interpreter.get_input_details()[0]
  output_detail = interpreter.get_output_details()[0]
  interpreter.set_tensor(input_detail['index'], image_uint8[None])
  interpreter.invoke()
  scale, zero_point = output_detail['quantization']
  quantized = interpreter.get_tensor(output_detail['index'])[0].astype(np.float32)
  return (quantized - zero_point) * scale


def flax_probabilities(variables, interpreter, image_uint8):
  """The float model sees exactly the pixels the int8 model sees, dequantized."""
  scale, zero_point = interpreter.get_input_details()[0]['quantization']
  images = (image_uint8[None].astype(np.float32) - zero_point) * scale
  network = backbones.network(MOBILENET_V2, include_top=True)
  probabilities = np.asarray(jax.jit(network.apply)(variables, images))[0]
  return np.concatenate([[0.0], probabilities])  # TFLite indexing: 0 is background


@pytest.mark.parametrize('photo,expected_top', [
    ('cat.bmp', [EGYPTIAN_CAT, TABBY, TIGER_CAT]),
    ('grace_hopper.bmp', [MILITARY_UNIFORM])])
def test_ported_weights_classify_like_the_int8_interpreter(shared_dir, imagenet_variables,
                                                           interpreter, photo, expected_top):
  labels = (shared_dir / 'data' / 'imagenet_samples' / 'imagenet_labels.txt').read_text()
  labels = labels.splitlines()[1:]  # Keras class i is line i + 1
  image = photo_uint8(shared_dir, photo)
  ours = flax_probabilities(imagenet_variables, interpreter, image)[1:]
  top = list(np.argsort(-ours)[:5])
  assert top[:len(expected_top)] == expected_top, [labels[i] for i in top]
  assert 'Egyptian cat' in labels[EGYPTIAN_CAT] and 'military uniform' in labels[MILITARY_UNIFORM]

  reference = interpreter_probabilities(interpreter, image)[1:]
  reference_top = list(np.argsort(-reference)[:5])
  assert set(top) == set(reference_top)
  np.testing.assert_allclose(ours[reference_top], reference[reference_top], atol=0.06)


@pytest.mark.parametrize('size,include_top', [(160, False), (224, True)])
def test_real_weights_match_keras_in_float32(tflite_path, size, include_top):
  """The same real weights set into Keras layers give Keras's outputs within 1e-4."""
  import keras
  keras_model = keras.applications.MobileNetV2(
      input_shape=(size, size, 3), include_top=include_top, weights=None,
      classifier_activation=None, pooling=None if include_top else 'avg')
  table = backbones.table(MOBILENET_V2, include_top=True)
  for name, arrays in read_tflite(str(tflite_path), table).items():
    if include_top or name != 'predictions':
      keras_model.get_layer(name).set_weights(arrays)
  variables = load_pretrained(str(tflite_path), include_top=include_top, input_size=size)
  images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  model = backbones.network(MOBILENET_V2, include_top=include_top, classifier_activation=None)
  np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(variables, images)),
                             keras_model(images, training=False).numpy(), atol=1e-4, rtol=0)


def test_tflite_for_another_alpha_fails_naming_the_layer(tflite_path):
  with pytest.raises(ValueError, match='Conv1 .*another width'):
    load_pretrained(str(tflite_path), backbone_args={'alpha': 0.5})
