"""Keras MobileNetV2 reference models with random weights, and files in the published h5 layout."""
import h5py
import numpy as np


def random_keras_model(alpha: float, include_top: bool, size: int, seed: int = 0,
                       classifier_activation='softmax'):
  """`keras.applications.MobileNetV2` with random weights whose activations carry signal.

  Keras's initial BatchNorm statistics (mean 0, variance 1) let random activations saturate, which
  would make outputs insensitive to porting mistakes. Instead every BatchNorm gets a random gamma
  and beta, and moving statistics set to the batch statistics of random images (one pass in training
  mode with momentum 0), as in a trained network.
  """
  import keras
  keras.utils.set_random_seed(seed)  # the same network whichever tests ran before
  model = keras.applications.MobileNetV2(
      input_shape=(size, size, 3), alpha=alpha, include_top=include_top, weights=None,
      classifier_activation=classifier_activation)
  rng = np.random.default_rng(seed)
  batch_norms = [layer for layer in model.layers
                 if isinstance(layer, keras.layers.BatchNormalization)]
  for layer in batch_norms:
    c = layer.gamma.shape[0]
    layer.gamma.assign(rng.uniform(0.5, 1.0, c).astype(np.float32))
    layer.beta.assign(rng.uniform(-0.25, 0.25, c).astype(np.float32))
    layer.momentum = 0.0
  model(rng.uniform(-1, 1, (8, size, size, 3)).astype(np.float32), training=True)
  for layer in batch_norms:
    layer.momentum = 0.999
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
        short = 'depthwise_kernel' if isinstance(layer, keras.layers.DepthwiseConv2D) else w.name
        names.append(f'{layer.name}/{short}:0')
        group.create_dataset(names[-1], data=np.asarray(w.numpy()))
      group.attrs['weight_names'] = np.array([n.encode() for n in names])
  return len(layers)


def write_keras3_legacy_h5(path, model):
  """Writes `model`'s weights with Keras 3's own legacy HDF5 writer (`Conv1/kernel`)."""
  from keras.src.legacy.saving import legacy_h5_format
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
