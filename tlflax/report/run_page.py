"""WORKDIR/report.html: a run on one page, from the files it left in its workdir.

The page shows the config and how it differs from its recipe (the config file and variant its
command named, kept in recipe.json when the run started, `tlflax.report.recipe`; else
`config.defaults()`, the tutorial), the environment of each start
(environment.json), the learning curves and every epoch's numbers so far (history.json, written
after each epoch), per split
(evaluation/<split>.json) the numbers, per-class precision, recall and F1, the confusion matrix
(as a table up to `CONFUSION_TABLE_CLASSES` classes, else its most frequent confusions), the
calibration and the most confident mistakes with their Grad-CAM overlays, the test predictions
grid, and the exported files with their checks (export/export.json). Each section names the
file its numbers come from, and the split, checkpoint and epoch they were computed on. Files
that are missing are listed at the top (a workdir with no finished phase gets a page that says
so); a file that cannot be read, or whose layout is not the expected one, is named and its
section left out.
"""
import datetime
import json
import shlex
from pathlib import Path
from typing import Callable, Optional

from absl import logging

from tlflax import config as config_lib
from tlflax import workdir as workdir_lib
from tlflax.objectives import TOP_K
from tlflax.report import html, recipe

PAGE = 'report.html'
SPLITS = ('test', 'validation', 'train')  # shown in this order, where evaluated
CONFUSION_TABLE_CLASSES = 30  # above: the most frequent confusions instead of the whole matrix
CONFUSIONS_LISTED = 20
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
  """The workdir's files, read once. A JSON file that cannot be read, or a section that finds
  its file laid out otherwise (an older tlflax's, an edited one), becomes a problem line."""

  def __init__(self, workdir: Path):
    self.workdir, self.problems = workdir, []

  def json(self, name: str, kind: type = dict):
    path = self.workdir / name
    if not path.is_file():
      return None
    try:
      value = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
      self.problems.append(f'{name} could not be read ({e}): its section is left out')
      return None
    if not isinstance(value, kind):
      self.problems.append(f'{name} holds a {type(value).__name__}, not a {kind.__name__}: '
                           'its section is left out')
      return None
    return value

  def image(self, name: str) -> Optional[str]:
    return html.link_if_exists(self.workdir, name)

  def section(self, name: str, build: Callable, *args):
    """`build(*args)`, or None with a problem line where the file `name` lacks what it needs."""
    try:
      return build(*args)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
      self.problems.append(f'{name} is not laid out as this tlflax writes it '
                           f'({type(e).__name__}: {e}): its section is left out')
      return None


def collect(workdir) -> dict:
  """What the run page shows, from the files of `workdir`."""
  workdir = Path(workdir)
  files = _Files(workdir)
  config = files.json('config.json')
  history = files.json('history.json')
  starts = files.json('environment.json', list) or []
  evaluations = {split: report for split in SPLITS
                 if (report := files.json(f'evaluation/{split}.json')) is not None}
  export = files.json('export/export.json')
  splits = [files.section(f'evaluation/{split}.json', split_section, split, report, files)
            for split, report in evaluations.items()]
  return {
      'title': f'tlflax run: {workdir.resolve().name}',
      'workdir': str(workdir.resolve()),
      'written': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'missing': missing(workdir, history, evaluations),
      'config': config and files.section('config.json', config_section, config, files),
      'environment': starts and files.section('environment.json', environment_section, starts),
      'training': history and files.section('history.json', training_section, history, files),
      'splits': [section for section in splits if section],
      'predictions': files.image('predictions.png'),
      'export': export and files.section('export/export.json', export_section, export),
      'problems': files.problems,  # last: the sections add theirs
  }


def missing(workdir: Path, history, evaluations) -> list[str]:
  """What a finished run would have that this workdir lacks, and what that means (a file that
  is there but cannot be read is a problem line instead)."""
  lines = []
  if not (workdir / 'config.json').is_file():
    lines.append('config.json is missing: this folder holds no run that started (or is not a '
                 'tlflax workdir).')
  if not (workdir / 'history.json').is_file() or (history is not None and 'test' not in history):
    saved = workdir_lib.saved_epochs(workdir)
    lines.append(
        'The run has not finished: its final evaluation on the test split is missing. '
        + (f"Saved epochs: {', '.join(map(str, saved))}; the training command resumes after "
           f'epoch {saved[-1]}.' if saved else 'No epoch was saved yet.'))
  for split in ('test', 'validation'):  # what training evaluates at its end
    if split not in evaluations and not (workdir / 'evaluation' / f'{split}.json').is_file():
      lines.append(f'evaluation/{split}.json is missing: no per-class report of the {split} '
                   'split.')
  return lines


def reference(files: _Files) -> tuple[str, dict]:
  """(what it is, the config as JSON) that a run's config is compared with: its recipe
  (`recipe.json`, `tlflax.report.recipe`), else tlflax's defaults (the tutorial's recipe),
  resolved as config.json is."""
  from tlflax import resume
  kept = files.json(recipe.FILE)
  if kept is not None and isinstance(kept.get('config'), dict):
    return (f"the recipe {kept.get('file')} (the run's --config, as it was when the run "
            'started; --config.* flags and the settings of a sweep\'s or a study\'s trial show '
            'as differences)', kept['config'])
  return ('tlflax\'s defaults (the tutorial\'s recipe, tlflax.config.defaults(); the run '
          'recorded no recipe file)', resume.config_as_json(config_lib.defaults()))


def config_section(config: dict, files: _Files) -> dict:
  what, recipe_config = reference(files)
  changed = config_lib.differences(recipe_config, config_lib.upgrade_stored(config))
  return {'reference': what,
          'differences': html.table(
              (('key', 'key'), ('default', 'recipe'), ('run', 'this run')),
              [{'key': key, 'default': _shown(default), 'run': _shown(value)}
               for key, (default, value) in changed.items()]),
          'json': json.dumps(config, indent=2, sort_keys=True)}


def _shown(value) -> str:
  return '—' if value is None else json.dumps(value) if not isinstance(value, str) else value


def environment_section(starts: list) -> dict:
  last = starts[-1]
  code = last.get('code') or {}
  command = last.get('command') or []
  facts = [('started', last.get('time')),
           ('command', shlex.join(map(str, command)) if isinstance(command, list) else command),
           ('folder', last.get('cwd')), ('python', last.get('python')),
           ('code', (code.get('commit', '?') + (' with uncommitted changes' if code.get('dirty')
                                                else '')) if code else 'not a git checkout'),
           ('devices', f"{last.get('device_count')} x {last.get('device_kind')} "
                       f"({last.get('platform')}), {last.get('process_count')} process(es)"),
           ('host', last.get('host'))]
  return {'facts': [(label, value) for label, value in facts if value is not None],
          'starts': [start.get('time') for start in starts],
          'packages': sorted((last.get('packages') or {}).items())}


def training_section(history: dict, files: _Files) -> dict:
  epochs = history.get('epochs') or []
  shown = [(k, label) for k, label in EPOCH_COLUMNS if any(k in e for e in epochs)]
  phases = [{'name': name, **values} for name, values in (history.get('phases') or {}).items()]
  initial = history.get('initial') or {}
  return {'epochs': html.table(shown, epochs),
          'initial': [(label, html.cell(initial[key])) for key, label in
                      (('val_loss', 'val loss'), ('val_accuracy', 'val accuracy'))
                      if key in initial],
          'phases': html.table((('name', 'phase'), ('seconds', 'seconds'),
                                ('cached_from_layer', 'cached from layer')), phases),
          'curves': files.image('learning_curves.png')}


def split_section(split: str, report: dict, files: _Files) -> dict:
  names = list(report.get('class_names') or report.get('per_class') or [])
  per_class = [{'class': name, **values} for name, values in
               (report.get('per_class') or {}).items()]
  averages = [{'class': f'{average} average', **report[f'{average}_average'],
               'support': report.get('count')}
              for average in ('macro', 'weighted') if f'{average}_average' in report]
  numbers = [(label, report[key]) for key, label in SPLIT_NUMBERS if key in report]
  if 'tta' in report:
    numbers += [(f"test-time augmentation ({report['tta']['views']}): {what}",
                 report['tta'][key]) for key, what in (('loss', 'loss'),
                                                       ('accuracy', 'accuracy'))]
  mistakes = [{'true': m.get('true'), 'predicted': m.get('predicted'),
               'probability': m.get('probability'), 'example': m.get('example'),
               'gradcam': files.image(f"evaluation/{m['gradcam']}") if m.get('gradcam')
               else None} for m in report.get('most_confident_mistakes') or []]
  epoch = report.get('checkpoint_epoch')
  return {
      'split': split,
      'source': f'evaluation/{split}.json: the {split} split, '
                + (f"the checkpoint of epoch {epoch} ({report.get('weights', 'trained')} "
                   'weights)' if epoch is not None else 'the weights before training')
                + f", {report.get('count')} examples",
      'numbers': [(label, html.cell(value)) for label, value in numbers],
      'per_class': html.table((('class', 'class'), ('precision', 'precision'),
                               ('recall', 'recall'), ('f1', 'F1'), ('support', 'support')),
                              per_class + averages,
                              {len(per_class) + i: 'average' for i in range(len(averages))}),
      'confusion': confusion(names, report.get('confusion_matrix') or []),
      'confusion_image': files.image(f'evaluation/{split}_confusion.png'),
      'calibration': [(label, html.cell(report['calibration'][key]))
                      for key, label in CALIBRATION_NUMBERS] if 'calibration' in report else None,
      'reliability_image': files.image(f'evaluation/{split}_reliability.png'),
      'mistakes': mistakes,
      'mistakes_image': files.image(f'evaluation/{split}_mistakes.png'),
  }


def confusion(names: list, matrix: list) -> dict:
  """The confusion matrix as a table (rows: true class), or above `CONFUSION_TABLE_CLASSES`
  classes its `CONFUSIONS_LISTED` most frequent confusions (true, predicted, count)."""
  if len(names) <= CONFUSION_TABLE_CLASSES:
    return {'matrix': html.table(
        (('true', 'true \\ predicted'), *((f'p{i}', name) for i, name in enumerate(names))),
        [{'true': name, **{f'p{j}': count for j, count in enumerate(row)}}
         for name, row in zip(names, matrix)])}
  pairs = sorted(((count, i, j) for i, row in enumerate(matrix) for j, count in enumerate(row)
                  if i != j and count), key=lambda pair: (-pair[0], pair[1], pair[2]))
  return {'matrix': None, 'pairs': html.table(
      (('true', 'true class'), ('predicted', 'predicted class'), ('count', 'examples')),
      [{'true': names[i], 'predicted': names[j], 'count': count}
       for count, i, j in pairs[:CONFUSIONS_LISTED]]), 'classes': len(names)}


def export_section(export: dict) -> dict:
  checks = export.get('checks') or {}
  rows = [{'kind': kind, 'file': html.cell(name, f'export/{name}'),
           **{key: (checks.get(kind) or {}).get(key)
              for key in ('max_abs_difference', 'top1_agreement', 'images')}}
          for kind, name in (export.get('files') or {}).items()]
  source = export.get('source') or {}
  return {'files': html.table((('kind', 'format'), ('file', 'file'),
                               ('max_abs_difference', 'max |p - tlflax|'),
                               ('top1_agreement', 'top-1 agreement'),
                               ('images', 'check images')), rows),
          'source': f"export/export.json: the checkpoint of epoch {source.get('epoch')} "
                    f"(--checkpoint={source.get('checkpoint')}, {source.get('weights')} "
                    'weights)',
          'temperature': export.get('temperature'), 'quantize': export.get('quantize')}


def write(workdir) -> Path:
  """Writes WORKDIR/report.html, then removes the mistakes' overlays that neither it nor the
  evaluation JSON files name (an earlier evaluation's); returns its path."""
  page = html.write_page(Path(workdir) / PAGE, 'run.html.j2', **collect(workdir))
  remove_stale_overlays(Path(workdir) / 'evaluation')
  return page


def remove_stale_overlays(folder: Path):
  """In each `<split>_gradcam/` of `folder`, the files its readable `<split>.json` does not name
  (where it cannot be read, nothing is removed)."""
  for overlays in folder.glob('*_gradcam'):
    try:
      report = json.loads((folder / f"{overlays.name[:-len('_gradcam')]}.json").read_text())
      named = {Path(m['gradcam']).name for m in report['most_confident_mistakes']
               if m.get('gradcam')}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
      continue
    for path in overlays.iterdir():
      if path.name not in named:
        path.unlink()


def write_after(workdir, what: str):
  """`write`, at the end of `what` (training, an evaluation, an export): a failure is a warning,
  since the work it reports on is done and saved."""
  try:
    write(workdir)
  except Exception as e:  # the page is a view of saved files: it must not fail the work
    logging.warning('%s is done, but %s was not written: %s: %s (python -m tlflax.report %s '
                    'tries again)', what, Path(workdir) / PAGE, type(e).__name__, e, workdir)
