"""Writes the run page of a workdir, finished or not:

    python -m tlflax.report WORKDIR       # WORKDIR/report.html

Training writes it at its end, `--mode=evaluate` and `--mode=export` refresh it; this command
writes it for any workdir (one whose run stopped before it finished says what is missing). The
page of a sweep or a study comes with their `--report`.
"""
from pathlib import Path

from absl import app

from tlflax import cli, errors


def main(argv):
  if len(argv) != 2 or not argv[1].strip():
    raise app.UsageError('name one workdir: python -m tlflax.report WORKDIR')
  workdir = Path(argv[1])
  with cli.run_errors_as_one_line('no page was written'):
    if not workdir.is_dir():
      raise errors.DataError(f'{workdir} ' + ('is not a folder' if workdir.exists()
                                              else 'does not exist'))
    if (workdir / 'results.csv').is_file() and not (workdir / 'config.json').is_file():
      raise errors.DataError(f'{workdir} holds a sweep or a study: its page comes with '
                             'python -m tlflax.sweep --report or python -m tlflax.tune --report')
    if not any((workdir / name).exists() for name in ('config.json', 'history.json',
                                                      'checkpoints')):
      raise errors.DataError(f'{workdir} holds no tlflax run (no config.json, history.json or '
                             'checkpoints/)')
    from tlflax import workdir as workdir_lib
    from tlflax.report import run_page
    workdir_lib.writable(workdir)
    print(f'wrote {run_page.write(workdir)}')


if __name__ == '__main__':
  cli.run(main)
