"""A sweep's results: one table of its finished trials, aggregated over seeds, and two figures.

`trial_row` takes a finished trial's numbers from its `history.json`; `write` makes `results.csv`
(full precision), `results.md`,
`results.png` (the test accuracy of each setting, mean and standard deviation over its seeds),
`curves.png` (every trial's validation accuracy per epoch, phase boundaries marked) and
`report.html` (the tables, sortable, the figures, and links to each trial's own report).
"""
import csv
import statistics
from pathlib import Path

from tlflax import plots
from tlflax.report import html, trials_page

# (column, what it is), for each trial
METRICS = (('test_accuracy', 'test accuracy'), ('test_loss', 'test loss'),
           ('val_accuracy', 'validation accuracy after the last epoch'),
           ('ema_val_accuracy', "the same of the weights' average (train.ema_decay), if kept"),
           ('best_val_accuracy', 'best validation accuracy'),
           ('best_val_loss', 'best validation loss'),
           ('seconds', 'wall time of its phases (s), a shared first phase included'),
           ('train_images_per_second', "training images/s, median over the last phase's epochs"))


def trial_row(index: int, name: str, overrides: dict, history: dict) -> dict:
  """A finished trial's numbers from its `history.json`."""
  epochs = history['epochs']
  last_phase = epochs[-1]['phase'] if epochs else None
  rates = [e['images_per_second'] for e in epochs
           if e['phase'] == last_phase and e['images_per_second'] is not None]
  return {
      'trial': index, 'name': name, 'setting': setting(overrides),
      'seed': overrides.get('seed', ''),
      'test_accuracy': history['test']['accuracy'], 'test_loss': history['test']['loss'],
      'val_accuracy': epochs[-1]['val_accuracy'] if epochs else None,
      'ema_val_accuracy': epochs[-1].get('ema_val_accuracy') if epochs else None,
      'best_val_accuracy': max(e['val_accuracy'] for e in epochs) if epochs else None,
      'best_val_loss': min(e['val_loss'] for e in epochs) if epochs else None,
      'seconds': sum(p['seconds'] for p in history['phases'].values()),
      'train_images_per_second': statistics.median(rates) if rates else None,
      'history': history,
  }


def setting(overrides: dict) -> str:
  """The trial's overrides other than its seed: what its seeds are aggregated over."""
  return ', '.join(f'{k}={v!r}' for k, v in sorted(overrides.items()) if k != 'seed') or 'base'


def aggregate(rows: list[dict]) -> list[dict]:
  """Per setting, in order of first appearance: the number of trials, and each metric's mean and
  standard deviation over them (sample deviation; None for one trial)."""
  groups = {}
  for row in rows:
    groups.setdefault(row['setting'], []).append(row)
  aggregated = []
  for name, members in groups.items():
    entry = {'setting': name, 'trials': len(members)}
    for metric, _ in METRICS:
      values = [m[metric] for m in members if m[metric] is not None]
      entry[metric] = statistics.mean(values) if values else None
      entry[f'{metric}_std'] = statistics.stdev(values) if len(values) > 1 else None
    aggregated.append(entry)
  return aggregated


def _cell(value) -> str:
  """A markdown table cell: 4 significant digits, no '|'."""
  text = '' if value is None else f'{value:.4g}' if isinstance(value, float) else str(value)
  return text.replace('|', '\\|')


def write(workdir: Path, rows: list[dict], total: int, sweep_seconds=None):
  """results.csv / .md / .png, curves.png and report.html in `workdir` for the finished trials'
  `rows` (of `total` trials)."""
  groups = aggregate(rows)
  metrics = [metric for metric, _ in METRICS]
  columns = ['kind', 'trial', 'name', 'setting', 'seed', 'trials',
             *(c for m in metrics for c in (m, f'{m}_std'))]
  with open(workdir / 'results.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, columns, extrasaction='ignore')
    writer.writeheader()
    writer.writerows({'kind': 'trial', **row} for row in rows)
    writer.writerows({'kind': 'mean_std', **group} for group in groups)
  lines = [f'# Sweep results: {len(rows)} of {total} trials finished', '']
  if sweep_seconds is not None:
    lines += [f'Wall time of this sweep command: {sweep_seconds:.0f} s.', '']
  lines += ['| trial | name | ' + ' | '.join(metrics) + ' |',
            '| --- | --- | ' + ' | '.join('---' for _ in metrics) + ' |']
  lines += [f"| {row['trial']} | {_cell(row['name'])} | "
            + ' | '.join(_cell(row[m]) for m in metrics) + ' |' for row in rows]
  lines += ['', 'Mean ± standard deviation over seeds:', '',
            '| setting | trials | ' + ' | '.join(metrics) + ' |',
            '| --- | --- | ' + ' | '.join('---' for _ in metrics) + ' |']
  lines += [f"| {_cell(group['setting'])} | {group['trials']} | " + ' | '.join(
      f"{_cell(group[m])} ± {_cell(group[f'{m}_std'])}" if group[f'{m}_std'] is not None
      else _cell(group[m]) for m in metrics) + ' |' for group in groups]
  lines += ['', *(f'- `{metric}`: {what}' for metric, what in METRICS)]
  (workdir / 'results.md').write_text('\n'.join(lines) + '\n')
  if rows:
    plots.sweep_results(groups, 'test_accuracy', workdir / 'results.png')
    plots.sweep_curves({row['name']: row['history'] for row in rows}, workdir / 'curves.png')
  notes = [f'{len(rows)} of {total} trials finished.'] + (
      [f'Wall time of this sweep command: {sweep_seconds:.0f} s.'] if sweep_seconds is not None
      else [])
  html.write_page(workdir / trials_page.PAGE, 'trials.html.j2',
                  **page(workdir, rows, groups, notes))


def page(workdir: Path, rows: list[dict], groups: list[dict], notes: list[str]) -> dict:
  """What the sweep's report.html shows (`trials_page.context`): the tables and figures."""
  metrics = [(key, key.replace('_', ' ')) for key, _ in METRICS  # short headers; none empty
             if any(row[key] is not None for row in rows)]
  trials = html.table(
      (('trial', 'trial'), ('name', 'name'), ('setting', 'setting'), ('seed', 'seed'),
       *metrics),
      [{**row, 'name': html.cell(row['name'], trials_page.trial_link(workdir, row['name']),
                                 row['name'])} for row in rows])
  means = html.table((('setting', 'setting'), ('trials', 'trials'),
                      *((key, f'{label} (mean ± std)') for key, label in metrics)),
                     [{**group, **{key: _mean_cell(group, key) for key, _ in metrics}}
                      for group in groups])
  return trials_page.context(
      workdir, f'Sweep: {workdir.resolve().name}',
      [*notes, *(['Columns: ' + '; '.join(f'{label}: {dict(METRICS)[key]}'
                                            for key, label in metrics) + '.'] if rows else [])],
      [('Trials', trials), ('Mean and standard deviation over seeds', means)],
      [('results.png', 'test accuracy of each setting: mean and standard deviation over seeds'),
       ('curves.png', "every trial's validation accuracy per epoch")],
      [('results.csv', 'the tables at full precision'), ('results.md', 'the tables as Markdown')])


def _mean_cell(group: dict, key: str) -> dict:
  mean, std = group[key], group[f'{key}_std']
  text = html.number(mean) + (f' ± {html.number(std)}' if std is not None else '')
  return html.cell(mean, text=text)
