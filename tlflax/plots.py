"""Figures: learning curves across phases, image grids, confusion matrix, reliability diagram,
sweep results."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def phase_starts(epochs: list) -> list:
  """x positions (between epochs) where a history's epoch records change phase."""
  return [e['epoch'] - 0.5 for before, e in zip(epochs, epochs[1:])
          if e['phase'] != before['phase']]


def learning_curves(history: dict, path):
  """Accuracy and loss panels (train and validation per epoch) with a line where phase 2 starts."""
  epochs = history['epochs']
  x = [e['epoch'] for e in epochs]
  figure, axes = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
  for axis, metric in zip(axes, ('accuracy', 'loss')):
    axis.plot(x, [e[metric] for e in epochs], label=f'Training {metric.title()}')
    axis.plot(x, [e[f'val_{metric}'] for e in epochs], label=f'Validation {metric.title()}')
    for start in phase_starts(epochs):
      axis.axvline(start, color='gray', linestyle='--', label='Start Fine Tuning')
    axis.set_ylabel(metric.title())
    axis.legend(loc='lower right' if metric == 'accuracy' else 'upper right')
  axes[0].set_title('Training and Validation Accuracy')
  axes[1].set_title('Training and Validation Loss')
  axes[1].set_xlabel('epoch')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def image_gallery(images, titles, title: str, path, columns: int = 4, marked=()):
  """A grid of uint8 (or [0, 1] float) images, each with its title, under a figure `title`; the
  images at the indices in `marked` get a red frame and a red title."""
  rows = max(1, -(-len(images) // columns))
  figure = plt.figure(figsize=(3 * columns, 3.2 * rows + 0.6))
  for i, (image, caption) in enumerate(zip(images, titles)):
    axis = figure.add_subplot(rows, columns, i + 1)
    axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])
    frame = 'red' if i in marked else 'none'
    for spine in axis.spines.values():
      spine.set_edgecolor(frame)
      spine.set_linewidth(4)
    axis.set_title(caption, fontsize=9, color='red' if i in marked else 'black')
  if not len(images):
    figure.text(0.5, 0.5, 'none', ha='center', va='center')
  figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def prediction_grid(images, true_labels, predicted_labels, probabilities, path):
  """The tutorial's 3x3 grid of images in [0, 255], titled with the true class, the predicted one
  and its probability; wrong predictions are framed and titled in red."""
  wrong = {i for i, (t, p) in enumerate(zip(true_labels, predicted_labels)) if t != p}
  image_gallery(np.clip(np.asarray(images[:9]) / 255, 0, 1),
                [f'true {t}\npredicted {p} ({q:.2f})' + (' WRONG' if i in wrong else '')
                 for i, (t, p, q) in enumerate(zip(true_labels, predicted_labels, probabilities))],
                'Predictions on test images (wrong ones in red)', path, columns=3, marked=wrong)


def confusion_matrix(matrix, class_names, title: str, path):
  """A heat map of a confusion matrix (rows: true class, columns: predicted), counts written in."""
  size = max(4.0, 0.6 * len(class_names) + 2)
  figure, axis = plt.subplots(figsize=(size + 1, size))
  shown = axis.imshow(matrix, cmap='Blues')
  figure.colorbar(shown, ax=axis)
  ticks = np.arange(len(class_names))
  axis.set_xticks(ticks, class_names, rotation=45, ha='right')
  axis.set_yticks(ticks, class_names)
  axis.set_xlabel('predicted class')
  axis.set_ylabel('true class')
  if len(class_names) <= 30:
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
      axis.text(column, row, str(count), ha='center', va='center',
                color='white' if count > threshold else 'black')
  axis.set_title(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def reliability_diagram(report: dict, title: str, path):
  """Accuracy against confidence per bin, before and after temperature scaling
  (`tlflax.calibration.calibration_report`), with the diagonal of perfect calibration."""
  figure, axis = plt.subplots(figsize=(5, 5))
  axis.plot([0, 1], [0, 1], color='grey', linestyle='--', label='perfectly calibrated')
  for key, label in (('before', 'raw'), ('after', f"temperature {report['temperature']:.2f}")):
    bins = report[f'bins_{key}']
    axis.plot([b['confidence'] for b in bins], [b['accuracy'] for b in bins], marker='o',
              label=f"{label} (ECE {report[f'ece_{key}']:.3f})")
  axis.set_xlim(0, 1)
  axis.set_ylim(0, 1)
  axis.set_xlabel('confidence (probability of the predicted class)')
  axis.set_ylabel('accuracy')
  axis.set_title(title)
  axis.legend(loc='upper left')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def lr_find_curve(result: dict, title: str, path):
  """The range test's loss (raw and smoothed) against the learning rate, the suggestion marked
  (`tlflax.lr_find`)."""
  figure, axis = plt.subplots(figsize=(6, 4))
  kept = [(r, loss) for r, loss in zip(result['rates'], result['losses']) if loss is not None]
  axis.plot(*zip(*kept), color='lightgrey', label='loss')
  axis.plot([r for r, _ in kept], result['smoothed'], label='smoothed')
  axis.axvline(result['suggestion'], color='red', linestyle='--',
               label=f"suggested {result['suggestion']:.2g}")
  axis.set_xscale('log')
  axis.set_xlabel('learning rate')
  axis.set_ylabel('training loss')
  axis.set_title(title)
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def sweep_results(groups: list, metric: str, path):
  """Each setting's mean `metric` with its standard deviation over seeds as an error bar
  (`groups` from `tlflax.sweep.report.aggregate`)."""
  figure, axis = plt.subplots(figsize=(max(7, 1.8 * len(groups)), 4.5))
  positions = range(len(groups))
  axis.errorbar(positions, [g[metric] for g in groups],
                yerr=[g[f'{metric}_std'] or 0.0 for g in groups], fmt='o', capsize=4)
  axis.set_xticks(list(positions), [f"{g['setting']}\n({g['trials']})" for g in groups],
                  rotation=30, ha='right', fontsize=8)
  axis.set_ylabel(metric.replace('_', ' '))
  axis.set_title('mean and standard deviation over seeds (number of seeds)')
  axis.grid(axis='y', alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def sweep_curves(histories: dict, path):
  """Validation accuracy per epoch of every trial (`{name: history}`), overlaid, with a dotted
  line where each phase after the first starts."""
  figure, axis = plt.subplots(figsize=(9, 5))
  starts = set()
  for name, history in histories.items():
    epochs = history['epochs']
    axis.plot([e['epoch'] for e in epochs], [e['val_accuracy'] for e in epochs], marker='.',
              label=name, alpha=0.8)
    starts |= set(phase_starts(epochs))
  for start in sorted(starts):
    axis.axvline(start, color='gray', linestyle=':')
  axis.set_xlabel('epoch')
  axis.set_ylabel('validation accuracy')
  axis.set_title('Validation accuracy of every trial (dotted: a phase starts)')
  axis.legend(fontsize=7, ncol=2)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
