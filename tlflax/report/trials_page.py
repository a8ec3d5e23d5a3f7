"""DIR/report.html of a sweep or a study: its notes, its tables (sortable by a click on a
header; each trial's name links to the trial's own report.html where it has one) and its
figures. `tlflax.sweep.report` and `tlflax.tune.report` say what goes in."""
from pathlib import Path
from typing import Optional

from tlflax.report import html
from tlflax.report.run_page import PAGE


def trial_link(folder: Path, trial_folder: str) -> Optional[str]:
  """The trial's report.html, else its folder, relative to the page in `folder` (None for no
  folder)."""
  if not trial_folder:
    return None
  return html.link_if_exists(folder, f'{trial_folder}/{PAGE}') or f'{trial_folder}/'


def context(folder: Path, title: str, notes: list[str], tables: list[tuple[str, dict]],
            figures: list[tuple[str, str]], files: list[tuple[str, str]] = ()) -> dict:
  """What 'trials.html.j2' takes: `notes` (lines), `tables` [(heading, `html.table(...)`)],
  `figures` [(file, caption)] and `files` [(file, what it is)], those missing from `folder`
  left out."""
  return {'title': title, 'notes': notes, 'tables': tables,
          'figures': [(f, c) for f, c in figures if (folder / f).is_file()],
          'files': [(f, what) for f, what in files if (folder / f).is_file()]}
