"""Per-class evaluation of a split: metrics, confusion matrix, and the most confident mistakes.

`evaluate_split` classifies every example of a split once (the padded evaluation batches, gathered
from every process in split order) and computes, with scikit-learn's metrics on the host:
accuracy, loss, top-5 accuracy above 5 classes, per-class precision, recall, F1 and support, their
macro and weighted averages, and the confusion matrix (rows: true class, columns: predicted).
`write_report` writes it as `<split>.json`, `<split>_confusion.png` (a heat map with class names)
and `<split>_mistakes.png` (the most confident mistakes: image, true and predicted class,
probability), and, where the report has a calibration, `<split>_reliability.png` (accuracy
against confidence before and after temperature scaling). Test-time augmentation's numbers
('tta') and the calibration's stand beside the plain numbers, which they do not change.
"""
import hashlib
from pathlib import Path

import numpy as np
from jax.experimental import multihost_utils
from sklearn import metrics as sk_metrics

from tlflax import calibration, explain, parallel, plots
from tlflax import tta as tta_lib
from tlflax.data import sources
from tlflax.objectives import TOP_K, Objective
from tlflax.reports import write_atomically, write_json

GALLERY_SIZE = 16  # mistakes shown in <split>_mistakes.png


def collect_logits(logits_step, variables: dict, batches) -> tuple[np.ndarray, np.ndarray]:
  """(logits, labels) of every example in evaluation `batches`, padding dropped, in split order
  (by the batches' `index`), the same on every process."""
  parts = []
  for batch in batches:
    logits = logits_step(variables['params'], variables['batch_stats'], batch)
    parts.append(multihost_utils.process_allgather(
        {'logits': logits, 'label': batch['label'], 'index': batch['index']}, tiled=True))
  rows = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
  real = rows['index'] >= 0
  order = np.argsort(rows['index'][real], kind='stable')
  if not np.array_equal(rows['index'][real][order], np.arange(real.sum())):
    raise AssertionError('the evaluation batches did not hold each example of the split once')
  return rows['logits'][real][order], rows['label'][real][order]


def per_class_report(objective: Objective, logits: np.ndarray, labels: np.ndarray,
                     class_names) -> dict:
  """Metrics of a split's `logits` against its `labels` (see the module docstring), and the
  indices of its mistakes, most confident first."""
  classes = np.arange(len(class_names))
  probabilities = np.asarray(objective.probabilities(logits))
  predicted = np.asarray(objective.predictions(logits))
  losses = np.asarray(objective.losses(logits, labels))
  precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
      labels, predicted, labels=classes, zero_division=0)
  report = {'count': int(len(labels)), 'loss': float(np.mean(losses)),
            'accuracy': float(sk_metrics.accuracy_score(labels, predicted))}
  if len(class_names) > TOP_K:
    report[f'top{TOP_K}_accuracy'] = float(sk_metrics.top_k_accuracy_score(
        labels, probabilities, k=TOP_K, labels=classes))
  report['class_names'] = list(class_names)
  report['per_class'] = {
      name: {'precision': float(p), 'recall': float(r), 'f1': float(f), 'support': int(s)}
      for name, p, r, f, s in zip(class_names, precision, recall, f1, support)}
  for average in ('macro', 'weighted'):
    p, r, f, _ = sk_metrics.precision_recall_fscore_support(
        labels, predicted, labels=classes, average=average, zero_division=0)
    report[f'{average}_average'] = {'precision': float(p), 'recall': float(r), 'f1': float(f)}
  report['confusion_matrix'] = sk_metrics.confusion_matrix(labels, predicted,
                                                           labels=classes).tolist()
  wrong = np.flatnonzero(predicted != labels)
  confidence = probabilities[wrong, predicted[wrong]]
  report['most_confident_mistakes'] = [
      {'index': int(i), 'true': class_names[labels[i]], 'predicted': class_names[predicted[i]],
       'probability': float(probabilities[i, predicted[i]])}
      for i in wrong[np.argsort(-confidence, kind='stable')][:GALLERY_SIZE]]
  return report


def evaluate_split(feed, variables: dict, split: str, tta: str = 'none',
                   temperature=None) -> dict:
  """The per-class report of `split` through `feed` (an `ImageFeed`); each mistake also names
  its example (`Source.locate`: a file path, or the TFDS slice that reads it). Beside the plain
  numbers: with `tta` (`tlflax.tta`), 'tta' holds the split's numbers on the views' mean
  probabilities; with a `temperature`, 'calibration' holds NLL and ECE before and after it
  (`tlflax.calibration`)."""
  logits, labels = collect_logits(feed.logits_step, variables, feed.evaluation(split))
  source = feed.splits[split]
  report = per_class_report(feed.objective, logits, labels, source.class_names)
  for mistake in report['most_confident_mistakes']:
    mistake['example'] = source.locate(mistake['index'])
  if temperature is not None:
    report['calibration'] = calibration.calibration_report(feed.objective, logits, labels,
                                                           temperature)
  if tta != 'none':
    step = tta_lib.make_tta_logits_step(feed.apply_fn, feed.objective, tta, feed.mesh,
                                        feed.input_key)
    tta_logits, _ = collect_logits(step, variables, feed.evaluation(split))
    report['tta'] = {'views': tta, **summary(per_class_report(feed.objective, tta_logits, labels,
                                                              source.class_names))}
  return report


def write_report(report: dict, feed, split: str, out_dir: Path, variables: dict):
  """`<split>.json`, `<split>_confusion.png`, `<split>_mistakes.png` and, in
  `<split>_gradcam/`, each mistake beside its Grad-CAM map for the predicted class
  (`tlflax.explain`; the file is named in the mistake's 'gradcam'), in `out_dir`. The overlays
  are named by their content and written before the JSON; those no JSON names any more go when
  the run's page is next written (`run_page.write`), so that neither an interrupted evaluation
  nor the page it has not rewritten yet names an overlay that is gone."""
  source = feed.splits[split]
  out_dir.mkdir(parents=True, exist_ok=True)
  mistakes = report['most_confident_mistakes']
  images = sources.images_at(source, [m['index'] for m in mistakes], feed.config.image_size,
                             feed.config.max_pixels)
  folder = out_dir / f'{split}_gradcam'
  _write_grad_cams(mistakes, [images[m['index']] for m in mistakes], report['class_names'],
                   feed, variables, folder)
  write_json(out_dir / f'{split}.json', report)
  plots.confusion_matrix(np.asarray(report['confusion_matrix']), source.class_names,
                         f'{split}: confusion matrix ({report["count"]} examples)',
                         out_dir / f'{split}_confusion.png')
  if 'calibration' in report:
    plots.reliability_diagram(report['calibration'], f'{split}: reliability',
                              out_dir / f'{split}_reliability.png')
  plots.image_gallery([images[m['index']] for m in mistakes],
                      [f"true {m['true']}\npredicted {m['predicted']} ({m['probability']:.2f})"
                       for m in mistakes],
                      f'{split}: most confident mistakes', out_dir / f'{split}_mistakes.png')


def _write_grad_cams(mistakes: list, images: list, class_names: list, feed, variables: dict,
                     folder: Path):
  """A PNG per mistake in `folder` (the image beside its Grad-CAM map for the predicted class),
  named `<rank>_<hash of its content>.png`; sets each mistake's 'gradcam' to
  `<folder name>/<file>`."""
  if not mistakes:
    return
  folder.mkdir(exist_ok=True)
  batch = np.zeros((GALLERY_SIZE, *np.shape(images[0])), np.float32)  # one shape: one compile
  batch[:len(images)] = images
  predicted = np.zeros(GALLERY_SIZE, np.int32)
  predicted[:len(mistakes)] = [class_names.index(m['predicted']) for m in mistakes]
  maps, _ = explain.make_grad_cam(feed.model, feed.objective)(
      parallel.to_host(variables), feed.config.preprocessing(batch), predicted)
  for rank, (mistake, image, heat_map) in enumerate(zip(mistakes, images, np.asarray(maps)), 1):
    png = explain.png_bytes(explain.side_by_side(image, heat_map))
    name = f'{rank:02d}_{hashlib.sha256(png).hexdigest()[:12]}.png'
    if not (folder / name).is_file():
      write_atomically(folder / name, png)
    mistake['gradcam'] = f'{folder.name}/{name}'


def summary(report: dict) -> dict:
  """The split-level numbers of a report (what history.json and test_metrics.json hold), with
  test-time augmentation's accuracy and the calibration's temperature and ECEs where it has
  them."""
  numbers = {key: report[key] for key in ('loss', 'accuracy', f'top{TOP_K}_accuracy', 'count')
             if key in report}
  if 'tta' in report:
    numbers.update(tta_views=report['tta']['views'], tta_loss=report['tta']['loss'],
                   tta_accuracy=report['tta']['accuracy'])
  if 'calibration' in report:
    numbers.update({key: report['calibration'][key]
                    for key in ('temperature', 'ece_before', 'ece_after')})
  return numbers


def format_report(report: dict, split: str) -> str:
  """A report as text: the split's numbers, then a per-class table."""
  head = ', '.join(f'{split} {key.replace("_", " ")} {report[key]:.4f}'
                   for key in ('loss', 'accuracy', f'top{TOP_K}_accuracy') if key in report)
  width = max(len('macro avg'), *(len(name) for name in report['per_class']))
  lines = [f"{head} ({report['count']} examples)",
           f"{'class':<{width}}  precision  recall      f1  support"]
  for name, row in report['per_class'].items():
    lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
                 f"{row['f1']:6.4f}  {row['support']:7d}")
  macro = report['macro_average']
  lines.append(f"{'macro avg':<{width}}  {macro['precision']:9.4f}  {macro['recall']:6.4f}  "
               f"{macro['f1']:6.4f}  {report['count']:7d}")
  return '\n'.join(lines)
