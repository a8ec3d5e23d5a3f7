"""The tutorial's Keras recipe on the shared flowers, validated on the photos tlflax validates on.

    .venv/bin/python bench/keras_flowers.py [--phase_epochs 10] [--seed 0]

tlflax's `configs/flowers.py:local` carves 25 of the 125 shared validation photos out as its test
split (`tlflax.data.carving`, by seed). This runs the tutorial's Keras code (augmentation layers,
frozen base with `training=False`, then fine-tuning from layer 100 at a tenth of the rate) on the
same 500 training photos, the same ported ImageNet weights, and tlflax's 100 validation photos,
with a 5-way softmax head and sparse categorical cross-entropy, and prints the validation accuracy
after each epoch. In phase 2 the BatchNorm layers are set non-trainable, so they stay in inference
mode as the tutorial's `training=False` means (and as tlflax does): Keras 3's `fit` otherwise runs
the unfrozen ones on batch statistics, and here that left phase 2 at chance (loss ln 5).
Photos are linked into a temporary folder, not copied.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))

FLOWERS = ROOT.parent / 'shared' / 'data' / 'flowers_mini'
WEIGHTS = ROOT.parent / 'shared' / 'weights' / 'mobilenet_v2_1.0_224_ptq.tflite'
flags.DEFINE_integer('phase_epochs', 10, 'Epochs per phase.')
flags.DEFINE_integer('seed', 0, "tlflax's config.seed (which photos its validation split holds).")
FLAGS = flags.FLAGS


def link_splits(folder: Path) -> list[str]:
  """train/ and validation/ under `folder`, linking the photos of tlflax's splits."""
  from tlflax.data.folders import scan_image_folder
  splits, class_names = scan_image_folder(FLOWERS, seed=FLAGS.seed)
  for split in ('train', 'validation'):
    for path, label in zip(splits[split].paths, splits[split].labels):
      target = folder / split / class_names[label] / Path(path).name
      target.parent.mkdir(parents=True, exist_ok=True)
      os.symlink(path, target)
  return list(class_names)


def main(argv):
  del argv
  os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
  import keras
  import tensorflow as tf

  from keras_comparison import BATCH, FINE_TUNE_AT, IMAGE_SIZE, keras_base_with_ported_weights
  from tlflax.weights import load_pretrained
  with tempfile.TemporaryDirectory() as temporary:
    folder = Path(temporary)
    class_names = link_splits(folder)
    kwargs = dict(batch_size=BATCH, image_size=(IMAGE_SIZE, IMAGE_SIZE), seed=0)
    train = keras.utils.image_dataset_from_directory(folder / 'train', shuffle=True, **kwargs)
    validation = keras.utils.image_dataset_from_directory(folder / 'validation', shuffle=False,
                                                          **kwargs)
    assert train.class_names == validation.class_names == class_names
    variables = load_pretrained(str(WEIGHTS), include_top=False, input_size=IMAGE_SIZE)
    base = keras_base_with_ported_weights(keras, variables)
    base.trainable = False
    augmentation = keras.Sequential([keras.layers.RandomFlip('horizontal'),
                                     keras.layers.RandomRotation(0.2)])
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(augmentation(inputs))
    x = keras.layers.GlobalAveragePooling2D()(base(x, training=False))
    model = keras.Model(inputs, keras.layers.Dense(len(class_names))(keras.layers.Dropout(0.2)(x)))
    results = {'validation_images': int(sum(len(y) for _, y in validation))}
    for phase, optimizer in (('feature_extraction', keras.optimizers.Adam(1e-4)),
                             ('fine_tune', keras.optimizers.RMSprop(1e-5))):
      if phase == 'fine_tune':
        base.trainable = True
        for layer in base.layers[:FINE_TUNE_AT]:
          layer.trainable = False
        for layer in base.layers:  # Keras 3's fit ignores training=False for trainable
          if isinstance(layer, keras.layers.BatchNormalization):  # BatchNorm (keras#20285)
            layer.trainable = False
      model.compile(optimizer=optimizer,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=[keras.metrics.SparseCategoricalAccuracy(name='accuracy')])
      history = model.fit(train.prefetch(tf.data.AUTOTUNE), epochs=FLAGS.phase_epochs,
                          validation_data=validation.prefetch(tf.data.AUTOTUNE), verbose=2)
      results[phase] = history.history['val_accuracy']
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
