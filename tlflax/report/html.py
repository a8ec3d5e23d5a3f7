"""Rendering the report templates: a Jinja2 environment that escapes every value, its number
formats, and pages written atomically."""
import dataclasses
import functools
import math
import urllib.parse
from pathlib import Path
from typing import Any, Optional

import jinja2

from tlflax.reports import write_atomically


def number(value, digits: int = 4) -> str:
  """A float with `digits` decimals, or where that would hide it (below 10^-(digits-1): a
  learning rate, a difference) with `digits` significant ones; an int as it is; None and
  non-numbers as given."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return '' if value is None else str(value)
  if isinstance(value, int) or not math.isfinite(value):
    return str(value)
  if value and abs(value) < 10 ** (1 - digits):
    return f'{value:.{digits}g}'
  return f'{value:.{digits}f}'


def sort_key(value) -> str:
  """A table cell's `data-value`: what the page's sorting compares (numbers as numbers; a
  non-finite one as JavaScript reads it)."""
  if isinstance(value, bool) or value is None:
    return '' if value is None else str(value)
  if isinstance(value, float) and not math.isfinite(value):
    return 'NaN' if math.isnan(value) else ('Infinity' if value > 0 else '-Infinity')
  return repr(value) if isinstance(value, (int, float)) else str(value)


def url(path: str) -> str:
  """A relative file path as a URL: '#', '?', '%', spaces and other characters a path may not
  hold in a URL quoted, and ':' (it would read as a scheme); RFC 3986's sub-delimiters, e.g.
  '=' and ',', stay."""
  return urllib.parse.quote(str(path), safe="/!$&'()*+,;=@~")


@functools.cache
def environment() -> jinja2.Environment:
  loader = jinja2.FileSystemLoader(Path(__file__).with_name('templates'))
  env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                           trim_blocks=True, lstrip_blocks=True)
  env.filters.update(number=number, sort_key=sort_key, url=url)
  return env


def render(template: str, **context) -> str:
  """The page `template` makes of `context`."""
  return environment().get_template(template).render(**context)


def write_page(path: Path, template: str, **context) -> Path:
  """Renders `template` with `context` to `path` (atomically); returns the path."""
  write_atomically(Path(path), render(template, **context).encode('utf-8'))
  return Path(path)


@dataclasses.dataclass(frozen=True)
class Cell:
  """A table cell: its text, the value it sorts by, a link, and whether it is a number."""
  text: str
  value: Any
  href: Optional[str] = None
  numeric: bool = False


def cell(value, href: Optional[str] = None, text: Optional[str] = None) -> Cell:
  """The `Cell` of `value`: its text `number(value)` unless given."""
  numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
  return Cell(number(value) if text is None else text, value, href, numeric)


def table(columns, rows: list[dict], classes: Optional[dict] = None) -> dict:
  """What the `table` macro takes: `columns` ((key, label), ...) and `rows` ({key: a value or a
  `Cell`}; a missing key is an empty cell), `classes` {row index: CSS class}."""
  return {'columns': [{'key': k, 'label': label} for k, label in columns],
          'rows': [{'cells': {k: v if isinstance(v, Cell) else cell(v)
                              for k, v in ((k, row.get(k)) for k, _ in columns)},
                    'class': (classes or {}).get(i, '')} for i, row in enumerate(rows)]}


def link_if_exists(folder: Path, target: str) -> Optional[str]:
  """`target` (relative to `folder`) if that file exists, else None."""
  return target if (folder / target).is_file() else None
