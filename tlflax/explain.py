"""Grad-CAM: where in an image the backbone's last convolutional block saw a class.

`class_activation_maps` follows Selvaraju et al. (2017) on any backbone of the registry: the
classifier runs up to its backbone's global pooling layer (`Classifier.frozen_activations` with
`stop` at that layer), `jax.grad` takes the chosen class's score with respect to that feature map
(pooling and head included), each channel is weighted by its mean gradient, and the weighted sum,
through a ReLU, is the map: upsampled to the image and scaled to [0, 1] per image. A class's score
is its logit; with the tutorial's single sigmoid logit z, class 1's score is z and class 0's is -z.

`overlay` draws a map over its image; `explain_images` (`--mode=explain`) writes an overlay per
image of `--inputs` and a CSV of each image's top class.
"""
import io
import itertools
import re
from pathlib import Path
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from tlflax import parallel
from tlflax.classifier import Classifier, backbone_layers
from tlflax.data.folders import printable
from tlflax.errors import ConfigError, DataError
from tlflax.workdir import writable
from tlflax.objectives import Objective
from tlflax.reports import write_atomically

GLOBAL_POOLING = ('global_avg_pool', 'global_max_pool')
OVERLAY_OPACITY = 0.45  # of the heat map over the image


def pooling_index(model: Classifier) -> int:
  """The index of the backbone's last global pooling layer: its input is the feature map of the
  last convolutional block."""
  layers = backbone_layers(model)
  found = [layer.index for layer in layers if layer.kind in GLOBAL_POOLING]
  if not found:
    raise ValueError(f'backbone {model.backbone} has no global pooling layer for Grad-CAM')
  return found[-1]


def class_scores(objective: Objective, logits, classes):
  """Each example's score for its class in `classes`: its logit (for the single sigmoid logit,
  +z for class 1 and -z for class 0)."""
  if objective.sigmoid:
    return jnp.where(classes == 1, logits[:, 0], -logits[:, 0])
  return jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]


def make_grad_cam(model: Classifier, objective: Objective):
  """A jitted `(variables, inputs, classes=None) -> (maps, logits)`: (b, height, width) Grad-CAM
  maps in [0, 1] of preprocessed `inputs` (b, height, width, 3) for `classes` (b class indices;
  None: each image's predicted class), and the (b, outputs) logits, from one pass of the
  backbone with `{'params', 'batch_stats'}` `variables`. A map is zero where the class's score
  has no positive evidence in the feature map."""
  stop = pooling_index(model)

  def maps_of(variables, inputs, classes=None):
    boundary = model.apply(variables, inputs, stop, method=Classifier.frozen_activations)
    (name, features), = boundary.items()  # the pooling layer's one input
    dtype, features = features.dtype, features.astype(jnp.float32)  # the gradient in float32

    def head(features):  # as the model computes it (bfloat16 for mixed precision)
      return model.apply(variables, {name: features.astype(dtype)}, start=stop)

    logits = head(features)
    if classes is None:
      classes = objective.predictions(logits)

    def total_score(features):  # examples are independent: one gradient serves all
      return class_scores(objective, head(features), classes).sum()

    weights = jax.grad(total_score)(features).mean(axis=(1, 2), keepdims=True)
    maps = jax.nn.relu((weights * features).sum(-1))
    peak = maps.max(axis=(1, 2), keepdims=True)
    maps = jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1), 0)
    return jax.image.resize(maps, inputs.shape[:3], 'bilinear'), logits

  return jax.jit(maps_of)


def class_activation_maps(model: Classifier, objective: Objective, variables: dict, inputs,
                          classes) -> np.ndarray:
  """The maps of `make_grad_cam(model, objective)(variables, inputs, classes)`, as NumPy."""
  maps, _ = make_grad_cam(model, objective)(
      variables, jnp.asarray(inputs, jnp.float32), jnp.asarray(classes, jnp.int32))
  return np.asarray(maps)


def overlay(image, heat_map) -> np.ndarray:
  """uint8 RGB: `image` (uint8, or floats in [0, 255]) under `heat_map` in [0, 1] drawn with
  matplotlib's 'jet' colours (red: where the map is highest)."""
  from matplotlib import colormaps
  colours = colormaps['jet'](np.clip(heat_map, 0, 1))[..., :3] * 255
  image = np.clip(np.asarray(image, np.float32), 0, 255)
  blended = (1 - OVERLAY_OPACITY) * image + OVERLAY_OPACITY * colours
  return np.round(blended).astype(np.uint8)


def side_by_side(image, heat_map) -> np.ndarray:
  """The image and its overlay next to each other, 4 pixels of white between them."""
  image = np.clip(np.round(np.asarray(image, np.float32)), 0, 255).astype(np.uint8)
  gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
  return np.concatenate([image, gap, overlay(image, heat_map)], axis=1)


def png_bytes(pixels: np.ndarray) -> bytes:
  """A uint8 RGB array as the bytes of a PNG file."""
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  return buffer.getvalue()


def write_png(pixels: np.ndarray, path: Path):
  """A uint8 RGB array as a PNG file, written atomically."""
  write_atomically(Path(path), png_bytes(pixels))


def output_folder(workdir, output: Optional[str], source: str) -> Path:
  """Where `--mode=explain` writes: `output` (a folder that must not exist, or be empty), else
  `WORKDIR/explain_<source>/`, numbered `_2`, `_3`, ... rather than reusing one."""
  if output:
    path = Path(output).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
      raise DataError(f'--output {path} exists and is not an empty folder: explain never '
                      'replaces files; name another one or remove it')
    return path
  path = Path(workdir) / f'explain_{source}'
  for number in itertools.count(2):
    if not path.exists():
      return path
    path = Path(workdir) / f'explain_{source}_{number}'


def overlay_name(number: int, path) -> str:
  """`NNNN_<stem>.png`: the stem's letters, digits, '-', '.' and '_' only (others become '_',
  an undecodable byte too), cut to 60 characters, so that any input name makes a valid file."""
  stem = re.sub(r'[^A-Za-z0-9._-]', '_', Path(path).stem)[:60]
  return f'{number:04d}_{stem}.png'


def explain_images(config, workdir, inputs: str, checkpoint: str = 'latest',
                   output: Optional[str] = None) -> Iterator[tuple]:
  """Yields (path, class name, probability, overlay file) for each readable image of `inputs`
  (`predict.list_images`), classified with a checkpoint of the workdir (raw probabilities of one
  view), and writes, in `output_folder(...)`, a PNG per image (the image beside its Grad-CAM
  overlay for its top class, `overlay_name`) and `gradcam.csv` (`path,label,probability,
  overlay`) as it goes. A batch of `batch_size` images runs on one device, in one process."""
  from tlflax import predict, run_parts
  run_parts.check_config(config)
  if jax.process_count() > 1:
    raise ConfigError('explain runs in one process: start it without --num_processes')
  mesh = parallel.data_mesh()
  trained = run_parts.restore_for_inference(config, workdir, mesh, checkpoint)
  variables = jax.device_put(parallel.to_host(trained.variables))  # once, on one device
  preprocessing = trained.model.spec.preprocessing
  paths = predict.list_images(inputs)
  folder = output_folder(workdir, output, predict.source_name(None, checkpoint))
  created = not folder.exists()
  writable(folder, 'the folder of the overlays')
  batches = predict.image_batches(paths, config.batch_size, config.image_size,
                                  config.data.max_pixels, rounded=True)
  grad_cam = make_grad_cam(trained.model, trained.objective)
  try:
    with predict.RowsFile(folder / 'gradcam.csv', ['path', 'label', 'probability', 'overlay'],
                          'explained') as table:
      for batch_paths, images in batches:
        inputs_ = preprocessing(predict.padded(images, config.batch_size).astype(np.float32))
        maps, logits = grad_cam(variables, inputs_)
        probabilities = np.asarray(trained.objective.probabilities(logits))
        top, maps = np.asarray(trained.objective.predictions(logits)), np.asarray(maps)
        for i, path in enumerate(batch_paths):
          name = overlay_name(table.written + 1, path)
          write_png(side_by_side(images[i], maps[i]), folder / name)
          label, probability = trained.class_names[top[i]], float(probabilities[i, top[i]])
          table.write([[printable(path), label, f'{probability:.6f}', name]])
          yield printable(path), label, probability, folder / name
      if not table.written:
        raise DataError(f'none of the {len(paths)} image(s) could be read (each skipped one '
                        'is named above)')
  finally:
    if created and not any(folder.iterdir()):  # nothing explained: no empty folder left
      folder.rmdir()
  logging.info('Wrote %d overlays and gradcam.csv to %s', table.written, folder)
