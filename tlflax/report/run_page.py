"""WORKDIR/report.html: a run on one page, from the files it left in its workdir.

The page shows the config and how it differs from the recipe's defaults (`config.defaults()`),
the environment of each start (environment.json), the learning curves and every epoch's numbers
(history.json), per split (evaluation/<split>.json) the numbers, per-class precision, recall and
F1, the confusion matrix, the calibration and the most confident mistakes with their Grad-CAM
overlays, the test predictions grid, and the exported files with their checks
(export/export.json). Each section names the file its numbers come from, and the split,
checkpoint and epoch they were computed on. Files that are missing are listed at the top (a
workdir with no finished phase gets a page that says so); a file that cannot be read is named,
not a crash.
"""
import datetime
import json
from pathlib import Path
from typing import Optional

from tlflax import config as config_lib
from tlflax import workdir as workdir_lib
from tlflax.objectives import TOP_K
from tlflax.report import html

PAGE = 'report.html'
SPLITS = ('test', 'validation', 'train')  # shown in this order, where evaluated
EPOCH_COLUMNS = (('epoch', 'epoch'), ('phase', 'phase'), ('learning_rate', 'learning rate'),
                 ('loss', 'loss'), ('accuracy', 'accuracy'), ('val_loss', 'val loss'),
                 ('val_accuracy', 'val accuracy'), ('ema_val_loss', 'average: val loss'),
                 ('ema_val_accuracy', 'average: val accuracy'),
                 ('images_per_second', 'train images/s'))
SPLIT_NUMBERS = (('count', 'examples'), ('loss', 'loss'), ('accuracy', 'accuracy'),
                 (f'top{TOP_K}_accuracy', f'top-{TOP_K} accuracy'))
CALIBRATION_NUMBERS = (('temperature', 'temperature'), ('ece_before', 'ECE before'),
                       ('ece_after', 'ECE after'), ('nll_before', 'NLL before'),
                       ('nll_after', 'NLL after'))


class _Files:
  """The workdir's JSON files, read once; one that cannot be read becomes a problem line."""

  def __init__(self, workdir: Path):
    self.workdir, self.problems = workdir, []

  def json(self, name: str):
    path = self.workdir / name
    if not path.is_file():
      return None
    try:
      return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
      self.problems.append(f'{name} could not be read ({e}): its section is left out')
      return None

  def image(self, name: str) -> Optional[str]:
    return html.link_if_exists(self.workdir, name)


def collect(workdir) -> dict:
  """What the run page shows, from the files of `workdir`."""
  workdir = Path(workdir)
  files = _Files(workdir)
  config = files.json('config.json')
  history = files.json('history.json')
  starts = files.json('environment.json')
  evaluations = {split: report for split in SPLITS
                 if (report := files.json(f'evaluation/{split}.json')) is not None}
  export = files.json('export/export.json')
  return {
      'title': f'tlflax run: {workdir.resolve().name}',
      'workdir': str(workdir.resolve()),
      'written': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'missing': missing(workdir, config, history, evaluations),
      'problems': files.problems,
      'config': config_section(config),
      'environment': environment_section(starts if isinstance(starts, list) else []),
      'training': training_section(history, files),
      'splits': [split_section(split, report, files) for split, report in evaluations.items()],
      'predictions': files.image('predictions.png'),
      'export': export_section(export),
  }


def missing(workdir: Path, config, history, evaluations) -> list[str]:
  """What a finished run would have that this workdir lacks, and what that means."""
  lines = []
  if config is None:
    lines.append('config.json is missing: this folder holds no run that started (or is not a '
                 'tlflax workdir).')
  if history is None:
    saved = workdir_lib.saved_epochs(workdir)
    lines.append(
        'history.json is missing: no run finished here (it is written once every phase has '
        'trained and the test split is evaluated). '
        + (f"Saved epochs: {', '.join(map(str, saved))}; the training command resumes after "
           f'epoch {saved[-1]}.' if saved else 'No epoch was saved yet.'))
  for split in ('test', 'validation'):  # what training evaluates
    if split not in evaluations:
      lines.append(f'evaluation/{split}.json is missing: no per-class report of the {split} '
                   'split.')
  return lines


def config_section(config) -> Optional[dict]:
  if config is None:
    return None
  recipe = json.loads(config_lib.defaults().to_json_best_effort())
  changed = config_lib.differences(recipe, config)
  return {'differences': html.table((('key', 'key'), ('default', 'default'), ('run', 'this run')), [
              {'key': key, 'default': _shown(default), 'run': _shown(value)}
              for key, (default, value) in changed.items()]),
          'json': json.dumps(config, indent=2, sort_keys=True)}


def _shown(value) -> str:
  return '—' if value is None else json.dumps(value) if not isinstance(value, str) else value


def environment_section(starts: list) -> Optional[dict]:
  if not starts:
    return None
  last = starts[-1]
  code = last.get('code') or {}
  facts = [('started', last.get('time')), ('command', ' '.join(last.get('command', []))),
           ('python', last.get('python')),
           ('code', (code.get('commit', '?') + (' with uncommitted changes' if code.get('dirty')
                                                else '')) if code else 'not a git checkout'),
           ('devices', f"{last.get('device_count')} x {last.get('device_kind')} "
                       f"({last.get('platform')}), {last.get('process_count')} process(es)"),
           ('host', last.get('host'))]
  return {'facts': facts, 'starts': [start.get('time') for start in starts],
          'packages': sorted((last.get('packages') or {}).items())}


def training_section(history, files: _Files) -> Optional[dict]:
  if history is None:
    return None
  epochs = history.get('epochs', [])
  shown = [(k, label) for k, label in EPOCH_COLUMNS if any(k in e for e in epochs)]
  phases = [{'name': name, **values} for name, values in history.get('phases', {}).items()]
  return {'epochs': html.table(shown, epochs), 'initial': history.get('initial'),
          'phases': html.table((('name', 'phase'), ('seconds', 'seconds'),
                           ('cached_from_layer', 'cached from layer')), phases),
          'curves': files.image('learning_curves.png')}


def split_section(split: str, report: dict, files: _Files) -> dict:
  names = report.get('class_names', list(report.get('per_class', {})))
  per_class = [{'class': name, **values} for name, values in report.get('per_class', {}).items()]
  per_class += [{'class': f'{average} average', **report[f'{average}_average'],
                 'support': report.get('count')}
                for average in ('macro', 'weighted') if f'{average}_average' in report]
  matrix = report.get('confusion_matrix', [])
  numbers = [(label, report[key]) for key, label in SPLIT_NUMBERS if key in report]
  if 'tta' in report:
    numbers += [(f"test-time augmentation ({report['tta']['views']}): {what}",
                 report['tta'][key]) for key, what in (('loss', 'loss'),
                                                       ('accuracy', 'accuracy'))]
  mistakes = [{**m, 'gradcam': files.image(f"evaluation/{m['gradcam']}") if 'gradcam' in m
               else None} for m in report.get('most_confident_mistakes', [])]
  epoch = report.get('checkpoint_epoch')
  return {
      'split': split,
      'source': f'evaluation/{split}.json: the {split} split, '
                + (f"the checkpoint of epoch {epoch} ({report.get('weights', 'trained')} "
                   'weights)' if epoch is not None else 'the weights before training')
                + f", {report.get('count')} examples",
      'numbers': [(label, html.cell(value)) for label, value in numbers],
      'per_class': html.table((('class', 'class'), ('precision', 'precision'), ('recall', 'recall'),
                          ('f1', 'F1'), ('support', 'support')), per_class,
                         {i: 'average' for i in range(len(names), len(per_class))}),
      'confusion': html.table((('true', 'true \\ predicted'), *((f'p{i}', name)
                                                          for i, name in enumerate(names))),
                         [{'true': name, **{f'p{j}': count for j, count in enumerate(row)}}
                          for name, row in zip(names, matrix)]),
      'confusion_image': files.image(f'evaluation/{split}_confusion.png'),
      'calibration': [(label, html.cell(report['calibration'][key]))
                      for key, label in CALIBRATION_NUMBERS] if 'calibration' in report else None,
      'reliability_image': files.image(f'evaluation/{split}_reliability.png'),
      'mistakes': mistakes,
      'mistakes_image': files.image(f'evaluation/{split}_mistakes.png'),
  }


def export_section(export) -> Optional[dict]:
  if export is None:
    return None
  rows = [{'kind': kind, 'file': html.cell(name, f'export/{name}'),
           **{key: export.get('checks', {}).get(kind, {}).get(key)
              for key in ('max_abs_difference', 'top1_agreement', 'images')}}
          for kind, name in export.get('files', {}).items()]
  source = export.get('source', {})
  return {'files': html.table((('kind', 'format'), ('file', 'file'),
                          ('max_abs_difference', 'max |p - tlflax|'),
                          ('top1_agreement', 'top-1 agreement'), ('images', 'check images')),
                         rows),
          'source': f"export/export.json: the checkpoint of epoch {source.get('epoch')} "
                    f"(--checkpoint={source.get('checkpoint')}, {source.get('weights')} "
                    'weights)',
          'temperature': export.get('temperature'), 'quantize': export.get('quantize')}


def write(workdir) -> Path:
  """Writes WORKDIR/report.html; returns its path."""
  return html.write_page(Path(workdir) / PAGE, 'run.html.j2', **collect(workdir))
