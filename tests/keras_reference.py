"""Keras application reference models with random weights, and files in the published h5 layout."""
import h5py
import numpy as np

from tlflax import backbones


def keras_application(name: str, args: dict, include_top: bool, size: int,
                      classifier_activation='softmax'):
  """The Keras application of backbone `name` with random weights (Keras's initializers), with
  average pooling without the top, as tlflax's table has it."""
  import keras
  spec = backbones.get(name)
  return spec.keras_application(
      keras, input_shape=(size, size, 3), include_top=include_top, weights=None,
      pooling=None if include_top else 'avg', classifier_activation=classifier_activation,
      **backbones.arguments(spec, args))


def random_keras_model(name: str, args: dict, include_top: bool, size: int, seed: int = 0,
                       classifier_activation='softmax'):
  """`keras_application` with every weight randomized by `seed` so that activations carry signal.

  Keras's initial BatchNorm statistics (mean 0, variance 1), zero biases and ConvNeXt's 1e-6
  layer scales would let outputs ignore porting mistakes. Instead every bias, BatchNorm and
  LayerNorm beta is drawn from U(-0.25, 0.25), every gamma (BatchNorm, LayerNorm, layer scale)
  from U(0.5, 1), Normalization statistics are drawn too, and BatchNorm moving statistics are the
  batch statistics of random images (one pass in training mode with momentum 0), as in a trained
  network.
  """
  import keras
  keras.utils.set_random_seed(seed)  # the same network whichever tests ran before
  model = keras_application(name, args, include_top, size, classifier_activation)
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    for weight in layer.weights:
      short = weight.path.rsplit('/', 1)[-1]
      shape = tuple(weight.shape)
      if short in ('bias', 'beta'):
        weight.assign(rng.uniform(-0.25, 0.25, shape).astype(weight.dtype))
      elif short == 'gamma' or type(layer).__name__ == 'LayerScale':  # its variable is unnamed
        weight.assign(rng.uniform(0.5, 1.0, shape).astype(weight.dtype))
      elif isinstance(layer, keras.layers.Normalization) and short == 'mean':
        weight.assign(rng.uniform(0.3, 0.6, shape).astype(weight.dtype))  # after Rescaling(1/255)
      elif isinstance(layer, keras.layers.Normalization) and short == 'variance':
        weight.assign(rng.uniform(0.03, 0.08, shape).astype(weight.dtype))
    if isinstance(layer, keras.layers.Normalization):
      layer.finalize_state()  # it computes with copies of its statistics, made here (and on load)
  batch_norms = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
  momenta = [layer.momentum for layer in batch_norms]
  for layer in batch_norms:
    layer.momentum = 0.0
  images = backbones.get(name).preprocessing(rng.uniform(0, 255, (8, size, size, 3)))
  model(images.astype(np.float32), training=True)
  for layer, momentum in zip(batch_norms, momenta):
    layer.momentum = momentum
  return model


def write_published_h5(path, model):
  """Writes `model`'s weights as the Keras-applications downloads store them (`Conv1/kernel:0`)."""
  import keras
  layers = [layer for layer in model.layers if layer.weights]
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = np.array([layer.name.encode() for layer in model.layers])
    for layer in model.layers:
      group = f.create_group(layer.name)
      names = []
      for w in layer.weights:
        short = w.path.rsplit('/', 1)[-1]
        if isinstance(layer, keras.layers.DepthwiseConv2D) and short == 'kernel':
          short = 'depthwise_kernel'
        names.append(f'{layer.name}/{short}:0')
        group.create_dataset(names[-1], data=np.asarray(w.numpy()))
      group.attrs['weight_names'] = np.array([n.encode() for n in names])
  return len(layers)


def write_keras3_legacy_h5(path, model):
  """Writes `model`'s weights with Keras 3's own legacy HDF5 writer (`Conv1/kernel`)."""
  from keras.src.legacy.saving import legacy_h5_format
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
