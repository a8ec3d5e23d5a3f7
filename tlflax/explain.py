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
import csv
import itertools
from pathlib import Path
from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from tlflax import interrupts, parallel
from tlflax.classifier import Classifier, backbone_layers
from tlflax.data.folders import printable
from tlflax.errors import DataError
from tlflax.objectives import Objective

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
  """A jitted `(variables, inputs, classes) -> (b, height, width)` Grad-CAM maps in [0, 1] of
  preprocessed `inputs` (b, height, width, 3) for `classes` (b class indices), from
  `{'params', 'batch_stats'}` `variables`. A map is zero where the class's score has no positive
  evidence in the feature map."""
  stop = pooling_index(model)

  def maps_of(variables, inputs, classes):
    boundary = model.apply(variables, inputs, stop, method=Classifier.frozen_activations)
    (name, features), = boundary.items()  # the pooling layer's one input

    def total_score(features):  # examples are independent: one gradient serves all
      logits = model.apply(variables, {name: features}, start=stop)
      return class_scores(objective, logits, classes).sum()

    features = features.astype(jnp.float32)
    weights = jax.grad(total_score)(features).mean(axis=(1, 2), keepdims=True)
    maps = jax.nn.relu((weights * features).sum(-1))
    peak = maps.max(axis=(1, 2), keepdims=True)
    maps = jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1), 0)
    return jax.image.resize(maps, inputs.shape[:3], 'bilinear')

  return jax.jit(maps_of)


def class_activation_maps(model: Classifier, objective: Objective, variables: dict, inputs,
                          classes) -> np.ndarray:
  """`make_grad_cam(model, objective)(variables, inputs, classes)` as a NumPy array."""
  return np.asarray(make_grad_cam(model, objective)(
      variables, jnp.asarray(inputs, jnp.float32), jnp.asarray(classes, jnp.int32)))


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


def write_png(pixels: np.ndarray, path: Path):
  """A uint8 RGB array as a PNG file."""
  Image.fromarray(pixels).save(path, format='PNG')


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


def explain_images(config, workdir, inputs: str, checkpoint: str = 'latest',
                   output: Optional[str] = None) -> Iterator[tuple]:
  """Yields (path, class name, probability, overlay file) for each readable image of `inputs`
  (`predict.list_images`), classified with a checkpoint of the workdir (raw probabilities of one
  view), and writes, in `output_folder(...)`, a PNG per image (the image beside its Grad-CAM
  overlay for its top class) and `gradcam.csv` (`path,label,probability,overlay`) as it goes."""
  from tlflax import predict, run_parts
  run_parts.check_config(config)
  mesh = parallel.data_mesh()
  trained = run_parts.restore_for_inference(config, workdir, mesh, checkpoint)
  variables = parallel.to_host(trained.variables)
  preprocessing = trained.model.spec.preprocessing
  paths = predict.list_images(inputs)
  folder = output_folder(workdir, output, predict.source_name(None, checkpoint))
  folder.mkdir(parents=True, exist_ok=True)
  batches = predict.image_batches(paths, config.batch_size, config.image_size,
                                  config.data.max_pixels, rounded=True)
  apply = jax.jit(trained.model.apply)
  grad_cam = make_grad_cam(trained.model, trained.objective)
  table = folder / 'gradcam.csv'
  written = 0
  try:
    with open(table, 'x', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(['path', 'label', 'probability', 'overlay'])
      for batch_paths, images in batches:
        inputs_ = preprocessing(predict.padded(images, config.batch_size).astype(np.float32))
        probabilities = np.asarray(trained.objective.probabilities(apply(variables, inputs_)))
        top = probabilities.argmax(1)
        maps = np.asarray(grad_cam(variables, inputs_, top))
        for i, path in enumerate(batch_paths):
          name = f'{written + 1:04d}_{Path(path).stem[:80]}.png'
          write_png(side_by_side(images[i], maps[i]), folder / name)
          label, probability = trained.class_names[top[i]], float(probabilities[i, top[i]])
          writer.writerow([printable(path), label, f'{probability:.6f}', name])
          f.flush()
          written += 1
          yield printable(path), label, probability, folder / name
    if not written:
      raise DataError(f'none of the {len(paths)} image(s) could be read (each skipped one is '
                      'named above)')
  except interrupts.Interrupted as e:
    e.outcome = (f'{folder} holds the {written} image(s) explained before' if written else
                 'no image was explained yet, so nothing was kept')
    raise
  finally:
    if not written:  # a header alone is of no use
      table.unlink(missing_ok=True)
      if not any(folder.iterdir()):
        folder.rmdir()
  logging.info('Wrote %d overlays and gradcam.csv to %s', written, folder)
