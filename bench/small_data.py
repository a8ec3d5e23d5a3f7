"""configs/small_data.py against the tutorial's recipe on the two shared small folders.

    .venv/bin/python bench/small_data.py --workdir=runs/bench_small_data [--seeds=0]

Trains, for each seed, four runs of 10 + 10 epochs with the shared ImageNet MobileNetV2 (its
TFLite file): the tutorial's recipe (`configs/cats_dogs.py`, `configs/flowers.py`) and
`configs/small_data.py`, on `../shared/data/flowers_mini` (500 training photos, 5 classes; the
sweep that chose the recipe ran there) and `../shared/data/cats_vs_dogs_mini` (1600 training
photos; not used to choose it). A finished run is read back rather than trained again. Writes
`bench/results/small_data.md` and `.json`: validation accuracy (of the last weights and, where
kept, of their average), test accuracy, test accuracy with test-time augmentation where the recipe
uses it, and the test split's ECE before and after calibration.
"""
import json
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags, logging

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / 'shared'
RESULTS = ROOT / 'bench' / 'results' / 'small_data'
flags.DEFINE_string('workdir', None, 'Where the runs go (reused: finished runs are read back).')
flags.DEFINE_list('seeds', ['0'], 'Seeds to train each run with.')
flags.DEFINE_list('datasets', ['flowers_mini', 'cats_vs_dogs_mini'], 'Shared folders to train on.')
flags.DEFINE_list('recipes', ['tutorial', 'small_data'], 'Recipes to train.')
flags.mark_flag_as_required('workdir')
FLAGS = flags.FLAGS

DATASETS = {'flowers_mini': 'flowers', 'cats_vs_dogs_mini': 'cats_dogs'}


def configs(dataset: str):
  """{recipe: config} for the shared folder `dataset`."""
  import importlib
  tutorial = importlib.import_module(f'configs.{DATASETS[dataset]}').get_config()
  small = importlib.import_module('configs.small_data').get_config()
  for config in (tutorial, small):
    config.data.folder = str(SHARED / 'data' / dataset)
    config.model.weights = str(SHARED / 'weights' / 'mobilenet_v2_1.0_224_ptq.tflite')
  return {'tutorial': tutorial, 'small_data': small}


def trained(config, workdir: Path) -> dict:
  """The run's numbers, training it first unless it finished."""
  from tlflax.train import train_and_evaluate
  if not (workdir / 'test_metrics.json').exists():
    started = time.perf_counter()
    train_and_evaluate(config, workdir)
    logging.info('%s trained in %.0f s', workdir, time.perf_counter() - started)
  history = json.loads((workdir / 'history.json').read_text())
  last = history['epochs'][-1]
  return {'val_accuracy': last['val_accuracy'], 'ema_val_accuracy': last.get('ema_val_accuracy'),
          **{f'test_{key}': value for key, value in history['test'].items()},
          'epochs': len(history['epochs']),
          'seconds': sum(phase['seconds'] for phase in history['phases'].values())}


def table(rows: list[dict]) -> str:
  columns = ('val_accuracy', 'ema_val_accuracy', 'test_accuracy', 'test_tta_accuracy',
             'test_ece_before', 'test_ece_after', 'test_count')
  lines = ['| data | recipe | seed | ' + ' | '.join(columns) + ' |',
           '| --- | --- | --- | ' + ' | '.join('---' for _ in columns) + ' |']
  for row in rows:
    cells = ['' if row.get(c) is None else f'{row[c]:.4f}' if isinstance(row[c], float)
             else str(row[c]) for c in columns]
    lines.append(f"| {row['data']} | {row['recipe']} | {row['seed']} | " + ' | '.join(cells)
                 + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  rows = []
  for dataset in FLAGS.datasets:
    for recipe, config in configs(dataset).items():
      if recipe not in FLAGS.recipes:
        continue
      for seed in map(int, FLAGS.seeds):
        config = config.copy_and_resolve_references()
        config.seed = seed
        numbers = trained(config, Path(FLAGS.workdir) / f'{dataset}-{recipe}-{seed}')
        rows.append({'data': dataset, 'recipe': recipe, 'seed': seed, **numbers})
        print(rows[-1], flush=True)
  means = {}
  for row in rows:
    means.setdefault((row['data'], row['recipe']), []).append(row['val_accuracy'])
  summary = [f"- {data}: {recipe} mean validation accuracy {statistics.mean(values):.4f} over "
             f"{len(values)} seed(s)" for (data, recipe), values in means.items()]
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  RESULTS.with_suffix('.json').write_text(json.dumps(rows, indent=2))
  RESULTS.with_suffix('.md').write_text(
      '# configs/small_data.py against the tutorial recipe\n\n'
      f'Command: `.venv/bin/python bench/small_data.py --workdir=... --seeds='
      f'{",".join(FLAGS.seeds)}`; 10 + 10 epochs each, MobileNetV2 with the shared ImageNet '
      'weights (TFLite file), batch 32, 160x160.\n\n' + table(rows) + '\n\n'
      + '\n'.join(summary) + '\n')
  print(RESULTS.with_suffix('.md').read_text())


if __name__ == '__main__':
  app.run(main)
