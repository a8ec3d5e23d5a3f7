"""The tutorial's figures: learning curves across phases, and a grid of test predictions."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: dict, path):
  """Accuracy and loss panels (train and validation per epoch) with a line where phase 2 starts."""
  epochs = history['epochs']
  x = [e['epoch'] for e in epochs]
  figure, axes = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
  for axis, metric in zip(axes, ('accuracy', 'loss')):
    axis.plot(x, [e[metric] for e in epochs], label=f'Training {metric.title()}')
    axis.plot(x, [e[f'val_{metric}'] for e in epochs], label=f'Validation {metric.title()}')
    starts = [e['epoch'] - 0.5 for before, e in zip(epochs, epochs[1:])
              if e['phase'] != before['phase']]
    for start in starts:
      axis.axvline(start, color='gray', linestyle='--', label='Start Fine Tuning')
    axis.set_ylabel(metric.title())
    axis.legend(loc='lower right' if metric == 'accuracy' else 'upper right')
  axes[0].set_title('Training and Validation Accuracy')
  axes[1].set_title('Training and Validation Loss')
  axes[1].set_xlabel('epoch')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def prediction_grid(images, labels, probabilities, path):
  """A 3x3 grid of images in [-1, 1], titled with predicted class and its probability."""
  figure = plt.figure(figsize=(9, 9))
  for i in range(min(9, len(images))):
    axis = figure.add_subplot(3, 3, i + 1)
    axis.imshow(np.clip((images[i] + 1) / 2, 0, 1))
    axis.set_title(f'{labels[i]} ({probabilities[i]:.2f})')
    axis.axis('off')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
