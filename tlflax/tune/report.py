"""A study's results in its workdir: `results.csv` / `results.md` (a row per trial: state,
objective, sampled values, the sweep report's numbers for finished runs, the error of a failed
one), `curves.png` (every trial's validation accuracy per epoch, pruned ones included),
`importances.png` and `history.png` (Optuna's parameter importances and optimization history),
`report.html` (all of it on one page, the table sortable, each trial linked to its own report),
and `best_config.py`, a config file that trains the best trial again
(`main.py --config=DIR/best_config.py`).
"""
import csv
import dataclasses
import json
import os
import tempfile
import warnings
from pathlib import Path

from tlflax import plots
from tlflax.report import html, trials_page
from tlflax.sweep import report as sweep_report

STATE_NAMES = {'COMPLETE': 'complete', 'PRUNED': 'pruned', 'FAIL': 'failed',
               'RUNNING': 'running', 'WAITING': 'queued'}


@dataclasses.dataclass(frozen=True)
class ConfigSource:
  """The base config as the command gave it: its file, variant and `--config.*` overrides."""
  file: str
  variant: str
  overrides: dict


def _replace(path: Path, write):
  """Writes `path` through a temporary file in its folder, so that a reader (or a second worker
  writing the same report) never sees half a file."""
  handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                                       suffix=path.suffix)
  os.close(handle)
  try:
    write(Path(temporary))
    os.chmod(temporary, 0o666 & ~_umask())  # as open() would make it, not mkstemp's 0600
    os.replace(temporary, path)
  except BaseException:
    Path(temporary).unlink(missing_ok=True)
    raise


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def rows(study, workdir: Path) -> list[dict]:
  """A row per counted trial, in number order."""
  from tlflax.tune import study as study_lib
  result = []
  for trial in study_lib.counted(study.get_trials(deepcopy=False)):
    folder = trial.user_attrs.get('folder', '')
    history_path = workdir / folder / 'history.json' if folder else None
    history = (json.loads(history_path.read_text())
               if history_path and history_path.is_file() else None)
    reported = trial.intermediate_values
    row = {'trial': trial.number, 'folder': folder, 'state': STATE_NAMES[trial.state.name],
           'last_reported': reported[max(reported)] if reported else None,
           'seconds': (sum(p['seconds'] for p in history['phases'].values())
                       if history else None),
           # Optuna gives a pruned trial its last reported value: only a complete one has a score
           'value': trial.value if trial.state.name == 'COMPLETE' else None,
           'params': dict(trial.params),
           'epochs': len(history['epochs']) if history else 0,
           # a retry inherits its failed trial's attributes: only a failure has an error
           'error': trial.user_attrs.get('error', '') if trial.state.name == 'FAIL' else '',
           'history': history}
    if history and 'test' in history:
      row.update({k: v for k, v in sweep_report.trial_row(
          trial.number, folder, trial.params, history).items()
          if k in dict(sweep_report.METRICS)})
    result.append(row)
  return result


def write(study, workdir: Path, space, source: ConfigSource) -> dict:
  """Every results file of the study in `workdir`; the best trial's row (None before one
  completes)."""
  objective = space.objective
  table = rows(study, workdir)
  complete = [row for row in table if row['state'] == 'complete']
  best = (max if objective.direction == 'maximize' else min)(
      complete, key=lambda row: row['value']) if complete else None
  keys = list(space.distributions)
  metrics = [metric for metric, _ in sweep_report.METRICS]
  columns = ['trial', 'folder', 'state', 'value', 'last_reported', 'epochs', *keys, *metrics,
             'error']

  def write_csv(path):
    with open(path, 'w', newline='') as f:
      writer = csv.DictWriter(f, columns, extrasaction='ignore')
      writer.writeheader()
      writer.writerows({**row, **row['params']} for row in table)

  _replace(workdir / 'results.csv', write_csv)
  _replace(workdir / 'results.md',
           lambda path: path.write_text(markdown(study.study_name, table, keys, objective, best)))
  histories = {f"{row['trial']} ({row['state']})": row['history'] for row in table
               if row['history'] and row['history']['epochs']}
  if histories:
    _replace(workdir / 'curves.png', lambda path: plots.sweep_curves(histories, path))
  if len(complete) >= 2:
    _optuna_figures(study, workdir)
  if best is not None:
    _replace(workdir / 'best_config.py', lambda path: path.write_text(
        best_config(source, best, study.study_name, objective)))
  context = page(study.study_name, workdir, table, keys, objective, best)
  _replace(workdir / trials_page.PAGE, lambda path: path.write_text(
      html.render('trials.html.j2', **context), encoding='utf-8'))
  return best


def page(name: str, workdir: Path, table: list[dict], keys: list, objective, best) -> dict:
  """What the study's report.html shows (`trials_page.context`)."""
  metrics = [(m, m.replace('_', ' ')) for m, _ in sweep_report.METRICS
             if m in ('test_accuracy', 'test_loss', 'seconds')]
  columns = (('trial', 'trial'), ('folder', 'folder'), ('state', 'state'),
             ('value', 'objective'), ('last_reported', 'last epoch'), ('epochs', 'epochs'),
             *((f'param:{k}', k) for k in keys), *metrics, ('error', 'error'))
  rows = [{**row, **{f'param:{k}': row['params'].get(k) for k in keys},
           'folder': html.cell(row['folder'], trials_page.trial_link(workdir, row['folder']),
                               row['folder'])} for row in table]
  counts = {state: sum(row['state'] == state for row in table) for state in STATE_NAMES.values()}
  notes = [f'Objective: {objective.describe()} ({objective.direction}d). '
           + (', '.join(f'{n} {state}' for state, n in counts.items() if n) or 'No trial yet')
           + '.',
           'objective: the trial\'s score (pruned trials have none); last epoch: the validation '
           f'{objective.metric} its last epoch reported to the pruner.']
  if best is not None:
    notes.append(f"Best: trial {best['trial']} ({best['folder']}), {html.number(best['value'])}, "
                 'with ' + ', '.join(f"{k}={best['params'][k]!r}" for k in keys)
                 + '; best_config.py trains it again.')
  best_row = {i: 'best' for i, row in enumerate(table) if best is not None and row is best}
  return trials_page.context(
      workdir, f'Study: {name}', notes, [('Trials', html.table(columns, rows, best_row))],
      [('curves.png', "every trial's validation accuracy per epoch"),
       ('importances.png', "Optuna's parameter importances"),
       ('history.png', "Optuna's optimization history")],
      [('best_config.py', 'a config that trains the best trial again'),
       ('results.csv', 'the table at full precision'), ('results.md', 'the table as Markdown')])


def markdown(name: str, table: list[dict], keys: list, objective, best) -> str:
  cell = sweep_report._cell  # 4 significant digits, no '|'
  metrics = ['test_accuracy', 'test_loss', 'seconds']
  counts = {state: sum(row['state'] == state for row in table) for state in STATE_NAMES.values()}
  states = ', '.join(f'{n} {state}' for state, n in counts.items() if n) or 'no trial yet'
  lines = [f'# Study {name}: {len(table)} trials', '',
           f'Objective: {objective.describe()} ({objective.direction}d). {states}.', '']
  if best is not None:
    lines += [f"Best: trial {best['trial']} ({best['folder']}), {cell(best['value'])}, with "
              + ', '.join(f'`{k}={best["params"][k]!r}`' for k in keys)
              + '; `best_config.py` trains it again.', '']
  lines += ['| trial | state | objective | last epoch | epochs | '
            + ' | '.join(f'`{k}`' for k in keys) + ' | ' + ' | '.join(metrics) + ' | error |',
            '| ' + ' | '.join('---' for _ in range(6 + len(keys) + len(metrics))) + ' |']
  for row in table:
    lines.append(f"| {row['trial']} | {row['state']} | {cell(row['value'])} | "
                 f"{cell(row['last_reported'])} | {row['epochs']} | "
                 + ' | '.join(cell(row['params'].get(k)) for k in keys) + ' | '
                 + ' | '.join(cell(row.get(m)) for m in metrics) + ' | '
                 + cell(row['error'].replace('\n', ' ')) + ' |')
  lines += ['', "- objective: the trial's score (pruned trials have none); last epoch: the "
            f'validation {objective.metric} its last epoch reported to the pruner; epochs: '
            'those in its history (a shared first phase included)',
            *(f'- `{metric}`: {what}' for metric, what in sweep_report.METRICS
              if metric in metrics)]
  return '\n'.join(lines) + '\n'


def _optuna_figures(study, workdir: Path):
  """importances.png and history.png with Optuna's matplotlib plots."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from optuna.visualization import matplotlib as optuna_plots
  with warnings.catch_warnings():  # "experimental" plots; PED-ANOVA's note on few trials
    warnings.simplefilter('ignore')
    for name, plot in (('importances', optuna_plots.plot_param_importances),
                       ('history', optuna_plots.plot_optimization_history)):
      axes = plot(study)
      figure = axes.figure
      figure.set_size_inches(8, 4.5)
      figure.tight_layout()
      _replace(workdir / f'{name}.png', lambda path: figure.savefig(path, dpi=100))
      plt.close(figure)


def _portable(file: str) -> str:
  """The config file's path relative to the current folder where it lies under it (the
  project root, from where the configs' relative paths work), else absolute."""
  path = Path(file).resolve()
  return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _literal(values: dict) -> str:
  """A dict as Python source, a key per line."""
  return '{' + ''.join(f'\n    {key!r}: {value!r},' for key, value in values.items()) + (
      '\n}' if values else '}')


def best_config(source: ConfigSource, best: dict, study_name: str, objective) -> str:
  """A config file: the base config file (with its variant and overrides) and the best trial's
  values."""
  return f'''"""The best trial of the study {study_name!r}: trial {best['trial']}, \
{objective.describe()} {best['value']:.6g}.

    python main.py --config={{this file}} --workdir=DIR

trains it again, run from the folder the tuner ran in (BASE_FILE is relative to it; it is read
when this file runs, so an edit of it changes what this trains); written by
`python -m tlflax.tune`.
"""
import importlib.util

BASE_FILE = {_portable(source.file)!r}
VARIANT = {source.variant!r}
# the tuner's --config.* flags
OVERRIDES = {_literal(source.overrides)}
# trial {best['trial']}'s samples
VALUES = {_literal(best['params'])}


def get_config():
  spec = importlib.util.spec_from_file_location('tlflax_tuned_base', BASE_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(VARIANT) if VARIANT else module.get_config()
  for key, value in {{**OVERRIDES, **VALUES}}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config
'''
